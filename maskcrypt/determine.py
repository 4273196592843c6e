"""Mask determination, end to end on a trained run (METHOD.md, "Mask determination").

The test images are split first: a *selection* part that every rule sees and a
*confirmation* part, held out, on which the attacked masks are measured again
(selection bias shows as the difference). Then, each stage writing its table under
``RUN/results/`` as it completes:

1. **Table 1** (``table1.parquet``): ``sampled`` mode, every test image gets one random
   mask of each bucket per repetition (default 5); ``full`` mode, every mask x every
   image; first (E) and second (O) accuracy.
2. **Target buckets**: first - second > t_gap.
3. **Per-mask third accuracy** (``per_mask.parquet``) for every mask of the target
   buckets (``per_mask="all"``: every bucket), then **candidates**
   (``candidates.parquet``): the top k per target bucket.
   Results arrive in parts (``per_mask.parts/``), so an interrupted run continues.
4. **Inpainting attack** (``table2.parquet``, ``table2_confirmation.parquet``) on the top
   ``attack_top`` masks per target bucket: fourth/fifth accuracy, the drop with its
   paired interval, and O's accuracy on the masked and the inpainted images.
5. **Target masks** (``targets.json`` with every figure and interval on both splits, or
   the rule that emptied the set; ``targets.parquet`` with the chosen masks in library
   format), then ``report.md`` with its pictures.

The counting runs on Ray Data (:mod:`maskcrypt.evaluate`); every decision is a pure
function of the tables (:mod:`maskcrypt.select`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskcrypt.errors import MaskcryptError
from maskcrypt.evaluate import (
    AdaptivePlan,
    EvalSettings,
    evaluate_adaptive,
    evaluate_attack,
    evaluate_masks,
    evaluate_sampled,
    prepare_test,
    read_parts,
)
from maskcrypt.select import (
    Empty,
    Thresholds,
    attack_list,
    candidates,
    full_table1_counts,
    per_mask_table,
    table1,
    table2,
    target_buckets,
    target_masks,
)

#: ``rank_mode="auto"`` races masks adaptively above this many masked images per model.
ADAPTIVE_ABOVE = 1_000_000


def _write_table(df: pd.DataFrame, path: Path) -> Path:
    """Parquet via a temporary name, so a table that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def _figures(row: pd.Series) -> dict[str, Any]:
    keys = ["fourth", "fourth_lo", "fourth_hi", "fifth", "fifth_lo", "fifth_hi", "drop", "drop_lo", "drop_hi",
            "drop_uncertain", "third", "acc_O", "O_masked", "O_inpainted", "rank", "n"]
    return {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys if k in row.index}


def _library_sha(lib: Any) -> str:
    """Identity of a library's content: its masks' hashes and bucket edges, order-free."""
    h = hashlib.sha256(json.dumps(list(lib.edges)).encode())
    for digest in sorted(lib.column("sha256")):
        h.update(digest.encode())
    return h.hexdigest()


def _check_parts_key(parts: Path, key: dict[str, Any], redo: bool) -> None:
    """Per-mask parts are reused only when computed from the same inputs; else refuse or discard."""
    key_file = parts / "_key.json"
    if parts.exists() and not key_file.exists():
        shutil.rmtree(parts)  # written before its key: nothing in it can be trusted
    if key_file.exists():
        before = json.loads(key_file.read_text())
        diff = sorted(k for k in set(before) | set(key) if before.get(k) != key.get(k))
        if diff and not redo:
            raise MaskcryptError(
                f"per-mask results in {parts} were computed with other inputs or settings (differ: "
                f"{', '.join(diff)}); pass --redetermine to discard them and start the determination over"
            )
        if diff or redo:
            shutil.rmtree(parts)
    if not key_file.exists():
        from maskcrypt.run import write_json_atomic

        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(key_file, key)


