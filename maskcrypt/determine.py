"""Mask determination, end to end on a trained run (METHOD.md, "Mask determination").

Stages, each writing its table under ``RUN/results/`` as it completes:

1. **Table 1** (``table1.parquet``): sampled mode, every test image gets one random
   mask of each bucket per repetition (default 5); first (E) and second (O) accuracy.
2. **Target buckets**: first - second > t_gap.
3. **Per-mask third accuracy** (``per_mask.parquet``) for every mask of the target
   buckets (``per_mask="all"``: every bucket), then **candidates**
   (``candidates.parquet``): the top k per target bucket.
4. **Inpainting attack** (``table2.parquet``) on the top ``attack_top`` masks per target
   bucket: fourth/fifth accuracy, the drop with its paired interval, and O's accuracy on
   the inpainted images.
5. **Target masks** (``targets.json`` with every figure and interval, or the rule that
   emptied the set; ``targets.parquet`` with the chosen masks in library format).

The counting runs on Ray Data (:mod:`maskcrypt.evaluate`); every decision is a pure
function of the tables (:mod:`maskcrypt.select`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskcrypt.errors import MaskcryptError
from maskcrypt.evaluate import EvalSettings, evaluate_attack, evaluate_masks, evaluate_sampled
from maskcrypt.select import (
    Empty,
    Thresholds,
    attack_list,
    candidates,
    per_mask_table,
    table1,
    table2,
    target_buckets,
    target_masks,
)


def _write_table(df: pd.DataFrame, path: Path) -> Path:
    """Parquet via a temporary name, so a table that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def _figures(row: pd.Series) -> dict[str, Any]:
    keys = ["fourth", "fourth_lo", "fourth_hi", "fifth", "fifth_lo", "fifth_hi", "drop", "drop_lo", "drop_hi",
            "drop_uncertain", "third", "third_lo", "third_hi", "acc_O", "O_masked", "O_inpainted", "rank", "n"]
    return {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys if k in row.index}


def determine(
    run: str | os.PathLike[str],
    test_data: str,
    size: int,
    thresholds: Thresholds = Thresholds(),
    repeats: int = 5,
    seed: int = 0,
    per_mask: str = "targets",
    settings: EvalSettings = EvalSettings(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the determination on a run with trained models; return what ``targets.json`` holds."""
    import ray

    from maskcrypt.config import check_same_training
    from maskcrypt.data import load
    from maskcrypt.masks import MaskLibrary, bucket_label
    from maskcrypt.models.checkpoint import find_checkpoint
    from maskcrypt.run import RunPaths, write_json_atomic

    if per_mask not in ("targets", "all"):
        raise MaskcryptError(f"--per-mask: expected targets or all, got {per_mask!r}")
    paths = RunPaths.resolve(run)
    models = {"E": paths.models / "encrypted", "O": paths.models / "original"}
    metas = {k: find_checkpoint(p, kind="recognizer")[1] for k, p in models.items()}
    check_same_training(metas["O"], metas["E"])
    inpainter = paths.models / "inpainter"
    find_checkpoint(inpainter, kind="inpainter")
    if not ray.is_initialized():
        ray.init()
    test = load(test_data, default_split="test", size=size)
    lib = MaskLibrary.open(str(paths.masks))
    labels = {0: "no mask", **{b: bucket_label(b, lib.edges) for b in range(1, len(lib.edges))}}
    present = sorted({int(b) for b in lib.column("bucket")} - {-1})
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    counts1 = evaluate_sampled(lib, test.images, test.labels, test.class_names, models, repeats=repeats, seed=seed,
                               buckets=present, settings=settings)
    t1 = table1(counts1, thresholds, labels)
    _write_table(t1, paths.results / "table1.parquet")
    timings["table1"] = time.perf_counter() - t0
    log(f"table1: {len(present)} buckets x {repeats} repetitions x {len(test)} images in {timings['table1']:.1f}s")

    buckets, why = target_buckets(t1, thresholds)
    result: dict[str, Any] = {"thresholds": thresholds.to_dict(), "test_data": test.spec, "test_images": len(test),
                              "target_buckets": buckets, "targets": [], "reason": None}
    t2 = pd.DataFrame()
    if buckets:
        t0 = time.perf_counter()
        measured = present if per_mask == "all" else buckets
        counts = evaluate_masks(lib, test.images, test.labels, test.class_names, models, buckets=measured,
                                settings=settings)
        pm = per_mask_table(counts, thresholds)
        _write_table(pm, paths.results / "per_mask.parquet")
        cands = candidates(pm, buckets, thresholds)
        _write_table(cands, paths.results / "candidates.parquet")
        timings["per_mask"] = time.perf_counter() - t0
        log(f"per-mask: {len(pm)} masks x {len(test)} images in {timings['per_mask']:.1f}s; "
            f"{len(cands)} candidates")

        t0 = time.perf_counter()
        alist = attack_list(pm, buckets, thresholds)
        attack = evaluate_attack(lib, alist["mask_id"].tolist(), test.images, test.labels, test.class_names,
                                 models, inpainter, settings=settings)
        t2 = table2(attack.merge(alist[["mask_id", "third", "acc_O"]], on="mask_id"), alist, thresholds)
        _write_table(t2, paths.results / "table2.parquet")
        timings["attack"] = time.perf_counter() - t0
        log(f"attack: {len(alist)} masks x {len(test)} images inpainted in {timings['attack']:.1f}s")
        chosen, why = target_masks(t2, thresholds)
    else:
        chosen = pd.DataFrame(columns=["mask_id"])
    if why is not None:
        result["reason"] = why.to_dict() if isinstance(why, Empty) else str(why)
        log(f"no target mask: {why.message}")
    ids = chosen["mask_id"].tolist()
    if ids:
        rows = lib.table()
        where = {m: i for i, m in enumerate(rows.column("mask_id").to_pylist())}
        keep = rows.take(pa.array([where[m] for m in ids], pa.int64()))  # best first, library format
        tmp = paths.root / ".targets.parquet.tmp"
        pq.write_table(keep, tmp)
        os.replace(tmp, paths.root / "targets.parquet")
        sha = dict(zip(keep.column("mask_id").to_pylist(), keep.column("sha256").to_pylist()))
        result["targets"] = [{"mask_id": r["mask_id"], "bucket": int(r["bucket"]), "range": labels[int(r["bucket"])],
                              "sha256": sha[r["mask_id"]], **_figures(r)} for _, r in chosen.iterrows()]
    else:
        (paths.root / "targets.parquet").unlink(missing_ok=True)
    result["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    write_json_atomic(paths.root / "targets.json", result)
    record = json.loads(paths.run_json.read_text()) if paths.run_json.exists() else {}
    record.setdefault("stages", {})["determine"] = {
        "thresholds": thresholds.to_dict(), "repeats": repeats, "seed": seed, "per_mask": per_mask,
        "test_data": test.spec, "test_data_sha256": test.content_hash(), "target_buckets": buckets,
        "targets": ids, "seconds": result["seconds"]}
    write_json_atomic(paths.run_json, record)
    return result


def format_table1(t1: pd.DataFrame) -> str:
    lines = [f"{'bucket':>12} {'first (E)':>16} {'second (O)':>16} {'gap':>7}  target"]
    for r in t1.itertuples():
        lines.append(f"{r.range:>12} {r.first:8.2%} ±{r.first_std:5.2%} {r.second:8.2%} ±{r.second_std:5.2%} "
                     f"{r.gap:7.2%}  {'yes' if r.target else ''}")
    return "\n".join(lines)
