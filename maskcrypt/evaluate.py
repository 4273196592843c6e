"""The images x masks cross product on Ray Data, without ever materializing it.

Rows of the Ray Data dataset are *masks* (read from the Parquet library, still
bit-packed), or, for Table 1's sampled mode, *(bucket, repetition)* tasks. Each actor
of an ``ActorPoolStrategy`` pool receives the test images once (through the object
store), loads the recognizers from their checkpoints, unpacks masks on its device,
builds ``images * mask`` chunk by chunk by broadcasting, and emits only small rows
of counts per mask and split: ``n``, ``correct_<model>`` and ``score_<model>`` (the
sum over images of the per-image score), optionally the per-image correctness
bit-packed (``hits_<model>``). :mod:`maskcrypt.select` turns counts into tables.

Scoring (DESIGN.md):

* **closed set** - the test identities are training classes: the classifier's top-1
  against the label; the score is the true class's probability;
* **open set** - they are not: per identity ``enroll`` images form a gallery of
  embedding centroids, the others are probes, identification is top-1 cosine
  similarity; the score is the cosine to the true centroid. E's gallery is masked with
  the same mask as the probes (the deployed system masks everything); O's gallery is
  clean (an outsider holding clean photos).

:func:`prepare_test` decides the scoring, picks the gallery and splits the probes into
a *selection* part (what the rules see) and a *confirmation* part (held out, to show
selection bias). Everything Ray lives in the ``evaluate_*`` functions.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.errors import MaskcryptError

SPLITS = ("selection", "confirmation")
#: Models whose open-set gallery stays clean (an outsider's model); the others see masked galleries.
CLEAN_GALLERY = frozenset({"O"})


@dataclass(frozen=True)
class EvalSettings:
    """How the cross product runs: pool size, resources per actor, batch sizes, precision."""

    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    masks_per_batch: int = 8  # masks per Ray Data batch (one actor call)
    masks_per_block: int = 64  # masks per Ray Data block (one actor task; the unit of progress and resume)
    images_per_chunk: int = 256  # images per forward pass
    precision: str = "auto"
    per_image: bool = False  # also emit per-image correctness, bit-packed (hits_<model>)
    timing: bool = False  # also emit when each row was done, by which worker and on which node (benchmarks)

    def __post_init__(self) -> None:
        if min(self.actors, self.masks_per_batch, self.masks_per_block, self.images_per_chunk) < 1:
            raise MaskcryptError("evaluation: actors, masks per batch/block and images_per_chunk must be >= 1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise MaskcryptError(f"--precision: expected auto, bf16 or fp32, got {self.precision!r}")


@dataclass(frozen=True)
class TestSet:
    """Test images ready for scoring, ordered gallery first, then probes by split.

    ``labels`` index ``classes``: the models' classes (closed set) or the test
    identities (open set). ``split`` is 0 (selection) or 1 (confirmation) per image;
    ``gallery`` marks enrollment images (open set only). ``order`` maps each position
    back to the index in the images the caller passed.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    gallery: np.ndarray
    scoring: str
    classes: list[str]
    order: np.ndarray
    n_input: int
    dropped: list[str] = field(default_factory=list)  # open set: identities with too few images

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def probes(self, split: str) -> int:
        return int(((~self.gallery) & (self.split == SPLITS.index(split))).sum())

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, positions: np.ndarray) -> TestSet:
        """The gallery plus the probes at ``positions`` (indices into this set), all as selection."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.gallery[positions].any():
            raise MaskcryptError("TestSet.subset: positions must name probes, not gallery images")
        rows = np.concatenate([np.flatnonzero(self.gallery), positions])
        split = np.zeros(rows.size, np.int8)
        return TestSet(np.ascontiguousarray(self.images[rows]), self.labels[rows], split, self.gallery[rows],
                       self.scoring, self.classes, self.order[rows], self.n_input, self.dropped)


def choose_scoring(test_classes: Sequence[str], model_classes: Sequence[str], scoring: str = "auto") -> str:
    """Closed set when every test identity is a class the models were trained on, else open."""
    if scoring not in ("auto", "closed", "open"):
        raise MaskcryptError(f"--scoring: expected auto, closed or open, got {scoring!r}")
    missing = sorted(set(test_classes) - set(model_classes))
    if scoring == "closed" and missing:
        raise MaskcryptError(f"--scoring closed: test identities {missing[:5]} are not among the models' "
                             f"{len(model_classes)} training classes (use open-set scoring)")
    if scoring != "auto":
        return scoring
    return "open" if missing else "closed"


def prepare_test(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    model_classes: Sequence[str],
    scoring: str = "auto",
    confirm_fraction: float = 0.5,
    enroll: int = 2,
    seed: int = 0,
    trained_classes: Sequence[str] | None = None,
) -> TestSet:
    """Decide the scoring, choose the gallery (open set) and the selection/confirmation split.

    Per identity (seeded by ``seed`` and the identity): open set takes ``enroll`` images
    as the gallery (identities with fewer than ``enroll + 1`` images are dropped and
    listed); the probes are split by image, a ``confirm_fraction`` of each identity's
    going to confirmation (0 keeps everything in selection). ``model_classes`` are the
    classifier's outputs, ``trained_classes`` those it saw in training (default: all):
    the scoring is closed set when every test identity is one of the latter. Pure: no
    Ray, no model.
    """
    if images.ndim != 4 or images.shape[0] != len(labels):
        raise MaskcryptError(f"test images: expected N x C x H x W with one label each, got {images.shape} "
                             f"and {len(labels)} labels")
    if len(labels) == 0:
        raise MaskcryptError("evaluation: the test set is empty")
    if not 0.0 <= confirm_fraction < 1.0:
        raise MaskcryptError(f"--confirm-fraction: expected a fraction in [0, 1), got {confirm_fraction}")
    if enroll < 1:
        raise MaskcryptError(f"--enroll: expected at least 1 gallery image per identity, got {enroll}")
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    names = [str(class_names[i]) for i in present]
    mode = choose_scoring(names, model_classes if trained_classes is None else trained_classes, scoring)
    n = len(labels)
    gallery = np.zeros(n, bool)
    split = np.zeros(n, np.int8)
    keep = np.ones(n, bool)
    dropped: list[str] = []
    if mode == "closed":
        where = {c: i for i, c in enumerate(model_classes)}
        if not set(names) <= set(where):
            raise MaskcryptError("closed-set scoring: some test identities are not training classes")
        new_labels = np.asarray([where[str(class_names[i])] for i in labels], np.int64)
        classes = [str(c) for c in model_classes]
    else:
        classes = names
        new_labels = np.searchsorted(present, labels).astype(np.int64)
    for k, cls in enumerate(present):
        idx = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, 0xC0F1, int(cls)]).permutation(idx.size)
        idx = idx[order]
        if mode == "open":
            if idx.size < enroll + 1:
                keep[idx] = False
                dropped.append(names[k])
                continue
            gallery[idx[:enroll]] = True
            idx = idx[enroll:]
        n_conf = round(confirm_fraction * idx.size)
        if confirm_fraction > 0 and idx.size >= 2:
            n_conf = min(max(n_conf, 1), idx.size - 1)
        split[idx[idx.size - n_conf:]] = 1
    if mode == "open":
        if not keep.any() or len(np.unique(labels[keep])) < 2:
            raise MaskcryptError(f"open-set scoring: needs at least two identities with {enroll + 1}+ images "
                                 f"(gallery of {enroll} plus a probe); have {len(np.unique(labels[keep]))}")
        kept_ids = np.unique(labels[keep])
        classes = [str(class_names[i]) for i in kept_ids]
        new_labels = np.searchsorted(kept_ids, labels).astype(np.int64)
    pos = np.flatnonzero(keep)
    # Gallery first, then selection probes, then confirmation probes; stable, so each group keeps input order.
    rank = np.where(gallery, 0, 1 + split.astype(np.int64))[pos]
    order = pos[np.argsort(rank, kind="stable")]
    return TestSet(np.ascontiguousarray(images[order]), new_labels[order], split[order], gallery[order], mode,
                   classes, order, n, dropped)


def choose_device(gpus_per_actor: float, cuda_available: bool) -> str:
    """The actor's device: CUDA when it was given a GPU, else the CPU; a GPU it cannot see is an error.

    Ray hides GPUs from actors that did not ask for one (``CUDA_VISIBLE_DEVICES``), so an
    actor without a GPU share never lands on one by accident.
    """
    if gpus_per_actor > 0:
        if not cuda_available:
            raise MaskcryptError(f"evaluation actor: given {gpus_per_actor} GPU but CUDA is not available in it "
                                 "(driver or torch build without CUDA)")
        return "cuda"
    return "cpu"


class CrossProductScorer:
    """A Ray Data callable class: test images and recognizers resident, masks streaming through.

    ``mode="masks"``: each input row is a library mask (``mask_id``, ``bucket``, ``bits``);
    every probe of the requested splits is recognized under it. ``mode="sampled"``: each
    row is a ``(bucket, repeat, seed)`` task; every image gets one mask drawn at random
    from the bucket (bucket 0: no mask). ``mode="attack"``: each row is a mask; the
    masked probes are also inpainted by R, and E and O recognize both versions.
    Every mode emits one row per (input row, split).
    """

    def __init__(self, test: Any, models: dict[str, str], splits: Sequence[str] = ("selection",),
                 precision: str = "auto", images_per_chunk: int = 256, mode: str = "masks",
                 bucket_masks: Any = None, inpainter: str | None = None, per_image: bool = False,
                 timing: bool = False, gpus: float = 0.0):
        import ray
        import torch

        from maskcrypt.models import Recognizer
        from maskcrypt.train import use_bf16

        # Object refs passed as constructor arguments arrive unresolved.
        test = ray.get(test) if isinstance(test, ray.ObjectRef) else test
        if isinstance(bucket_masks, ray.ObjectRef):
            bucket_masks = ray.get(bucket_masks)
        self.device = torch.device(choose_device(gpus, torch.cuda.is_available()))
        self.bf16 = use_bf16(precision, self.device.type)
        self.models = {name: Recognizer.from_checkpoint(path, self.device) for name, path in models.items()}
        if self.bf16:
            self.models = {k: m.to(memory_format=torch.channels_last) for k, m in self.models.items()}
        with warnings.catch_warnings():
            # Arrays from the object store are read-only and shared; we never write to them.
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(test.images).to(self.device)
        self.x = x.contiguous(memory_format=torch.channels_last) if self.bf16 else x
        self.y = torch.from_numpy(np.asarray(test.labels)).to(self.device)
        self.h, self.w = test.size
        self.open = test.scoring == "open"
        self.n_classes = len(test.classes)
        n_gallery = int(test.gallery.sum())
        self.gallery = slice(0, n_gallery)
        self.splits = [s for s in SPLITS if s in splits]
        # Probes are ordered by split after the gallery, so every split is one contiguous slice.
        bounds = np.cumsum([n_gallery] + [test.probes(s) for s in SPLITS])
        self.ranges = {s: (int(bounds[i]), int(bounds[i + 1])) for i, s in enumerate(SPLITS)}
        lo = min(self.ranges[s][0] for s in self.splits)
        hi = max(self.ranges[s][1] for s in self.splits)
        self.probes = slice(lo, hi)
        self.order = np.asarray(test.order)
        self.n_input = test.n_input
        self.chunk = images_per_chunk
        self.mode = mode
        self.per_image = per_image
        self.timing = timing
        self.node = ""
        if timing:
            import ray

            self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.bucket_masks = {int(b): torch.from_numpy(m).to(self.device) for b, m in (bucket_masks or {}).items()}
        self.inpainter = None
        if inpainter is not None:
            from maskcrypt.models import Inpainter

            self.inpainter = Inpainter.from_checkpoint(inpainter, self.device)
        self.clean_centroids: dict[str, Any] = {}
        if self.open:
            for name in self.models:
                if name in CLEAN_GALLERY:
                    self.clean_centroids[name] = self._centroids(self._outputs(self.gallery, None, [name])[name])

    # -- building blocks -------------------------------------------------------------------------------
    def _outputs(self, rows: slice, masks_for: Callable[[int, int], Any] | None, names: Sequence[str],
                 fill: bool = False) -> dict[str, Any]:
        """Logits (closed set) or unit embeddings (open set) of ``rows``, masked and optionally inpainted.

        ``masks_for(start, stop)`` gives the mask (H x W) or masks (n x H x W) of images
        ``start:stop``; None means clean images.
        """
        import torch
        import torch.nn.functional as F

        from maskcrypt.masks.core import overlay

        outs: dict[str, list[Any]] = {n: [] for n in names}
        with torch.inference_mode():
            for s in range(rows.start, rows.stop, self.chunk):
                e = min(s + self.chunk, rows.stop)
                xb = self.x[s:e]
                m = masks_for(s, e) if masks_for is not None else None
                if m is not None:
                    xb = overlay(xb, m)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    if fill:
                        holes = m[None].expand(e - s, -1, -1) if m.dim() == 2 else m
                        xb = self.inpainter.inpaint(xb, holes)
                        if self.bf16:
                            xb = xb.contiguous(memory_format=torch.channels_last)
                    for name in names:
                        model = self.models[name]
                        out = F.normalize(model.embed(xb).float(), dim=1) if self.open else model(xb).float()
                        outs[name].append(out)
        return {n: torch.cat(v) if v else torch.empty(0) for n, v in outs.items()}

    def _centroids(self, emb: Any) -> Any:
        """Unit mean embedding per identity from the gallery's embeddings."""
        import torch
        import torch.nn.functional as F

        cent = torch.zeros(self.n_classes, emb.shape[1], device=emb.device)
        cent.index_add_(0, self.y[self.gallery], emb)
        return F.normalize(cent, dim=1)

    def _judge(self, name: str, out: Any, centroids: dict[str, Any], rows: slice | None = None) -> tuple[Any, Any]:
        """Per-probe correctness and score from a model's outputs on the probes (or on ``rows``)."""
        import torch

        y = self.y[self.probes if rows is None else rows]
        if self.open:
            sims = out @ centroids[name].T
            return sims.argmax(1) == y, sims.gather(1, y[:, None])[:, 0]
        return out.argmax(1) == y, torch.softmax(out, 1).gather(1, y[:, None])[:, 0]

    def _gallery_centroids(self, masks_for: Callable[[int, int], Any] | None) -> dict[str, Any]:
        if not self.open:
            return {}
        # E-like models see the gallery under the same masks as the probes (clean when masks_for is None).
        masked = [n for n in self.models if n not in CLEAN_GALLERY]
        outs = self._outputs(self.gallery, masks_for, masked)
        return {**{n: self._centroids(o) for n, o in outs.items()}, **self.clean_centroids}

    def _recognize(self, masks_for: Callable[[int, int], Any] | None) -> dict[str, tuple[Any, Any]]:
        """Per-probe (correct, score) for every model under one mask assignment."""
        cents = self._gallery_centroids(masks_for)
        outs = self._outputs(self.probes, masks_for, list(self.models))
        return {n: self._judge(n, o, cents) for n, o in outs.items()}

    def _per_split(self, vectors: dict[str, Any]) -> list[dict[str, Any]]:
        """Sum per-probe vectors over each split: ``n``, and per key ``correct_``/``score_``."""
        rows = []
        for s in self.splits:
            a, b = self.ranges[s]
            a, b = a - self.probes.start, b - self.probes.start
            row: dict[str, Any] = {"split": s, "n": b - a}
            for key, v in vectors.items():
                part = v[a:b]
                row[key] = float(part.double().sum()) if part.is_floating_point() else int(part.sum())
                if self.per_image and key.startswith("correct_"):
                    row["hits_" + key[len("correct_"):]] = np.packbits(part.cpu().numpy()).tobytes()
            rows.append(row)
        return rows

    def _counts(self, masks_for: Callable[[int, int], Any] | None) -> list[dict[str, Any]]:
        res = self._recognize(masks_for)
        vectors = {}
        for name, (correct, score) in res.items():
            vectors[f"correct_{name}"] = correct
            vectors[f"score_{name}"] = score
        return self._per_split(vectors)

    def _range_counts(self, mask: Any, start: int, stop: int) -> list[dict[str, Any]]:
        """Counts for one mask on probes ``start:stop`` only (positions among the probes): the adaptive race."""
        def fixed(s: int, e: int) -> Any:
            return mask

        cents = self._gallery_centroids(fixed)
        rows = slice(self.probes.start + start, self.probes.start + stop)
        row: dict[str, Any] = {"split": "selection", "n": stop - start}
        for name, out in self._outputs(rows, fixed, list(self.models)).items():
            correct, score = self._judge(name, out, cents, rows)
            row[f"correct_{name}"] = int(correct.sum())
            row[f"score_{name}"] = float(score.double().sum())
        return [row]

    def _attack(self, mask: Any) -> list[dict[str, Any]]:
        """Paired counts for one mask: E on masked vs on inpainted probes, and O on both."""
        def fixed(s: int, e: int) -> Any:
            return mask

        cents = self._gallery_centroids(fixed)
        masked = self._outputs(self.probes, fixed, ["E", "O"])
        filled = self._outputs(self.probes, fixed, ["E", "O"], fill=True)
        before, _ = self._judge("E", masked["E"], cents)
        after, _ = self._judge("E", filled["E"], cents)
        return self._per_split({
            "both": before & after, "before_only": before & ~after, "after_only": ~before & after,
            "neither": ~before & ~after,
            "correct_O_masked": self._judge("O", masked["O"], cents)[0],
            "correct_O_inpainted": self._judge("O", filled["O"], cents)[0],
        })

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from maskcrypt.masks.core import unpack_masks

        rows: list[dict[str, Any]] = []
        if self.mode in ("attack", "masks"):
            masks = torch.from_numpy(unpack_masks(list(batch["bits"]), self.h, self.w)).to(self.device)
            for i in range(masks.shape[0]):
                key = {"mask_id": str(batch["mask_id"][i])}
                if self.mode == "masks":
                    key["bucket"] = int(batch["bucket"][i])
                    if "start" in batch:
                        found = self._range_counts(masks[i], int(batch["start"][i]), int(batch["stop"][i]))
                    else:
                        found = self._counts(lambda s, e, m=masks[i]: m)
                else:
                    found = self._attack(masks[i])
                if self.timing:
                    key |= {"t_done": time.time(), "worker": os.getpid(), "node": self.node}
                rows.extend(key | r for r in found)
        else:
            for bucket, repeat, seed in zip(batch["bucket"], batch["repeat"], batch["seed"]):
                bucket = int(bucket)
                key = {"bucket": bucket, "repeat": int(repeat)}
                if bucket == 0:
                    found = self._counts(None)
                else:
                    pool = self.bucket_masks[bucket]
                    # Drawn over the caller's image order, so the draw does not depend on our ordering.
                    pick = np.random.default_rng([int(seed), bucket, int(repeat)]).integers(
                        0, len(pool), self.n_input)[self.order]
                    pick_t = torch.from_numpy(pick).to(self.device)
                    found = self._counts(lambda s, e, p=pool, k=pick_t: p[k[s:e]])
                rows.extend(key | r for r in found)
        return {k: np.asarray([r[k] for r in rows], dtype=object if k.startswith("hits_") else None)
                for k in rows[0]}

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same as calling the instance: the method name a plain Ray actor is called by."""
        return self(batch)


# -- driver side -----------------------------------------------------------------------------------------
def check_models(models: dict[str, str | Path], test: TestSet) -> dict[str, str]:
    """Resolve each model to its newest complete checkpoint and check it fits the test images."""
    from maskcrypt.models.checkpoint import find_checkpoint

    resolved = {}
    for name, path in models.items():
        ckpt, meta = find_checkpoint(path, kind="recognizer")
        if test.scoring == "closed" and list(meta.get("class_names", [])) != list(test.classes):
            raise MaskcryptError(
                f"model {name} ({path}): trained on other classes than the closed-set test labels index "
                "(prepare the test set with this model's classes, or use open-set scoring)"
            )
        if meta.get("image_size") not in (None, test.size[0]):
            raise MaskcryptError(f"model {name} ({path}): trained at {meta['image_size']} px, test images are "
                                 f"{test.size[0]}x{test.size[1]}")
        if meta.get("channels") not in (None, test.images.shape[1]):
            raise MaskcryptError(f"model {name} ({path}): trained on {meta['channels']}-channel images, test "
                                 f"images have {test.images.shape[1]}")
        resolved[name] = str(ckpt)
    return resolved


def _check_library(library: Any, test: TestSet) -> None:
    if (library.height, library.width) != test.size:
        raise MaskcryptError(
            f"mask library {library.uri}: masks are {library.height}x{library.width}, test images "
            f"{test.size[0]}x{test.size[1]} (rebuild the library with --size {test.size[0]})"
        )


def _check_splits(test: TestSet, splits: Sequence[str]) -> None:
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise MaskcryptError(f"evaluation splits: expected some of {SPLITS}, got {list(splits)}")
    for s in splits:
        if test.probes(s) == 0:
            raise MaskcryptError(f"evaluation: the {s} split has no probe image (test set too small for "
                                 "the confirmation fraction or gallery size)")


def _check_gpus(settings: EvalSettings) -> None:
    import ray

    if settings.gpus_per_actor > 0:
        have = ray.cluster_resources().get("GPU", 0)
        if have < settings.gpus_per_actor and not os.environ.get("MASKCRYPT_AUTOSCALING_GPUS"):
            # Ray would wait forever for actors no node can host.
            raise MaskcryptError(f"--eval-gpus {settings.gpus_per_actor}: the cluster has {have:g} GPU(s); on an "
                                 "autoscaling cluster that adds GPU nodes on demand set MASKCRYPT_AUTOSCALING_GPUS=1")


def _pool(settings: EvalSettings, constructor: dict[str, Any], rows: int | None = None) -> dict[str, Any]:
    """map_batches arguments for the actor pool; no more actors than input rows (idle actors cost a start)."""
    import ray
    import ray.data

    size = settings.actors if rows is None else max(1, min(settings.actors, rows))
    _check_gpus(settings)
    return {
        "fn_constructor_kwargs": constructor,
        "compute": ray.data.ActorPoolStrategy(size=size),
        "num_cpus": settings.cpus_per_actor,
        "num_gpus": settings.gpus_per_actor,
        "batch_format": "numpy",
    }


def _constructor(test: TestSet, resolved: dict[str, str], splits: Sequence[str], settings: EvalSettings,
                 mode: str, **extra: Any) -> dict[str, Any]:
    import ray

    return {"test": ray.put(test), "models": resolved, "splits": tuple(splits), "precision": settings.precision,
            "images_per_chunk": settings.images_per_chunk, "mode": mode, "gpus": settings.gpus_per_actor, **extra}


def _write_part(df: pd.DataFrame, parts: Path) -> None:
    """One Parquet part via a temporary name: a part that exists is complete."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = parts / f".{name}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, parts / name)


