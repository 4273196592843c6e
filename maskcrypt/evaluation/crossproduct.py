"""The images x masks cross product on Ray Data, without ever materializing it: the driver side.

Rows of the Ray Data dataset are *masks* (read from the Parquet library, still
bit-packed), or, for Table 1's sampled mode, *(bucket, repetition)* tasks. They stream
through an ``ActorPoolStrategy`` pool of :class:`~maskcrypt.evaluation.scorer.CrossProductScorer`
actors, each holding the test images and the models, and come back as small rows of
counts per mask and split. :mod:`maskcrypt.selection.rules` turns counts into tables; the
adaptive race (many small rounds on one pool of plain actors) is
:mod:`maskcrypt.determine.race`.

* :func:`evaluate_masks` - every mask of some buckets x every probe (per-mask third
  accuracy; Table 1's full mode), written in resumable Parquet parts;
* :func:`evaluate_sampled` - Table 1's sampled mode;
* :func:`evaluate_attack` - the inpainting attack's paired counts, and every attacker's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import EvalSettings
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import write_parquet
from maskcrypt.evaluation.scorer import CrossProductScorer, sampled_draw
from maskcrypt.evaluation.testset import LADDER, SPLITS, ImageBlocks, TestSet
from maskcrypt.masks.core import pack_masks
from maskcrypt.models.checkpoint import find_checkpoint
from maskcrypt.runtime.cluster import check_gpus as check
from maskcrypt.runtime.cluster import require_ray, wait_for_free_cpu


def check_models(models: dict[str, str | Path], test: TestSet) -> dict[str, str]:
    """Resolve each model to its newest complete checkpoint and check it fits the test images."""
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


def check_library(library: Any, test: TestSet) -> None:
    if (library.height, library.width) != test.size:
        raise MaskcryptError(
            f"mask library {library.uri}: masks are {library.height}x{library.width}, test images "
            f"{test.size[0]}x{test.size[1]} (rebuild the library with --size {test.size[0]})"
        )


def check_splits(test: TestSet, splits: Sequence[str]) -> None:
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise MaskcryptError(f"evaluation splits: expected some of {SPLITS}, got {list(splits)}")
    for s in splits:
        if test.probes(s) == 0:
            raise MaskcryptError(f"evaluation: the {s} split has no probe image (test set too small for "
                                 "the confirmation fraction or gallery size)")


def check_gpus(settings: EvalSettings) -> None:
    """Refuse GPU actors on a cluster without GPUs (Ray would wait for them forever)."""
    check("--eval-gpus", settings.gpus_per_actor)


def _pool(settings: EvalSettings, constructor: dict[str, Any], rows: int | None = None) -> dict[str, Any]:
    """map_batches arguments for the actor pool; no more actors than input rows (idle actors cost a start)."""
    import ray.data

    require_ray("evaluation")
    size = settings.actors if rows is None else max(1, min(settings.actors, rows))
    check_gpus(settings)
    wait_for_free_cpu()
    return {
        "fn_constructor_kwargs": constructor,
        "compute": ray.data.ActorPoolStrategy(size=size),
        "num_cpus": settings.cpus_per_actor,
        "num_gpus": settings.gpus_per_actor,
        "batch_format": "numpy",
    }


def scorer_kwargs(test: TestSet, resolved: dict[str, str], splits: Sequence[str], settings: EvalSettings,
                 mode: str, **extra: Any) -> dict[str, Any]:
    """The scorer actors' constructor arguments; the test set travels once, through the object store."""
    import ray

    require_ray("evaluation")

    # A test set held in the object store (ImageBlocks) is small: passed by value, its blocks stay references.
    # An in-memory one travels once through the store. (Ray warns about restartable actors whose constructor
    # arguments live in the object store: the first case avoids it where it matters, in the determination.)
    held = isinstance(test.images, ImageBlocks)
    return {"test": test if held else ray.put(test), "models": resolved, "splits": tuple(splits),
            "precision": settings.precision, "images_per_chunk": settings.images_per_chunk, "mode": mode,
            "gpus": settings.gpus_per_actor, **extra}


