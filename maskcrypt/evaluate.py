"""The images x masks cross product on Ray Data, without ever materializing it.

Rows of the Ray Data dataset are *masks* (read from the Parquet library, still
bit-packed), or, for Table 1's sampled mode, *(bucket, repetition)* tasks. Each actor
of an ``ActorPoolStrategy`` pool receives the test images once (through the object
store), loads the recognizers from their checkpoints, unpacks masks on its device,
builds ``images * mask`` chunk by chunk by broadcasting, and emits only small rows
of counts: per mask ``n``, ``correct_<model>`` and ``score_<model>`` (the sum over
images of the true class's probability). :mod:`maskcrypt.select` turns counts into
the method's tables.

Scoring here is closed set (the test classes are the training classes: the
classifier's top-1 against the label). Open-set scoring (enrolled galleries of
embeddings) is not built yet and is refused by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.errors import MaskcryptError


@dataclass(frozen=True)
class EvalSettings:
    """How the cross product runs: pool size, resources per actor, batch sizes, precision."""

    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    masks_per_batch: int = 8  # masks per Ray Data batch (one actor call)
    images_per_chunk: int = 256  # images per forward pass
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.actors < 1 or self.masks_per_batch < 1 or self.images_per_chunk < 1:
            raise MaskcryptError("evaluation: actors, masks_per_batch and images_per_chunk must be >= 1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise MaskcryptError(f"--precision: expected auto, bf16 or fp32, got {self.precision!r}")


class CrossProductScorer:
    """A Ray Data callable class: test images and recognizers resident, masks streaming through.

    ``mode="masks"``: each input row is a library mask (``mask_id``, ``bucket``, ``bits``);
    every test image is recognized under it. ``mode="sampled"``: each row is a
    ``(bucket, repeat, seed)`` task; every test image gets one mask drawn at random from
    the bucket (bucket 0: no mask). Both emit counts per row.
    """

    def __init__(self, images: Any, labels: Any, models: dict[str, str], height: int, width: int,
                 precision: str = "auto", images_per_chunk: int = 256, mode: str = "masks",
                 bucket_masks: Any = None, inpainter: str | None = None):
        import ray
        import torch

        from maskcrypt.models import Recognizer
        from maskcrypt.train import use_bf16

        # Object refs passed as constructor arguments arrive unresolved.
        images = ray.get(images) if isinstance(images, ray.ObjectRef) else images
        labels = ray.get(labels) if isinstance(labels, ray.ObjectRef) else labels
        if isinstance(bucket_masks, ray.ObjectRef):
            bucket_masks = ray.get(bucket_masks)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = use_bf16(precision, self.device.type)
        self.models = {name: Recognizer.from_checkpoint(path, self.device) for name, path in models.items()}
        if self.bf16:
            self.models = {k: m.to(memory_format=torch.channels_last) for k, m in self.models.items()}
        with warnings.catch_warnings():
            # Arrays from the object store are read-only and shared; we never write to them.
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.x = x.contiguous(memory_format=torch.channels_last) if self.bf16 else x
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.h, self.w = height, width
        self.chunk = images_per_chunk
        self.mode = mode
        self.bucket_masks = {int(b): torch.from_numpy(m).to(self.device) for b, m in (bucket_masks or {}).items()}
        self.inpainter = None
        if inpainter is not None:
            from maskcrypt.models import Inpainter

            self.inpainter = Inpainter.from_checkpoint(inpainter, self.device)

    def _attack(self, mask: Any) -> dict[str, int]:
        """Paired counts for one mask: E on masked vs E on inpainted images, and O on both."""
        import torch

        from maskcrypt.masks.core import overlay

        counts = {"both": 0, "before_only": 0, "after_only": 0, "neither": 0,
                  "correct_O_masked": 0, "correct_O_inpainted": 0}
        e, o = self.models["E"], self.models["O"]
        with torch.inference_mode():
            for s in range(0, self.x.shape[0], self.chunk):
                yb = self.y[s:s + self.chunk]
                masked = overlay(self.x[s:s + self.chunk], mask)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    filled = self.inpainter.inpaint(masked, mask[None].expand(len(yb), -1, -1))
                    if self.bf16:
                        filled = filled.contiguous(memory_format=torch.channels_last)
                    before = e(masked).argmax(1) == yb
                    after = e(filled).argmax(1) == yb
                    counts["correct_O_masked"] += int((o(masked).argmax(1) == yb).sum())
                    counts["correct_O_inpainted"] += int((o(filled).argmax(1) == yb).sum())
                counts["both"] += int((before & after).sum())
                counts["before_only"] += int((before & ~after).sum())
                counts["after_only"] += int((~before & after).sum())
                counts["neither"] += int((~before & ~after).sum())
        return counts

    def _score(self, masks_for: Callable[[int, int], Any]) -> dict[str, tuple[int, float]]:
        """Recognize every test image under ``masks_for(start, stop)`` (None = clean); count per model."""
        import torch

        from maskcrypt.masks.core import overlay

        out = {name: [0, 0.0] for name in self.models}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for s in range(0, self.x.shape[0], self.chunk):
                e = min(s + self.chunk, self.x.shape[0])
                m = masks_for(s, e)
                xb = self.x[s:e] if m is None else overlay(self.x[s:e], m)
                yb = self.y[s:e]
                for name, model in self.models.items():
                    logits = model(xb).float()
                    out[name][0] += int((logits.argmax(1) == yb).sum())
                    out[name][1] += float(torch.softmax(logits, 1).gather(1, yb[:, None]).sum())
        return {k: (v[0], v[1]) for k, v in out.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from maskcrypt.masks.core import unpack_masks

        rows: list[dict[str, Any]] = []
        if self.mode == "attack":
            masks = torch.from_numpy(unpack_masks(list(batch["bits"]), self.h, self.w)).to(self.device)
            for i in range(masks.shape[0]):
                rows.append({"mask_id": str(batch["mask_id"][i]), **self._attack(masks[i])})
        elif self.mode == "masks":
            masks = torch.from_numpy(unpack_masks(list(batch["bits"]), self.h, self.w)).to(self.device)
            for i in range(masks.shape[0]):
                counts = self._score(lambda s, e, m=masks[i]: m)
                rows.append({"mask_id": str(batch["mask_id"][i]), "bucket": int(batch["bucket"][i]), **_flat(counts)})
        else:
            for bucket, repeat, seed in zip(batch["bucket"], batch["repeat"], batch["seed"]):
                bucket = int(bucket)
                if bucket == 0:
                    counts = self._score(lambda s, e: None)
                else:
                    pool = self.bucket_masks[bucket]
                    pick = np.random.default_rng([int(seed), bucket, int(repeat)]).integers(0, len(pool), len(self.y))
                    pick_t = torch.from_numpy(pick).to(self.device)
                    counts = self._score(lambda s, e, p=pool, k=pick_t: p[k[s:e]])
                rows.append({"bucket": bucket, "repeat": int(repeat), **_flat(counts)})
        n = int(self.y.shape[0])
        return {k: np.asarray([r[k] for r in rows]) for k in rows[0]} | {"n": np.full(len(rows), n)}


def _flat(counts: dict[str, tuple[int, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (correct, score) in counts.items():
        out[f"correct_{name}"] = correct
        out[f"score_{name}"] = score
    return out


def _check_models(models: dict[str, str | Path], class_names: Sequence[str], size: tuple[int, int]) -> dict[str, str]:
    from maskcrypt.models.checkpoint import find_checkpoint

    resolved = {}
    for name, path in models.items():
        ckpt, meta = find_checkpoint(path, kind="recognizer")
        if list(meta.get("class_names", [])) != list(class_names):
            raise MaskcryptError(
                f"model {name} ({path}): trained on other classes than the test images have; closed-set "
                "scoring needs the training classes (open-set scoring is not built yet)"
            )
        if meta.get("image_size") not in (None, size[0]):
            raise MaskcryptError(f"model {name} ({path}): trained at {meta['image_size']} px, test images are "
                                 f"{size[0]}x{size[1]}")
        resolved[name] = str(ckpt)
    return resolved


def _pool(settings: EvalSettings, constructor: dict[str, Any]) -> dict[str, Any]:
    import ray.data

    return {
        "fn_constructor_kwargs": constructor,
        "compute": ray.data.ActorPoolStrategy(size=settings.actors),
        "num_cpus": settings.cpus_per_actor,
        "num_gpus": settings.gpus_per_actor,
        "batch_format": "numpy",
    }


def evaluate_masks(
    library: Any,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    models: dict[str, str | Path],
    buckets: Sequence[int] | None = None,
    settings: EvalSettings = EvalSettings(),
) -> pd.DataFrame:
    """Per-mask counts: every mask of ``buckets`` x every test image, through an actor pool.

    Returns one row per mask: ``mask_id``, ``bucket``, ``n``, ``correct_<model>``,
    ``score_<model>``, sorted by mask id.
    """
    import ray

    size = (images.shape[2], images.shape[3])
    if (library.height, library.width) != size:
        raise MaskcryptError(
            f"mask library {library.uri}: masks are {library.height}x{library.width}, test images "
            f"{size[0]}x{size[1]} (rebuild the library with --size {size[0]})"
        )
    if len(labels) == 0:
        raise MaskcryptError("evaluation: the test set is empty")
    resolved = _check_models(models, class_names, size)
    ds = library.to_ray_dataset(buckets).select_columns(["mask_id", "bucket", "bits"])
    constructor = {"images": ray.put(images), "labels": ray.put(labels), "models": resolved,
                   "height": size[0], "width": size[1], "precision": settings.precision,
                   "images_per_chunk": settings.images_per_chunk, "mode": "masks"}
    out = ds.map_batches(CrossProductScorer, batch_size=settings.masks_per_batch, **_pool(settings, constructor))
    df = out.to_pandas()
    return df.sort_values("mask_id").reset_index(drop=True)


def evaluate_attack(
    library: Any,
    mask_ids: Sequence[str],
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    models: dict[str, str | Path],
    inpainter: str | Path,
    settings: EvalSettings = EvalSettings(),
) -> pd.DataFrame:
    """The inpainting attack on ``mask_ids``: R fills each masked test image, E and O recognize it.

    ``models`` must name ``E`` and ``O``. One row per mask with ``n`` and E's paired
    counts before/after inpainting (``both``, ``before_only``, ``after_only``,
    ``neither``) plus ``correct_O_masked`` and ``correct_O_inpainted``: does inpainting
    hand an ordinary model back what the mask hid?
    """
    import ray
    import ray.data

    from maskcrypt.models.checkpoint import find_checkpoint

    if set(models) != {"E", "O"}:
        raise MaskcryptError(f"attack: needs the models E and O, got {sorted(models)}")
    size = (images.shape[2], images.shape[3])
    resolved = _check_models(models, class_names, size)
    ckpt, _ = find_checkpoint(inpainter, kind="inpainter")
    if not mask_ids:
        raise MaskcryptError("attack: no mask to attack")
    batch = library.get(list(mask_ids))
    rows = [{"mask_id": m, "bits": b} for m, b in zip(batch.mask_ids, _packed(batch.masks))]
    constructor = {"images": ray.put(images), "labels": ray.put(labels), "models": resolved,
                   "height": size[0], "width": size[1], "precision": settings.precision,
                   "images_per_chunk": settings.images_per_chunk, "mode": "attack", "inpainter": str(ckpt)}
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * settings.actors))
    out = ds.map_batches(CrossProductScorer, batch_size=1, **_pool(settings, constructor))
    return out.to_pandas().sort_values("mask_id").reset_index(drop=True)


def _packed(masks: np.ndarray) -> list[bytes]:
    from maskcrypt.masks.core import pack_masks

    return pack_masks(masks)


def evaluate_sampled(
    library: Any,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    models: dict[str, str | Path],
    repeats: int = 5,
    seed: int = 0,
    buckets: Sequence[int] | None = None,
    settings: EvalSettings = EvalSettings(),
) -> pd.DataFrame:
    """Table 1's sampled mode: per repetition, each test image gets one random mask of the bucket.

    Returns one row per (bucket, repeat), bucket 0 being the "no mask" row, with ``n``
    and the counts per model. A bucket with no mask in the library is an error.
    """
    import ray
    import ray.data

    if repeats < 1:
        raise MaskcryptError(f"--repeats: expected at least 1, got {repeats}")
    size = (images.shape[2], images.shape[3])
    if (library.height, library.width) != size:
        raise MaskcryptError(
            f"mask library {library.uri}: masks are {library.height}x{library.width}, test images "
            f"{size[0]}x{size[1]} (rebuild the library with --size {size[0]})"
        )
    resolved = _check_models(models, class_names, size)
    wanted = list(buckets) if buckets is not None else list(range(1, len(library.edges)))
    per_bucket = {}
    for b in wanted:
        masks = library.load([b]).masks
        if len(masks) == 0:
            raise MaskcryptError(f"mask library {library.uri}: bucket {b} holds no mask (empty bucket)")
        per_bucket[b] = masks
    tasks = [{"bucket": b, "repeat": r, "seed": seed} for b in [0, *wanted] for r in range(repeats)]
    constructor = {"images": ray.put(images), "labels": ray.put(labels), "models": resolved,
                   "height": size[0], "width": size[1], "precision": settings.precision,
                   "images_per_chunk": settings.images_per_chunk, "mode": "sampled",
                   "bucket_masks": ray.put(per_bucket)}
    ds = ray.data.from_items(tasks, override_num_blocks=min(len(tasks), 4 * settings.actors))
    out = ds.map_batches(CrossProductScorer, batch_size=1, **_pool(settings, constructor))
    return out.to_pandas().sort_values(["bucket", "repeat"]).reset_index(drop=True)