def read_parts(parts: Path) -> pd.DataFrame:
    files = sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def evaluate_masks(
    library: Any,
    test: TestSet,
    models: dict[str, str | Path],
    buckets: Sequence[int] | None = None,
    splits: Sequence[str] = ("selection",),
    settings: EvalSettings = EvalSettings(),
    parts: Path | None = None,
    log: Callable[[str], None] | None = None,
    on_block: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Per-mask counts: every mask of ``buckets`` x every probe of ``splits``, via an actor pool.

    Returns one row per (mask, split): ``mask_id``, ``bucket``, ``split``, ``n``,
    ``correct_<model>``, ``score_<model>`` (and ``hits_<model>`` with per-image
    settings), sorted by mask id. With ``parts`` (a directory), results are written
    there as Parquet parts while they arrive and masks already there are not evaluated
    again: a relaunch after an interruption continues where it stopped. The caller
    makes sure the parts were computed with the same inputs (see ``determine``).
    """
    _check_library(library, test)
    _check_splits(test, splits)
    resolved = check_models(models, test)
    done = read_parts(parts) if parts is not None else pd.DataFrame()
    if len(done) and not set(splits) <= set(done["split"]):
        raise MaskcryptError(f"per-mask parts in {parts}: computed for splits {sorted(set(done['split']))}, "
                             f"asked for {list(splits)}")
    done_ids = set(done["mask_id"]) if len(done) else set()
    wanted = set(library.table(buckets, columns=["mask_id"]).column("mask_id").to_pylist())
    todo = len(wanted - done_ids)
    if log and done_ids:
        log(f"per-mask: {len(done_ids & wanted)} masks already evaluated in {parts}, {todo} to go")
    results = [done] if len(done) else []
    if todo != 0:
        ds = library.to_ray_dataset(buckets, exclude=done_ids,
                                    rows_per_block=settings.masks_per_block).select_columns(
            ["mask_id", "bucket", "bits"])
        constructor = _constructor(test, resolved, splits, settings, "masks", per_image=settings.per_image,
                                   timing=settings.timing)
        out = ds.map_batches(CrossProductScorer, batch_size=settings.masks_per_batch, **_pool(settings, constructor))
        if parts is not None:
            parts.mkdir(parents=True, exist_ok=True)
        t0, last, seen = time.perf_counter(), 0.0, 0
        per_mask_images = sum(test.probes(s) for s in splits) + (int(test.gallery.sum()) if test.scoring == "open"
                                                                 else 0)
        for block in out.iter_batches(batch_size=None, batch_format="pandas"):
            if parts is not None:
                _write_part(block, parts)
            results.append(block)
            if on_block is not None:
                on_block(block)
            seen += block["mask_id"].nunique()
            now = time.perf_counter() - t0
            if log and (now - last > 30 or seen == todo):
                last = now
                log(f"per-mask: {seen}/{todo} masks, {seen * per_mask_images:,} masked images per model in "
                    f"{now:.0f}s ({seen * per_mask_images / max(now, 1e-9):,.0f}/s)")
    if not results:
        return pd.DataFrame(columns=["mask_id", "bucket", "split", "n"])
    df = pd.concat(results, ignore_index=True)
    # Parts read back and blocks fresh from Ray carry different string dtypes: one table, one dtype.
    df = df.astype({"mask_id": str, "split": str})
    if buckets is not None:
        df = df[df["bucket"].isin(list(buckets))]
    df = df[df["split"].isin(list(splits))]
    return df.sort_values(["mask_id", "split"]).reset_index(drop=True)


def evaluate_attack(
    library: Any,
    mask_ids: Sequence[str],
    test: TestSet,
    models: dict[str, str | Path],
    inpainter: str | Path,
    splits: Sequence[str] = ("selection",),
    settings: EvalSettings = EvalSettings(),
) -> pd.DataFrame:
    """The inpainting attack on ``mask_ids``: R fills each masked probe, E and O recognize it.

    ``models`` must name ``E`` and ``O``. One row per (mask, split) with ``n`` and E's
    paired counts before/after inpainting (``both``, ``before_only``, ``after_only``,
    ``neither``) plus ``correct_O_masked`` and ``correct_O_inpainted``: does inpainting
    hand an ordinary model back what the mask hid?
    """
    import ray.data

    from maskcrypt.masks.core import pack_masks
    from maskcrypt.models.checkpoint import find_checkpoint

    if set(models) != {"E", "O"}:
        raise MaskcryptError(f"attack: needs the models E and O, got {sorted(models)}")
    _check_library(library, test)
    _check_splits(test, splits)
    resolved = check_models(models, test)
    ckpt, _ = find_checkpoint(inpainter, kind="inpainter")
    if not mask_ids:
        raise MaskcryptError("attack: no mask to attack")
    batch = library.get(list(mask_ids))
    rows = [{"mask_id": m, "bits": b} for m, b in zip(batch.mask_ids, pack_masks(batch.masks))]
    constructor = _constructor(test, resolved, splits, settings, "attack", inpainter=str(ckpt))
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * settings.actors))
    out = ds.map_batches(CrossProductScorer, batch_size=1, **_pool(settings, constructor, len(rows)))
    return out.to_pandas().sort_values(["mask_id", "split"]).reset_index(drop=True)


def evaluate_sampled(
    library: Any,
    test: TestSet,
    models: dict[str, str | Path],
    repeats: int = 5,
    seed: int = 0,
    buckets: Sequence[int] | None = None,
    splits: Sequence[str] = ("selection",),
    settings: EvalSettings = EvalSettings(),
) -> pd.DataFrame:
    """Table 1's sampled mode: per repetition, each test image gets one random mask of the bucket.

    Returns one row per (bucket, repeat, split), bucket 0 being the "no mask" row,
    with ``n`` and the counts per model. A bucket with no mask in the library is an error.
    """
    import ray
    import ray.data

    if repeats < 1:
        raise MaskcryptError(f"--repeats: expected at least 1, got {repeats}")
    _check_library(library, test)
    _check_splits(test, splits)
    resolved = check_models(models, test)
    wanted = list(buckets) if buckets is not None else list(range(1, len(library.edges)))
    per_bucket = {}
    for b in wanted:
        masks = library.load([b]).masks
        if len(masks) == 0:
            raise MaskcryptError(f"mask library {library.uri}: bucket {b} holds no mask (empty bucket)")
        per_bucket[b] = masks
    tasks = [{"bucket": b, "repeat": r, "seed": seed} for b in [0, *wanted] for r in range(repeats)]
    constructor = _constructor(test, resolved, splits, settings, "sampled", bucket_masks=ray.put(per_bucket))
    ds = ray.data.from_items(tasks, override_num_blocks=min(len(tasks), 4 * settings.actors))
    out = ds.map_batches(CrossProductScorer, batch_size=1, **_pool(settings, constructor, len(tasks)))
    return out.to_pandas().sort_values(["bucket", "repeat", "split"]).reset_index(drop=True)


@dataclass(frozen=True)
class AdaptivePlan:
    """The adaptive race's knobs: first step of images, how steps grow, bounds, ties, how much to sample."""

    first: int = 50  # selection images every mask sees first
    growth: float = 1.5  # each step of a mask's images is this many times the previous one (BENCHMARKS.md)
    confidence: float = 0.99  # level of the Wilson bounds
    seed: int = 0  # order in which selection images are revealed
    tolerance: float = 0.01  # ties: stop once the top ``keep`` is provably within this of every other mask
    share: float = 0.1  # per round, the share of open challengers measured further (BENCHMARKS.md)

    def __post_init__(self) -> None:
        if self.first < 1 or self.growth <= 1.0:
            raise MaskcryptError(f"adaptive search: first >= 1 and growth > 1 needed, got {self.first}, {self.growth}")
        if not 0.0 <= self.tolerance < 1.0:
            raise MaskcryptError(f"--adaptive-tolerance: expected a fraction in [0, 1), got {self.tolerance}")
        if not 0.5 <= self.confidence < 1.0:
            raise MaskcryptError(f"--adaptive-confidence: expected a level in [0.5, 1), got {self.confidence}")
        if not 0.0 < self.share <= 1.0:
            raise MaskcryptError(f"adaptive share: expected a fraction in (0, 1], got {self.share}")

    def steps(self, population: int) -> np.ndarray:
        """Image counts a mask moves through: first, first x growth, ... and finally all ``population``."""
        levels = [min(self.first, population)]
        while levels[-1] < population:
            levels.append(min(population, max(levels[-1] + 1, int(np.ceil(levels[-1] * self.growth)))))
        return np.asarray(levels, np.int64)


def _range_tasks(todo: pd.DataFrame, bits: dict[str, bytes], actors: int) -> list[dict[str, np.ndarray]]:
    """Actor calls for one round: masks grouped by image range, cut so the pool stays busy and balanced."""
    tasks = []
    for (start, stop), g in todo.groupby(["start", "stop"], sort=True):
        # ~8k masked images a call, but at least two calls per actor when the group allows.
        per = max(1, min(int(np.ceil(8192 / (stop - start))), int(np.ceil(len(g) / (2 * actors)))))
        for i in range(0, len(g), per):
            part = g.iloc[i:i + per]
            tasks.append({"mask_id": part["mask_id"].to_numpy(), "bucket": part["bucket"].to_numpy(),
                          "bits": np.asarray([bits[m] for m in part["mask_id"]], dtype=object),
                          "start": np.full(len(part), start), "stop": np.full(len(part), stop)})
    return tasks


def evaluate_adaptive(
    library: Any,
    test: TestSet,
    models: dict[str, str | Path],
    buckets: Sequence[int],
    keep: int,
    plan: AdaptivePlan = AdaptivePlan(),
    settings: EvalSettings = EvalSettings(),
    log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Per-mask counts by an adaptive race: the top ``keep`` of each bucket at a fraction of the cost.

    The selection probes are revealed in one seeded random order; each mask has seen a
    prefix of it. Round 1 measures every mask of ``buckets`` on ``plan.first`` images;
    after each round :func:`maskcrypt.select.race_step` decides, from confidence bounds,
    which masks are eliminated, which buckets are settled (their top ``keep`` provably
    within ``plan.tolerance`` of the rest: they are then measured on every image) and
    which masks near the boundary see their next step of images (``plan.steps``). It
    ends when every bucket is settled. Winners end with counts on every selection image,
    as in full mode; other masks keep the counts of the images they saw (smaller ``n``).

    One pool of ``settings.actors`` Ray actors serves every round (rounds are small and
    many; starting a pool per round cost 10-15 s each). Returns the counts (one row per
    mask, ``split`` = selection, ``rounds`` = how many times it was measured) and one
    record per round: masks, masked images, forward passes, still open, seconds.
    """
    import ray
    from ray.util import ActorPool

    from maskcrypt.select import race_step

    if keep < 1:
        raise MaskcryptError(f"adaptive search: keep must be >= 1, got {keep}")
    _check_library(library, test)
    probes = np.flatnonzero(~test.gallery & (test.split == 0))
    if probes.size == 0:
        raise MaskcryptError("adaptive search: the selection split has no probe image")
    resolved = check_models(models, test)
    reveal = probes[np.random.default_rng([plan.seed, 0xADA]).permutation(probes.size)]
    table = library.table(buckets, columns=["mask_id", "bucket", "bits"])
    if table.num_rows == 0:
        raise MaskcryptError(f"mask library {library.uri}: no mask in buckets {list(buckets)}")
    ids = [str(m) for m in table.column("mask_id").to_pylist()]
    bits = dict(zip(ids, table.column("bits").to_pylist()))
    state = pd.DataFrame({"mask_id": ids, "bucket": table.column("bucket").to_numpy().astype(np.int64), "n": 0,
                          "rounds": 0, "eliminated": False})
    del table
    population = int(probes.size)
    steps = plan.steps(population)
    gallery = int(test.gallery.sum()) if test.scoring == "open" else 0
    _check_gpus(settings)
    scorer = ray.remote(CrossProductScorer).options(num_cpus=settings.cpus_per_actor,
                                                     num_gpus=settings.gpus_per_actor)
    constructor = _constructor(test.subset(reveal), resolved, ("selection",), settings, "masks")
    actors = [scorer.remote(**constructor) for _ in range(max(1, min(settings.actors, len(state))))]
    pool = ActorPool(actors)
    rounds: list[dict[str, Any]] = []
    todo = state.assign(start=0, stop=int(steps[0]))
    try:
        while len(todo):
            t0 = time.perf_counter()
            found = [pd.DataFrame(r) for r in pool.map_unordered(lambda a, t: a.score.remote(t),
                                                                   _range_tasks(todo, bits, len(actors)))]
            got = pd.concat(found, ignore_index=True).groupby("mask_id").sum(numeric_only=True)
            got = got.drop(columns=[c for c in ("bucket",) if c in got.columns])
            state = state.set_index("mask_id")
            for c in got.columns:
                if c not in state.columns:
                    state[c] = 0 if c.startswith("correct_") or c == "n" else 0.0
                state.loc[got.index, c] += got[c]
            state.loc[got.index, "rounds"] += 1
            state = state.reset_index()
            images = int((todo["stop"] - todo["start"]).sum())
            decided = race_step(state, keep, population, plan.confidence, plan.tolerance, plan.share)
            state["eliminated"] = decided["eliminated"].to_numpy()
            nxt = decided[decided["action"] != ""]
            if len(nxt):
                after = np.searchsorted(steps, nxt["n"].to_numpy(), side="right")
                stop = np.where(nxt["action"] == "complete", population, steps[np.minimum(after, len(steps) - 1)])
                nxt = nxt[["mask_id", "bucket"]].assign(start=nxt["n"].to_numpy(), stop=stop)
            rounds.append({"round": len(rounds) + 1, "masks": len(todo), "images": images,
                           "forward_passes": (images + len(todo) * gallery) * len(resolved),
                           "open": len(nxt), "settled_buckets": int(decided.groupby("bucket")["settled"].all()
                                                                          .sum()),
                           "seconds": round(time.perf_counter() - t0, 2)})
            if log and (len(rounds) % 5 == 1 or not len(nxt)):
                log(f"adaptive: round {len(rounds)}: {len(todo)} masks, {images:,} masked images; "
                    f"{len(nxt)} to measure next, {rounds[-1]['settled_buckets']} of "
                    f"{state['bucket'].nunique()} buckets settled")
            todo = nxt
    finally:
        for a in actors:
            ray.kill(a)
    out = state.drop(columns=["eliminated"]).assign(split="selection")
    return out.sort_values("mask_id").reset_index(drop=True), rounds