def _write_part(df: pd.DataFrame, parts: Path) -> None:
    """One Parquet part via a temporary name: a part that exists is complete."""
    write_parquet(df, parts / f"part-{uuid.uuid4().hex}.parquet")


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
    mask_ids: Collection[str] | None = None,
) -> pd.DataFrame:
    """Per-mask counts: every mask of ``buckets`` (or only ``mask_ids``) x every probe of ``splits``, via actors.

    Returns one row per (mask, split): ``mask_id``, ``bucket``, ``split``, ``n``,
    ``correct_<model>``, ``score_<model>`` (and ``hits_<model>`` with per-image
    settings), sorted by mask id. With ``parts`` (a directory), results are written
    there as Parquet parts while they arrive and masks already there are not evaluated
    again: a relaunch after an interruption continues where it stopped. The caller
    makes sure the parts were computed with the same inputs (see ``determine``).
    """
    check_library(library, test)
    check_splits(test, splits)
    resolved = check_models(models, test)
    done = read_parts(parts) if parts is not None else pd.DataFrame()
    if len(done) and not set(splits) <= set(done["split"]):
        raise MaskcryptError(f"per-mask parts in {parts}: computed for splits {sorted(set(done['split']))}, "
                             f"asked for {list(splits)}")
    done_ids = set(done["mask_id"]) if len(done) else set()
    wanted = set(library.table(buckets, columns=["mask_id"]).column("mask_id").to_pylist())
    left_out = wanted - set(mask_ids) if mask_ids is not None else set()
    wanted -= left_out
    todo = len(wanted - done_ids)
    if log and done_ids:
        log(f"per-mask: {len(done_ids & wanted)} masks already evaluated in {parts}, {todo} to go")
    results = [done] if len(done) else []
    if todo != 0:
        ds = library.to_ray_dataset(buckets, exclude=done_ids | left_out,
                                    rows_per_block=settings.masks_per_block).select_columns(
            ["mask_id", "bucket", "bits"])
        constructor = scorer_kwargs(test, resolved, splits, settings, "masks", per_image=settings.per_image,
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
    if mask_ids is not None:
        df = df[df["mask_id"].isin(wanted)]
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
    attackers: Sequence[str] = (),
    trained: dict[str, str | Path] | None = None,
    log: Callable[[str], None] | None = None,
    fidelity: bool = True,
) -> pd.DataFrame:
    """The inpainting attack on ``mask_ids``: R fills each masked probe, E and O recognize it; and the attackers.

    ``models`` must name ``E`` and ``O``. One row per (mask, split) with ``n`` and E's
    paired counts before/after inpainting (``both``, ``before_only``, ``after_only``,
    ``neither``) plus ``correct_O_masked`` and ``correct_O_inpainted``: does inpainting
    hand an ordinary model back what the mask hid? ``attackers`` (names of
    :data:`maskcrypt.config.ATTACKERS`) add one ``atk:<name>`` count per attacker;
    ``trained`` names the adaptive attackers' model folders (``family``, a mask id per
    known-mask attacker, ``ladder:<photos>`` per rung of the attacker ladder: each counted
    on the masked probes as a column of that name), see :mod:`maskcrypt.determine.attackers`.
    With ``fidelity`` every fill is also measured (``fid:<fill>:<figure>`` sums). The first split's row of each
    mask carries its ``forward_passes``, ``fills_R`` and ``fills_classical``.
    """
    import ray.data

    if set(models) != {"E", "O"}:
        raise MaskcryptError(f"attack: needs the models E and O, got {sorted(models)}")
    check_library(library, test)
    check_splits(test, splits)
    trained = dict(trained or {})
    if "family" in trained:
        models = {**models, "F": trained.pop("family")}
    # Ladder rungs (``ladder:<photos>``): more recognizers on the same masked probes, counted as such columns.
    models = {**models, **{k: trained.pop(k) for k in list(trained) if k.startswith(LADDER)}}
    if {"adaptive-family", "adaptive-family+R"} & set(attackers) and "F" not in models:
        raise MaskcryptError("attack: adaptive-family needs its trained model (trained['family'])")
    resolved = check_models(models, test)
    known = check_models(trained, test) if "adaptive-known" in attackers else {}
    ckpt, _ = find_checkpoint(inpainter, kind="inpainter")
    if not mask_ids:
        raise MaskcryptError("attack: no mask to attack")
    missing = [m for m in mask_ids if "adaptive-known" in attackers and m not in known]
    if missing:
        raise MaskcryptError(f"attack: adaptive-known has no trained model for mask(s) {missing[:5]}")
    batch = library.get(list(mask_ids))
    rows = [{"mask_id": m, "bits": b} for m, b in zip(batch.mask_ids, pack_masks(batch.masks))]
    constructor = scorer_kwargs(test, resolved, splits, settings, "attack", inpainter=str(ckpt),
                                attackers=tuple(attackers), known=known, fidelity=fidelity)
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * settings.actors))
    out = ds.map_batches(CrossProductScorer, batch_size=1, **_pool(settings, constructor, len(rows)))
    return collect(out, "attack", "masks", len(rows), log, "mask_id").sort_values(["mask_id", "split"]).reset_index(
        drop=True)


