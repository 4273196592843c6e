"""One split of a source as a Ray Dataset, decoded in Ray tasks: what training and evaluation read at scale.

The driver builds only the *index* (:class:`SourceSplit`: file paths or item numbers,
labels, classes), never the pixels; :meth:`SourceSplit.dataset` turns it into a Ray
Dataset of rows ``image`` (uint8 C x H x W), ``label`` and ``item`` (the position in
the split), decoded where Ray Data runs its tasks:

* file sources (``imagefolder``, ``lfw``, ``celeba``): rows of paths, decoded, cropped
  and resized by ``map_batches`` tasks on CPU workers, streaming, so a data set far
  larger than memory trains;
* ``synthetic``: item numbers, rendered in tasks;
* array sources (``idx``, ``npz``, ``bin``): the arrays the index already holds travel
  once through the object store, cut into blocks by tasks.

Sources that fit in memory (synthetic and array sources) are materialized once, so
later epochs reread blocks from the object store instead of rendering again; file
sources stream every epoch. :meth:`SourceSplit.fingerprint` identifies the data for a
checkpoint's job hash without decoding it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.identity import content_digests, write_manifest
from maskcrypt.data.images import decode_many
from maskcrypt.data.spec import DataSpec, parse_spec
from maskcrypt.data.synthetic import render_dataset
from maskcrypt.runtime.cluster import wait_for_free_cpu

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True)
class ImageBlocks:
    """Test images held in Ray's object store as blocks, selected lazily: the driver never holds the pixels.

    ``refs`` are object references to uint8 ``n_i x C x H x W`` blocks (decoded by Ray
    Data tasks); the images are their concatenation, taken at ``take``. Indexing returns
    another :class:`ImageBlocks`; :meth:`fetch` (in an evaluation actor, or for the few
    images of a picture) gets the pixels.
    """

    refs: tuple[Any, ...]
    counts: tuple[int, ...]  # images per block
    chw: tuple[int, int, int]
    take: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.take.size), *self.chw)

    def __len__(self) -> int:
        return int(self.take.size)

    def __getitem__(self, rows: Any) -> ImageBlocks:
        return ImageBlocks(self.refs, self.counts, self.chw, np.atleast_1d(self.take[rows]))

    def fetch(self) -> np.ndarray:
        """The selected images, in order (only the blocks that hold them are fetched)."""
        import ray

        starts = np.concatenate([[0], np.cumsum(self.counts)])
        block = np.searchsorted(starts, self.take, side="right") - 1
        needed = np.unique(block)
        got = dict(zip(needed.tolist(), ray.get([self.refs[b] for b in needed])))
        out = np.empty(self.shape, np.uint8)
        for b in needed:
            rows = np.flatnonzero(block == b)
            out[rows] = got[int(b)][self.take[rows] - starts[b]]
        return out


#: Rows per block of a split's dataset: small enough to balance workers, large enough for throughput.
ROWS_PER_BLOCK = 256


@dataclass
class SourceSplit:
    """One split of a source, as an index: what to decode, labels and classes; no pixel decoded."""

    spec: DataSpec
    split: str
    labels: np.ndarray  # per item of the split
    class_names: list[str]
    size: tuple[int, int]
    channels: int
    paths: list[str] | None = None  # file sources
    crop: str = ""
    arrays: np.ndarray | None = None  # array sources: the split's images (N x C x H x W), already in memory
    render: dict[str, int] = field(default_factory=dict)  # synthetic: identities, per_identity, seed, offset
    items: np.ndarray | None = None  # synthetic: the item numbers to render
    pairs: np.ndarray | None = None  # verification: rows (position a, position b, same, fold) into the split
    _fingerprint: str = field(default="", init=False, repr=False, compare=False)
    _manifest_written: bool = field(default=False, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> SourceSplit:
        """A split of images already in memory (uint8 N x C x H x W): tests and benchmarks."""
        images = np.ascontiguousarray(images)
        spec = parse_spec(f"npz:in-memory#size={images.shape[2]}x{images.shape[3]}")
        return cls(spec, "all", np.asarray(labels, dtype=np.int64), list(class_names),
                   (int(images.shape[2]), int(images.shape[3])), int(images.shape[1]), arrays=images)

    @property
    def in_memory(self) -> bool:
        """Small by nature (rendered or already-loaded arrays): materialized once, reread every epoch."""
        return self.paths is None

    def fingerprint(self, cache: Path | None = None) -> str:
        """sha256 of what defines the split's images: spec options, labels, and the files' *content*, items or pixels.

        A file source hashes every file's bytes (:mod:`maskcrypt.data.identity`): an image
        edited, replaced, added or removed changes the fingerprint, so nothing computed on
        the old images is reused. ``cache`` (``RUN/cache/files.parquet``) keeps the digests
        by path, size and mtime, so a relaunch reads only files that moved, and records the
        split's manifest beside it (``RUN/cache/splits/``) for naming a later difference.
        Computed once per object.
        """
        if self._fingerprint and (cache is None or self.paths is None or self._manifest_written):
            return self._fingerprint
        h = hashlib.sha256()
        # val_fraction moves images only between the train and val splits of an identity split: elsewhere it stays
        # out, so the fingerprints of runs made before it existed still match
        moves = self.spec.get("split_by") == "identity" and self.split != "test"
        unused = ("pairs", "pairs_per_fold") + (() if moves else ("val_fraction",))
        opts = {k: v for k, v in self.spec.options.items() if k not in unused}
        h.update(repr((self.spec.kind, self.spec.path, sorted(opts.items()), self.split, self.size,
                       self.channels, self.crop)).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        if self.paths is not None:

            digests, sizes, mtimes = content_digests(self.paths, cache)
            h.update("\n".join(self.paths).encode())
            h.update("\n".join(digests.astype(str)).encode())
        if self.items is not None:
            h.update(np.ascontiguousarray(self.items, dtype=np.int64).tobytes())
            h.update(repr(sorted(self.render.items())).encode())
        if self.arrays is not None:
            h.update(np.ascontiguousarray(self.arrays).tobytes())
        self._fingerprint = h.hexdigest()
        if self.paths is not None and cache is not None:
            write_manifest(cache.parent / "splits", self._fingerprint, self.paths, self.labels, digests, sizes, mtimes)
            self._manifest_written = True
        return self._fingerprint

    def item_digests(self, cache: Path | None = None) -> np.ndarray | None:
        """A content digest per item, to compare two sources image by image (the attackers' leak guard).

        Files: the sha256 of each file's bytes (``cache`` as :meth:`fingerprint`'s). Arrays:
        the sha256 of each image's pixels as loaded. Synthetic faces: the rendering's
        inputs (seed, identity, variant), which determine the pixels. Two items with the
        same digest are the same image; a re-encoded or resized copy of an image is not
        caught (a guard, not a proof).
        """
        if self.paths is not None:
            return np.asarray(content_digests(self.paths, cache)[0], dtype=object).astype(str)
        if self.arrays is not None:
            return np.asarray([hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in self.arrays])
        if self.items is not None:
            r = self.render
            per, off = int(r["per_identity"]), int(r.get("offset") or 0)
            return np.asarray([f"synthetic:{r['seed']}:{int(i) // per}:{off + int(i) % per}:{self.channels}:"
                               f"{self.size[0]}x{self.size[1]}" for i in self.items])
        return None

    def read(self, positions: np.ndarray) -> np.ndarray:
        """A handful of the split's images decoded here, in this process (pictures, a first look)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.paths is not None:

            images, _, bad = decode_many([self.paths[i] for i in positions], self.size, self.channels, self.crop)
            if bad:
                raise MaskcryptError(f"data spec {self.spec.text!r}: unreadable image {bad[0][1]}")
            return images
        if self.items is not None:

            r = self.render
            return render_dataset(r["identities"], r["per_identity"], self.size[0], self.size[1], seed=r["seed"],
                                  channels=self.channels, items=self.items[positions], offset=r["offset"])
        return np.ascontiguousarray(self.arrays[positions])

    def to_object_store(self, order: np.ndarray | None = None) -> tuple[ImageBlocks, np.ndarray]:
        """Decode the split (or the items ``order`` picks) in Ray tasks into blocks that stay in the object store.

        Returns the blocks and which items decoded, in the blocks' order. The driver
        receives object references and the item numbers only (unreadable files are left
        out there, or fail with ``strict=1``): a test set of any size is decoded where Ray
        runs, and every evaluation actor fetches it from its node's store.
        """
        import ray

        ds = self.dataset(order=order)
        wait_for_free_cpu()  # after the build: its own metadata tasks hold CPUs for a moment
        ds = ds.materialize()
        refs = ds.to_numpy_refs(column="image")
        items = ray.get(ds.to_numpy_refs(column="item"))
        # Ray Data may finish the read tasks in any order; each block is a contiguous run of the asked order, so
        # sorting the blocks by their first item's place restores it. Without this, the same split could come
        # back in another order, and every hash over ``kept`` (the attackers' data key) would change.
        asked = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
        rank = {int(item): pos for pos, item in enumerate(asked)}
        by_place = sorted(range(len(items)), key=lambda b: rank.get(int(items[b][0]), -1) if len(items[b]) else -1)
        refs, items = [refs[b] for b in by_place], [items[b] for b in by_place]
        counts = tuple(len(i) for i in items)
        kept = np.concatenate(items).astype(np.int64) if items else np.zeros(0, np.int64)
        if kept.size == 0:
            raise MaskcryptError(f"data spec {self.spec.text!r}: no image of split {self.split!r} could be read")
        blocks = ImageBlocks(tuple(refs), counts, (self.channels, *self.size), np.arange(kept.size))
        return blocks, kept

    def dataset(self, order: np.ndarray | None = None, blocks: int = 0,
                shuffle_seed: int | None = None) -> ray.data.Dataset:
        """Rows ``image``, ``label``, ``item``, decoded in Ray tasks; ``order`` picks and orders items.

        ``shuffle_seed`` makes a training stream: the items in one seeded random order (so
        that every block, and every worker's shard of a streaming split, mixes identities:
        face sources list their files identity by identity, and a block of 256 files in that
        order would hold one or two identities), and the blocks in a new seeded order on each
        execution of the dataset (each epoch). Only the blocks of file paths are reordered,
        before anything is decoded: the all-to-all step costs no pixels. Within a worker,
        the local shuffle buffer (``Resources.shuffle_buffer``) mixes the blocks.
        """
        import ray
        import ray.data

        if order is not None and shuffle_seed is not None:
            raise ValueError("dataset: give order or shuffle_seed, not both")
        if shuffle_seed is not None:
            order = np.random.default_rng([shuffle_seed, 0x5B1]).permutation(len(self))
        idx = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
        if idx.size == 0:
            raise MaskcryptError(f"data spec {self.spec.text!r}: split {self.split!r} has no image to read")
        n_blocks = blocks or max(1, -(-idx.size // ROWS_PER_BLOCK))
        table: dict[str, Any] = {"item": idx, "label": self.labels[idx]}
        if self.paths is not None:
            table["path"] = np.asarray(self.paths, dtype=object)[idx]
            fn, kwargs = _decode_files, {"size": self.size, "channels": self.channels, "crop": self.crop,
                                         "strict": bool(self.spec.get("strict")), "spec": self.spec.text}
        elif self.items is not None:
            table["render_item"] = self.items[idx]
            fn, kwargs = _render, {**self.render, "size": self.size, "channels": self.channels}
        else:
            fn, kwargs = _take, {"arrays": ray.put(self.arrays)}
        import pandas as pd

        frame = pd.DataFrame(table)
        index = ray.data.from_pandas([frame.iloc[p] for p in np.array_split(np.arange(len(frame)), n_blocks)])
        if shuffle_seed is not None:
            from ray.data import RandomSeedConfig

            index = index.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
        return index.map_batches(fn, fn_kwargs=kwargs, batch_size=ROWS_PER_BLOCK, batch_format="numpy")


def _decode_files(batch: dict[str, np.ndarray], size: tuple[int, int], channels: int, crop: str, strict: bool,
                  spec: str) -> dict[str, np.ndarray]:
    images, good, bad = decode_many(list(batch["path"]), size, channels, crop, threads=1)
    if bad and strict:
        raise MaskcryptError(f"data spec {spec!r}: unreadable image with strict=1: {bad[0][1]}")
    return {"image": images, "label": np.asarray(batch["label"])[good], "item": np.asarray(batch["item"])[good]}


def _render(batch: dict[str, np.ndarray], identities: int, per_identity: int, seed: int, offset: int,
            size: tuple[int, int], channels: int) -> dict[str, np.ndarray]:
    images = render_dataset(identities, per_identity, size[0], size[1], seed=seed, channels=channels,
                            items=np.asarray(batch["render_item"]), offset=offset)
    return {"image": images, "label": np.asarray(batch["label"]), "item": np.asarray(batch["item"])}


def _take(batch: dict[str, np.ndarray], arrays: Any) -> dict[str, np.ndarray]:
    import ray

    data = ray.get(arrays) if isinstance(arrays, ray.ObjectRef) else arrays
    item = np.asarray(batch["item"])
    return {"image": np.ascontiguousarray(data[item]), "label": np.asarray(batch["label"]), "item": item}