def bare_forward_rate(checkpoints: list[Path], images: Any, chunk: int, precision: str, threads: int,
                      seconds: float = 3.0) -> float:
    """Images per second of the models' forward on a pre-built batch, alternating models.

    The baseline the evaluator is compared with: same checkpoints, chunk, precision and
    threads per actor, no masking, no Ray. One warm-up pass first.
    """
    import torch

    from maskcrypt.models import Recognizer
    from maskcrypt.train import use_bf16

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        bf16 = use_bf16(precision, "cpu")
        models = [Recognizer.from_checkpoint(c) for c in checkpoints]
        x = torch.from_numpy(np.ascontiguousarray(images[:chunk]))
        if bf16:
            models = [m.to(memory_format=torch.channels_last) for m in models]
            x = x.contiguous(memory_format=torch.channels_last)
        done, t0 = 0, None
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for m in models:
                m(x)  # warm-up
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for m in models:
                    m(x).float()
                    done += len(x)
        return done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def determine(
    run: str | os.PathLike[str],
    test_data: str,
    size: int,
    thresholds: Thresholds = Thresholds(),
    repeats: int = 5,
    seed: int = 0,
    per_mask: str = "targets",
    table1_mode: str = "sampled",
    rank_mode: str = "auto",
    adaptive: AdaptivePlan = AdaptivePlan(),
    scoring: str = "auto",
    confirm_fraction: float = 0.5,
    enroll: int = 2,
    settings: EvalSettings = EvalSettings(),
    redo: bool = False,
    report: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the determination on a run with trained models; return what ``targets.json`` holds.

    The test images are split into a *selection* part, which every rule sees, and a
    *confirmation* part (``confirm_fraction`` of each identity's images), on which the
    attacked masks are measured again so that selection bias shows. Per-mask results
    are kept in parts (``results/per_mask.parts/``): a relaunch continues them, and
    refuses parts computed from other inputs unless ``redo``. ``rank_mode``: ``full``
    measures every mask on every selection image; ``adaptive`` races them on confidence
    bounds (:func:`maskcrypt.evaluate.evaluate_adaptive`), keeping ``attack_top`` per
    bucket; ``auto`` picks adaptive above ``ADAPTIVE_ABOVE`` masked images per model.
    """
    import ray

    from maskcrypt.config import check_same_training
    from maskcrypt.data import load
    from maskcrypt.masks import MaskLibrary, bucket_label
    from maskcrypt.models.checkpoint import find_checkpoint
    from maskcrypt.run import RunPaths, write_json_atomic

    if per_mask not in ("targets", "all"):
        raise MaskcryptError(f"--per-mask: expected targets or all, got {per_mask!r}")
    if table1_mode not in ("sampled", "full"):
        raise MaskcryptError(f"--table1-mode: expected sampled or full, got {table1_mode!r}")
    if rank_mode not in ("auto", "full", "adaptive"):
        raise MaskcryptError(f"--rank-mode: expected auto, full or adaptive, got {rank_mode!r}")
    paths = RunPaths.resolve(run)
    models = {"E": paths.models / "encrypted", "O": paths.models / "original"}
    found = {k: find_checkpoint(p, kind="recognizer") for k, p in models.items()}
    metas = {k: meta for k, (_, meta) in found.items()}
    check_same_training(metas["O"], metas["E"])
    inpainter = paths.models / "inpainter"
    _, r_meta = find_checkpoint(inpainter, kind="inpainter")
    if not ray.is_initialized():
        ray.init()
    started = time.perf_counter()
    raw = load(test_data, default_split="test", size=size)
    if raw.images.shape[1] != metas["E"].get("channels", raw.images.shape[1]):
        raw = load(test_data, default_split="test", size=size, channels=metas["E"]["channels"])
    test = prepare_test(raw.images, raw.labels, raw.class_names, metas["E"]["class_names"], scoring=scoring,
                        confirm_fraction=confirm_fraction, enroll=enroll, seed=seed,
                        trained_classes=metas["E"].get("trained_classes"))
    splits = ["selection", "confirmation"] if confirm_fraction > 0 else ["selection"]
    n_sel = test.probes("selection")
    log(f"test data {raw.spec}: {len(raw)} images, {len(test.classes)} identities, {test.scoring}-set scoring"
        + (f" (gallery {int(test.gallery.sum())} images, {enroll} per identity)" if test.scoring == "open" else "")
        + f"; selection {n_sel} / confirmation {test.probes('confirmation')} probe images"
        + (f"; dropped identities with too few images: {test.dropped}" if test.dropped else ""))
    lib = MaskLibrary.open(str(paths.masks))
    labels = {0: "no mask", **{b: bucket_label(b, lib.edges) for b in range(1, len(lib.edges))}}
    present = sorted({int(b) for b in lib.column("bucket")} - {-1})
    if not present:
        raise MaskcryptError(f"mask library {lib.uri}: no mask in any bucket (empty library)")
    timings: dict[str, float] = {}
    key = {"test_data": raw.spec, "test_data_sha256": raw.content_hash(), "size": size, "scoring": test.scoring,
           "confirm_fraction": confirm_fraction, "enroll": enroll, "seed": seed, "precision": settings.precision,
           "library_sha256": _library_sha(lib), "per_image": settings.per_image,
           **{f"model_{k}_sha256": m.get("model_sha256") for k, m in metas.items()}}
    parts = paths.results / "per_mask.parts"
    _check_parts_key(parts, key, redo)

    # -- Table 1 ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    pm_counts = None
    if table1_mode == "sampled":
        counts1 = evaluate_sampled(lib, test, models, repeats=repeats, seed=seed, buckets=present,
                                   settings=settings)
        what = f"{len(present)} buckets x {repeats} repetitions x {n_sel} images"
    else:
        clean = evaluate_sampled(lib, test, models, repeats=1, seed=seed, buckets=[], settings=settings)
        pm_counts = evaluate_masks(lib, test, models, buckets=present, settings=settings, parts=parts, log=log)
        counts1 = full_table1_counts(clean, pm_counts)
        what = f"every mask of {len(present)} buckets ({len(pm_counts)} masks) x {n_sel} images"
    t1 = table1(counts1, thresholds, labels)
    t1.insert(2, "mode", table1_mode)
    _write_table(t1, paths.results / "table1.parquet")
    timings["table1"] = time.perf_counter() - t0
    log(f"table1: {what} in {timings['table1']:.1f}s")

    buckets, why = target_buckets(t1, thresholds)
    log(f"target buckets (first - second > {thresholds.t_gap:.2f}): "
        + (", ".join(labels[b] for b in buckets) if buckets else "none"))
    result: dict[str, Any] = {"thresholds": thresholds.to_dict(), "test_data": raw.spec, "test_images": len(raw),
                              "scoring": test.scoring, "splits": {s: test.probes(s) for s in splits},
                              "table1_mode": table1_mode, "target_buckets": buckets, "targets": [], "reason": None}
    for stale in ("per_mask", "candidates", "table2", "table2_confirmation"):
        (paths.results / f"{stale}.parquet").unlink(missing_ok=True)
    if buckets:
        t0 = time.perf_counter()
        measured = present if per_mask == "all" else buckets
        resumed: set[str] = set()
        n_masks = lib.table(measured, columns=["mask_id"]).num_rows
        mode = rank_mode
        if mode == "auto":
            mode = "adaptive" if n_masks * n_sel > ADAPTIVE_ABOVE and pm_counts is None else "full"
        if pm_counts is None and mode == "adaptive":
            pm_counts, rounds = evaluate_adaptive(lib, test, models, measured, keep=thresholds.attack_top,
                                                  plan=adaptive, settings=settings, log=log)
            spent = sum(r["forward_passes"] for r in rounds)
            full_cost = n_masks * (n_sel + (int(test.gallery.sum()) if test.scoring == "open" else 0)) * len(models)
            result["adaptive"] = {"rounds": rounds, "forward_passes": spent, "full_forward_passes": full_cost,
                                  "confidence": adaptive.confidence, "keep": thresholds.attack_top}
            log(f"adaptive: {spent:,} forward passes against {full_cost:,} in full mode "
                f"({full_cost / max(spent, 1):.1f}x fewer)")
        elif pm_counts is None:
            before = read_parts(parts)
            resumed = set(before["mask_id"]) if len(before) else set()
            pm_counts = evaluate_masks(lib, test, models, buckets=measured, settings=settings, parts=parts, log=log)
        result["rank_mode"] = mode
        counts = pm_counts[pm_counts["bucket"].isin(measured)]
        pm = per_mask_table(counts.drop(columns=["split"]), thresholds)
        _write_table(pm, paths.results / "per_mask.parquet")
        cands = candidates(pm, buckets, thresholds)
        _write_table(cands, paths.results / "candidates.parquet")
        timings["per_mask"] = time.perf_counter() - t0
        images_per_mask = n_sel + (int(test.gallery.sum()) if test.scoring == "open" else 0)
        # Masks measured by this stage: none when Table 1's full mode measured them, nor resumed parts.
        fresh = 0 if table1_mode == "full" else len(set(pm["mask_id"]) - resumed)
        evaluated = result["adaptive"]["forward_passes"] if "adaptive" in result else (
            fresh * images_per_mask * len(models))
        rate = evaluated / max(timings["per_mask"], 1e-9)
        log(f"per-mask: {len(pm)} masks x {n_sel} images ({fresh} evaluated now) in {timings['per_mask']:.1f}s "
            + (f"({rate:,.0f} masked images recognized/s over {len(models)} models); " if fresh else "")
            + f"{len(cands)} candidates")
        # A throughput is only a throughput when this run evaluated masks (not all resumed from parts).
        result["throughput"] = {"per_mask_images_per_s": round(rate, 1) if fresh else None,
                                "actors": settings.actors, "resumed_masks": len(pm) - fresh}
        if settings.gpus_per_actor == 0 and fresh:
            bare = bare_forward_rate([found["E"][0], found["O"][0]], test.images, settings.images_per_chunk,
                                     settings.precision, int(settings.cpus_per_actor))
            result["throughput"] |= {"bare_forward_images_per_s": round(bare * settings.actors, 1),
                                     "ratio": round(rate / (bare * settings.actors), 3)}
            log(f"throughput: {rate / (bare * settings.actors):.2f}x the bare forward pass "
                f"({bare * settings.actors:,.0f}/s on {settings.actors} x {int(settings.cpus_per_actor)} CPU)")

        t0 = time.perf_counter()
        alist = attack_list(pm, buckets, thresholds)
        attack = evaluate_attack(lib, alist["mask_id"].tolist(), test, models, inpainter, splits=splits,
                                 settings=settings)
        sel = attack[attack["split"] == "selection"].drop(columns=["split"])
        t2 = table2(sel.merge(alist[["mask_id", "third", "acc_O"]], on="mask_id"), alist, thresholds)
        _write_table(t2, paths.results / "table2.parquet")
        timings["attack"] = time.perf_counter() - t0
        log(f"attack: {len(alist)} masks x {sum(test.probes(s) for s in splits)} images inpainted "
            f"in {timings['attack']:.1f}s")
        chosen, why = target_masks(t2, thresholds)
        if "confirmation" in splits:
            # The same figures on held-out images; decisions stay those taken on the selection split.
            conf = attack[attack["split"] == "confirmation"].drop(columns=["split"])
            t2c = table2(conf, alist, thresholds)
            t2c["target"] = t2c["mask_id"].isin(chosen["mask_id"])
            _write_table(t2c, paths.results / "table2_confirmation.parquet")
    else:
        chosen = pd.DataFrame(columns=["mask_id"])
    if why is not None:
        result["reason"] = why.to_dict() if isinstance(why, Empty) else str(why)
        log(f"no target mask: {why.message}")
    ids = chosen["mask_id"].tolist()
    pool_sha: set[str] = set()
    if paths.masks_train.exists():
        pool_sha = set(MaskLibrary.open(str(paths.masks_train)).column("sha256"))
    if ids:
        rows = lib.table()
        where = {m: i for i, m in enumerate(rows.column("mask_id").to_pylist())}
        keep = rows.take(pa.array([where[m] for m in ids], pa.int64()))  # best first, library format
        sha = dict(zip(keep.column("mask_id").to_pylist(), keep.column("sha256").to_pylist()))
        confirm = {}
        if "confirmation" in splits:
            confirm = {r["mask_id"]: _figures(r) for _, r in t2c.iterrows()}
        result["targets"] = [{"mask_id": r["mask_id"], "bucket": int(r["bucket"]), "range": labels[int(r["bucket"])],
                              "sha256": sha[r["mask_id"]], "in_training_pool": sha[r["mask_id"]] in pool_sha,
                              **_figures(r), "confirmation": confirm.get(r["mask_id"])}
                             for _, r in chosen.iterrows()]
        tmp = paths.root / ".targets.parquet.tmp"
        pq.write_table(keep, tmp)
        os.replace(tmp, paths.root / "targets.parquet")
    else:
        (paths.root / "targets.parquet").unlink(missing_ok=True)
    result["training_pool_overlap"] = sum(t["in_training_pool"] for t in result["targets"])
    timings["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    write_json_atomic(paths.root / "targets.json", result)
    record = json.loads(paths.run_json.read_text()) if paths.run_json.exists() else {}
    record.setdefault("stages", {})["determine"] = {
        "thresholds": thresholds.to_dict(), "repeats": repeats, "per_mask": per_mask, "table1_mode": table1_mode,
        "rank_mode": result.get("rank_mode"),
        **key, "inpainter_sha256": r_meta.get("model_sha256"), "target_buckets": buckets, "targets": ids,
        "seconds": result["seconds"]}
    write_json_atomic(paths.run_json, record)
    if report:
        from maskcrypt.report import write_report

        write_report(paths.root, test, log=log)
    return result


def format_table1(t1: pd.DataFrame) -> str:
    lines = [f"{'bucket':>12} {'first (E)':>16} {'second (O)':>16} {'gap':>7}  target"]
    for r in t1.itertuples():
        lines.append(f"{r.range:>12} {r.first:8.2%} ±{r.first_std:5.2%} {r.second:8.2%} ±{r.second_std:5.2%} "
                     f"{r.gap:7.2%}  {'yes' if r.target else ''}")
    return "\n".join(lines)


def format_target(t: dict[str, Any]) -> str:
    """One line per target mask: its figures on the selection split, and on confirmation when held out."""
    line = (f"target mask {t['mask_id']} {t['range']}: E {t['fourth']:.2%} masked, {t['fifth']:.2%} inpainted "
            f"(drop {t['drop']:.2%} [{t['drop_lo']:.2%}, {t['drop_hi']:.2%}]); O {t.get('O_masked', float('nan')):.2%}"
            f" masked, {t.get('O_inpainted', float('nan')):.2%} inpainted")
    c = t.get("confirmation")
    if c:
        line += (f"\n    on the confirmation split: E {c['fourth']:.2%} masked, {c['fifth']:.2%} inpainted "
                 f"(drop {c['drop']:.2%}); O {c.get('O_masked', float('nan')):.2%} masked, "
                 f"{c.get('O_inpainted', float('nan')):.2%} inpainted")
    return line