def collect(out: Any, stage: str, unit: str, total: int, log: Callable[[str], None] | None, key: str) -> pd.DataFrame:
    """A Ray Data result's rows, read as they come; with ``log``, a line every 30 s and at the end: done of total."""
    parts, t0, last = [], time.perf_counter(), 0.0
    seen: set[Any] = set()
    for block in out.iter_batches(batch_size=None, batch_format="pandas"):
        parts.append(block)
        seen.update(block[key].tolist() if key != "task" else zip(block["bucket"], block["repeat"]))
        now = time.perf_counter() - t0
        if log and (now - last >= 30 or len(seen) >= total):
            last = now
            log(f"{stage}: {len(seen)}/{total} {unit} in {now:.0f}s")
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _drawn_masks(library: Any, bucket: int, repeats: int, seed: int, n_input: int) -> dict[str, Any]:
    """The bucket's masks that some image draws in some repetition, packed, with their library indices.

    What the actors need for Table 1's sampled mode: at most ``repeats x n_input`` masks
    per bucket whatever the library's size, 1/8 of a byte per pixel (not the whole bucket
    unpacked: 1.25 GB for 100,000 masks at 112 px, in the driver, the object store and
    every actor).
    """
    import pyarrow as pa

    bits = library.table([bucket], columns=["bits"]).column("bits")
    if len(bits) == 0:
        raise MaskcryptError(f"mask library {library.uri}: bucket {bucket} holds no mask (empty bucket)")
    index = np.unique(np.concatenate([sampled_draw(seed, bucket, r, len(bits), n_input) for r in range(repeats)]))
    packed = np.frombuffer(b"".join(bits.take(pa.array(index)).to_pylist()), np.uint8).reshape(len(index), -1)
    return {"size": len(bits), "index": index, "packed": packed}


def evaluate_sampled(
    library: Any,
    test: TestSet,
    models: dict[str, str | Path],
    repeats: int = 5,
    seed: int = 0,
    buckets: Sequence[int] | None = None,
    splits: Sequence[str] = ("selection",),
    settings: EvalSettings = EvalSettings(),
    inpainter: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Table 1's sampled mode: per repetition, each test image gets one random mask of the bucket.

    Returns one row per (bucket, repeat, split), bucket 0 being the "no mask" row,
    with ``n`` and the counts per model. A bucket with no mask in the library is an error.
    With ``inpainter`` (R's folder: the training report), the masked buckets' rows also
    carry ``psnr_sum_R`` and ``psnr_sum_mean_fill``, sums of the hole PSNR over the probes.
    """
    import ray
    import ray.data

    if repeats < 1:
        raise MaskcryptError(f"--repeats: expected at least 1, got {repeats}")
    check_library(library, test)
    check_splits(test, splits)
    resolved = check_models(models, test)
    wanted = list(buckets) if buckets is not None else list(range(1, len(library.edges)))
    per_bucket = {b: _drawn_masks(library, b, repeats, seed, test.n_input) for b in wanted}
    # The clean row (bucket 0) draws no mask: every repetition would give the same counts, so it runs once and
    # its row stands for each repetition.
    tasks = [{"bucket": 0, "repeat": 0, "seed": seed}] + [{"bucket": b, "repeat": r, "seed": seed} for b in wanted
                                                           for r in range(repeats)]
    extra: dict[str, Any] = {}
    if inpainter is not None:

        extra["inpainter"] = str(find_checkpoint(inpainter, kind="inpainter")[0])
    constructor = scorer_kwargs(test, resolved, splits, settings, "sampled", bucket_masks=ray.put(per_bucket),
                                **extra)
    ds = ray.data.from_items(tasks, override_num_blocks=min(len(tasks), 4 * settings.actors))
    out = ds.map_batches(CrossProductScorer, batch_size=1, **_pool(settings, constructor, len(tasks)))
    counts = collect(out, "training report" if inpainter is not None else "table1", "bucket repetitions", len(tasks),
                     log, "task")
    clean = counts[counts["bucket"] == 0]
    counts = pd.concat([counts, *[clean.assign(repeat=r) for r in range(1, repeats)]], ignore_index=True)
    return counts.sort_values(["bucket", "repeat", "split"]).reset_index(drop=True)

