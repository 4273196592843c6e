"""How the trained models behave on held-out images masked from each bucket: the training report.

A first look after training, before the determination: for bucket 0 (no mask) and each
bucket of the run's selection library, every test image gets one mask drawn at random
from the bucket (Table 1's sampled draw, one repetition); reported are E's and O's
closed-set accuracy and R's PSNR inside the hole against filling the hole with the mean
known colour. It runs on the determination's machinery: the test images are decoded by
Ray tasks into the object store, and the models run in evaluation actors on the run's
devices (:func:`maskcrypt.evaluation.crossproduct.evaluate_sampled`), so the driver holds labels,
indexes and counts, whatever the test split's size. The method's Table 1 (repetitions,
intervals, the selection split) is the determination's job.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from maskcrypt.config import EvalSettings, check_same_training
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import write_json
from maskcrypt.core.rundir import Run
from maskcrypt.data import source_split
from maskcrypt.evaluation.crossproduct import evaluate_sampled
from maskcrypt.evaluation.testset import prepare_test
from maskcrypt.masks import MaskLibrary, bucket_label
from maskcrypt.models.checkpoint import find_checkpoint


def training_quality(run: str | os.PathLike[str] | Run, test_data: str, seed: int = 0,
                     settings: EvalSettings = EvalSettings(),
                     log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """E, O and R on ``test_data``'s test split under one random mask of each bucket per image."""
    paths = Run.open(run).paths
    models = {"E": paths.models / "encrypted", "O": paths.models / "original"}
    metas = {k: find_checkpoint(p, kind="recognizer")[1] for k, p in models.items()}
    check_same_training(metas["O"], metas["E"])
    find_checkpoint(paths.models / "inpainter", kind="inpainter")  # named when missing, before any decoding
    e = metas["E"]
    raw = source_split(test_data, default_split="test", size=int(e["image_size"]), channels=int(e.get("channels", 3)))
    if raw.class_names != list(metas["O"]["class_names"]):
        raise MaskcryptError(f"{test_data}: its classes are not the models' training classes (closed set needed)")
    lib = MaskLibrary.open(str(paths.masks))
    buckets = sorted({int(b) for b in lib.column("bucket")} - {-1})
    t0 = time.perf_counter()
    log(f"training report: decoding {len(raw):,} test images in Ray tasks; then E, O and R under one mask of each "
        f"of {len(buckets)} buckets per image ({len(raw) * (len(buckets) + 1):,} masked images per model) on "
        f"{settings.actors} actor(s)")
    images, kept = raw.to_object_store()
    test = prepare_test(images, raw.labels[kept], raw.class_names, e["class_names"], scoring="closed",
                        confirm_fraction=0.0, seed=seed)
    counts = evaluate_sampled(lib, test, models, repeats=1, seed=seed, buckets=buckets, settings=settings,
                              inpainter=paths.models / "inpainter", log=log)
    seconds = time.perf_counter() - t0
    n = int(kept.size)
    log(f"training report: {n * (len(buckets) + 1):,} masked images per model in {seconds:.1f}s "
        f"({n * (len(buckets) + 1) / max(seconds, 1e-9):,.0f}/s)")
    rows = []
    for _, c in counts.sort_values("bucket").iterrows():
        b = int(c["bucket"])
        row: dict[str, Any] = {"bucket": b, "range": "no mask" if b == 0 else bucket_label(b, lib.edges),
                               "E": float(c["correct_E"] / c["n"]), "O": float(c["correct_O"] / c["n"])}
        if b:
            row |= {"R_hole_psnr": float(c["psnr_sum_R"] / c["n"]),
                    "mean_fill_psnr": float(c["psnr_sum_mean_fill"] / c["n"])}
        rows.append(row)
    _, r_meta = find_checkpoint(paths.models / "inpainter", kind="inpainter")
    return {"test_data": raw.spec.text, "images": n, "rows": rows, "seconds": round(seconds, 1),
            "feature_losses": r_meta.get("feature_losses")}


def quality_key(run: str | os.PathLike[str] | Run, test_data: str, seed: int, precision: str) -> dict[str, Any]:
    """What a training report depends on: the three models, the test data (by content), the library, seed, precision."""
    paths = Run.open(run).paths
    metas = {role: find_checkpoint(paths.models / role)[1] for role in ("original", "encrypted", "inpainter")}
    e = metas["encrypted"]
    split = source_split(test_data, default_split="test", size=int(e["image_size"]),
                         channels=int(e.get("channels", 3)))
    manifest = json.loads((paths.masks / "_library.json").read_text())
    return {"models": {role: m.get("model_sha256") for role, m in metas.items()}, "test_data": test_data,
            "test_data_sha256": split.fingerprint(paths.file_digests), "seed": seed, "precision": precision,
            "draw": "sampled", "library_parts": sorted(p["path"] for p in manifest["parts"])}


def cached_training_quality(run: str | os.PathLike[str] | Run, test_data: str, seed: int = 0,
                            settings: EvalSettings = EvalSettings(), log: Any = print) -> dict[str, Any]:
    """:func:`training_quality`, reused from ``results/train_quality.json`` when its key is unchanged.

    Relaunching a trained run (new thresholds, another rank mode) otherwise recomputes it
    on the whole test split every time (minutes on a 10,000-image test set).
    """
    path = Run.open(run).paths.results / "train_quality.json"
    key = quality_key(run, test_data, seed, settings.precision)
    if path.exists():
        before = json.loads(path.read_text())
        if before.get("key") == key:
            log(f"training report: unchanged models and test data, reused {path}")
            return before
    quality = {**training_quality(run, test_data, seed=seed, settings=settings, log=log), "key": key}
    write_json(path, quality)
    return quality


def format_quality(q: dict[str, Any]) -> str:
    lines = [f"held-out quality on {q['images']} images of {q['test_data']}, one random mask per image:",
             f"{'bucket':>14} {'E acc':>7} {'O acc':>7} {'R PSNR':>8} {'mean fill':>10}"]
    for row in q["rows"]:
        psnr = f"{row['R_hole_psnr']:8.2f} {row['mean_fill_psnr']:10.2f}" if "R_hole_psnr" in row else ""
        lines.append(f"{row['range']:>14} {row['E']:7.1%} {row['O']:7.1%} {psnr}")
    return "\n".join(lines)
