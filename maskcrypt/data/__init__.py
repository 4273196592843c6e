"""Image sources: every supported format becomes uint8 ``N x C x H x W`` images, int labels and class names.

Use :func:`load` for data that fits in memory (test sets, laptop training sets) and
:func:`ray_dataset` to stream a large file-based set through Ray Data. Both read the
same spec strings (see :mod:`maskcrypt.data.spec`) and apply the same class filters
and splits, so a model trained on the stream is tested on the matching in-memory split.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.pairs import generate_pairs
from maskcrypt.data.sources import INDEXERS, SourceIndex
from maskcrypt.data.spec import DataSpec, parse_spec
from maskcrypt.data.splits import split_by_identity, split_by_image
from maskcrypt.data.stream import SourceSplit

if TYPE_CHECKING:
    import ray.data

__all__ = ["DataSpec", "ImageSet", "SourceSplit", "describe", "load", "parse_spec", "ray_dataset", "source_split"]


@dataclass
class ImageSet:
    """A labelled image set in memory.

    ``labels`` index ``class_names``; the label space is that of the whole source (after
    class filters), so a train and a test split of one source share it. ``pairs`` (LFW's
    pairs.txt, a ``.bin``'s, or generated with ``#pairs=generate``) holds rows
    ``(index_a, index_b, same, fold)`` into ``images``. ``verification_only``: the source
    has no identity labels (an insightface ``.bin``); its ``labels`` are all 0.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    split: str
    spec: str
    paths: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    pairs: np.ndarray | None = None
    verification_only: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def content_hash(self) -> str:
        """sha256 of the pixels and labels: records exactly which data a run used."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()


@dataclass
class _Prepared:
    spec: DataSpec
    index: SourceIndex
    items: np.ndarray  # positions in the index that survive the class filters
    labels: np.ndarray  # remapped labels of ``items``
    class_names: list[str]
    splits: np.ndarray  # split of each of ``items``
    size: tuple[int, int]
    channels: int


def labelled(spec: str | DataSpec) -> str:
    """A spec's text followed by a colon, for "SPEC: what it holds" lines: ``synthetic:`` is not doubled."""
    text = spec.text if isinstance(spec, DataSpec) else str(spec)
    return text if text.endswith(":") else f"{text}:"


def _as_spec(spec: str | DataSpec) -> DataSpec:
    return spec if isinstance(spec, DataSpec) else parse_spec(spec)


def _prepare(spec: DataSpec) -> _Prepared:
    index = INDEXERS[spec.kind](spec)
    labels = index.labels
    items = np.arange(len(index))
    counts = np.bincount(labels, minlength=len(index.class_names))
    keep_classes = np.flatnonzero(counts >= max(spec.get("min_images_per_identity"), 1))
    if spec.get("max_classes"):
        keep_classes = keep_classes[: spec.get("max_classes")]
    if keep_classes.size == 0:
        raise MaskcryptError(
            f"data spec {spec.text!r}: no class has at least {spec.get('min_images_per_identity')} images"
        )
    if keep_classes.size < len(index.class_names):
        mask = np.isin(labels, keep_classes)
        items = items[mask]
        remap = np.full(len(index.class_names), -1, np.int64)
        remap[keep_classes] = np.arange(keep_classes.size)
        labels = remap[labels[mask]]
    names = [index.class_names[i] for i in keep_classes]
    if spec.get("split_by") == "identity":
        splits = split_by_identity(labels, spec.get("test_fraction"), spec.get("seed"), spec.get("val_fraction"))
    elif index.own_split is not None:
        splits = index.own_split[items]
    else:
        splits = split_by_image(labels, spec.get("test_fraction"), spec.get("seed"))
    channels = spec.get("channels") or index.default_channels
    return _Prepared(spec, index, items, labels, names, splits, index.default_size, channels)


def _select(prep: _Prepared, split: str) -> np.ndarray:
    """Positions (into prep.items) of ``split``, after the seeded ``limit``."""
    chosen = np.arange(prep.items.size) if split == "all" else np.flatnonzero(prep.splits == split)
    if chosen.size == 0:
        have = ", ".join(f"{s}={int((prep.splits == s).sum())}" for s in np.unique(prep.splits))
        raise MaskcryptError(f"data spec {prep.spec.text!r}: split {split!r} is empty (splits: {have})")
    limit = prep.spec.get("limit")
    if limit and limit < chosen.size:
        rng = np.random.default_rng([prep.spec.get("seed"), 0x11A1])
        chosen = np.sort(rng.choice(chosen, size=limit, replace=False))
    return chosen


def _refuse_unlabelled(spec: DataSpec, index: SourceIndex) -> None:
    if index.verification_only:
        raise MaskcryptError(
            f"data spec {spec.text!r}: a verification set (image pairs, no identity labels) serves verification "
            "only (maskcrypt verify RUN --pairs SPEC); it cannot train a model nor test identification: use a "
            "labelled source (imagefolder:, lfw:, ...) there"
        )


def _pairs(prep: _Prepared, kept: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The source's pairs mapped onto the loaded images (pairs with an image not loaded dropped), or generated."""
    spec = prep.spec
    if spec.get("pairs") == "generate":

        pairs, _ = generate_pairs(labels, spec.get("pairs_per_fold"), spec.get("seed"))
        return pairs
    if not prep.index.pairs:
        return None
    items = prep.items[kept]
    if isinstance(prep.index.pairs[0][0], str):
        paths = prep.index.paths or []
        where = {paths[item]: i for i, item in enumerate(items)}
    else:
        where = {int(item): i for i, item in enumerate(items)}
    rows = [(where[a], where[b], same, fold) for a, b, same, fold in prep.index.pairs if a in where and b in where]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def load(spec: str | DataSpec, default_split: str = "all", size: int | tuple[int, int] | None = None,
         channels: int | None = None, verification: bool = False) -> ImageSet:
    """Load one split of a source into memory.

    ``default_split`` applies when the spec names none (``#split=``); ``size`` and
    ``channels`` override the spec's. Unreadable files are skipped and listed in
    ``skipped`` (with a warning), or raise with ``strict=1`` in the spec. A source
    without identity labels (``bin:``) is refused unless ``verification`` (the caller
    needs images and pairs only).
    """
    spec = _as_spec(spec)
    if size is not None:
        spec = spec.with_options(size=f"{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}")
    if channels is not None:
        spec = spec.with_options(channels=channels)
    prep = _prepare(spec)
    if not verification:
        _refuse_unlabelled(spec, prep.index)
    split = spec.split or default_split
    chosen = _select(prep, split)
    images, good, bad = prep.index.load(prep.items[chosen], prep.size, prep.channels)
    if bad:
        if spec.get("strict"):
            raise MaskcryptError(
                f"data spec {spec.text!r}: {len(bad)} unreadable image(s) with strict=1, e.g. {bad[0][1]}"
            )
        warnings.warn(f"data spec {spec.text!r}: skipped {len(bad)} unreadable image(s), e.g. {bad[0][1]}",
                      stacklevel=2)
    kept = chosen[good]
    if kept.size == 0:
        raise MaskcryptError(f"data spec {spec.text!r}: no image of split {split!r} could be read")
    paths = [prep.index.paths[i] for i in prep.items[kept]] if prep.index.paths else None
    labels = prep.labels[kept]
    return ImageSet(images, labels, prep.class_names, split, spec.text, paths, bad, _pairs(prep, kept, labels),
                    prep.index.verification_only)


def describe(spec: str | DataSpec) -> dict[str, Any]:
    """What ``maskcrypt data info`` prints: counts per split, classes, sizes; decodes no pixels."""
    spec = _as_spec(spec)
    prep = _prepare(spec)
    per_split = {s: int((prep.splits == s).sum()) for s in ("train", "val", "test") if (prep.splits == s).any()}
    per_class = np.bincount(prep.labels, minlength=len(prep.class_names))
    out: dict[str, Any] = {
        "spec": spec.text,
        "kind": spec.kind,
        "images": int(prep.items.size),
        "splits": per_split,
        "split_source": ("identity (seeded)" if spec.get("split_by") == "identity"
                         else "own" if prep.index.own_split is not None else "seeded by image"),
        "classes": len(prep.class_names),
        "images_per_class": {"min": int(per_class.min()), "mean": float(per_class.mean()),
                             "max": int(per_class.max())},
        "native": prep.index.native,
        "size": list(prep.size),
        "channels": prep.channels,
        "first_classes": prep.class_names[:5],
    }
    if prep.index.pairs:
        out["pairs"] = len(prep.index.pairs)
    if spec.get("pairs") == "generate":
        out["pairs"] = "generated per split (10 folds, seeded)"
    if prep.index.verification_only:
        out["verification_only"] = True
    return out


def source_split(spec: str | DataSpec, default_split: str = "all", size: int | tuple[int, int] | None = None,
                 channels: int | None = None, verification: bool = False) -> SourceSplit:
    """One split of a source as an index (:class:`SourceSplit`): labels and what to decode, no pixel decoded.

    The same class filters, splits and ``limit`` as :func:`load`; its ``dataset()`` decodes
    in Ray tasks. Array sources (idx, npz) hold their arrays already: those come along.
    ``verification``: a source without identity labels is accepted, and ``pairs`` (the
    source's own, or generated with ``#pairs=generate``) index the split's positions.
    """
    spec = _as_spec(spec)
    if size is not None:
        spec = spec.with_options(size=f"{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}")
    if channels is not None:
        spec = spec.with_options(channels=channels)
    prep = _prepare(spec)
    if not verification:
        _refuse_unlabelled(spec, prep.index)
    split = spec.split or default_split
    chosen = _select(prep, split)
    out = SourceSplit(spec, split, prep.labels[chosen], prep.class_names, prep.size, prep.channels)
    if verification:
        out.pairs = _pairs(prep, chosen, prep.labels[chosen])
    if prep.index.paths is not None:
        out.paths, out.crop = [prep.index.paths[i] for i in prep.items[chosen]], prep.index.crop
    elif spec.kind == "synthetic":
        out.items = prep.items[chosen]
        out.render = {"identities": spec.get("identities"), "per_identity": spec.get("per_identity"),
                      "seed": spec.get("seed"), "offset": spec.get("offset")}
    else:
        out.arrays, _, _ = prep.index.load(prep.items[chosen], prep.size, prep.channels)
    return out


def ray_dataset(spec: str | DataSpec, default_split: str = "all", blocks: int = 0) -> ray.data.Dataset:
    """Stream one split through Ray Data: rows ``image`` (uint8 C x H x W), ``label`` and ``item``.

    File sources decode inside Ray Data tasks (the label comes from the file's path,
    through the index), so a data set far larger than memory streams; unreadable files
    are dropped there, and fail the pipeline with ``strict=1``. Synthetic images render
    in tasks; array sources are cut into blocks. ``blocks`` sets the parallelism (0 =
    one block per 256 images). See :class:`SourceSplit`.
    """
    return source_split(spec, default_split).dataset(blocks=blocks)
