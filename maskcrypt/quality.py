"""How the trained models behave on held-out images masked from each bucket: the training report.

A quick in-process look after training (no Ray): for bucket 0 (no mask) and each
bucket of the run's selection library, every test image gets one mask drawn at random
from the bucket; reported are E's and O's closed-set accuracy (through the
:class:`~maskcrypt.models.predictor.Predictor`) and R's PSNR inside the hole against
filling the hole with the mean known colour. The method's Table 1 (repetitions,
intervals, Ray Data) is the determination's job.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from maskcrypt.errors import MaskcryptError


def training_quality(run: str | os.PathLike[str], test_data: str, seed: int = 0, batch: int = 0,
                     precision: str = "auto") -> dict[str, Any]:
    """E, O and R on ``test_data``'s test split under one random mask of each bucket per image."""
    import torch

    from maskcrypt.config import check_same_training
    from maskcrypt.data import load
    from maskcrypt.masks import MaskLibrary, bucket_label, overlay
    from maskcrypt.models import Inpainter
    from maskcrypt.models.losses import hole_psnr, mean_fill
    from maskcrypt.models.predictor import Predictor
    from maskcrypt.run import RunPaths

    paths = RunPaths.resolve(run)
    predictor = Predictor.from_checkpoints({"E": paths.models / "encrypted", "O": paths.models / "original"},
                                           precision=precision, chunk=batch)
    check_same_training(predictor.meta("O"), predictor.meta("E"))
    r = Inpainter.from_checkpoint(paths.models / "inpainter")
    size = int(predictor.meta("E")["image_size"])
    test = load(test_data, default_split="test", size=size)
    if test.class_names != predictor.meta("O")["class_names"]:
        raise MaskcryptError(f"{test_data}: its classes are not the models' training classes (closed set needed)")
    lib = MaskLibrary.open(str(paths.masks))
    x = torch.from_numpy(test.images)
    y = torch.from_numpy(test.labels)

    def accuracies(masks: torch.Tensor | None) -> dict[str, float]:
        out = predictor.outputs(x, masks)
        return {name: float(predictor.judge(o, y)[0].float().mean()) for name, o in out.items()}

    rows = [{"bucket": 0, "range": "no mask", **accuracies(None)}]
    with torch.inference_mode():
        for b in range(1, len(lib.edges)):
            pool = lib.load([b]).masks
            if len(pool) == 0:
                continue
            m = torch.from_numpy(pool[np.random.default_rng([seed, b]).integers(0, len(pool), len(x))])
            xf, mf = x.float() / 255, m[:, None].float()
            masked = overlay(x, m)
            filled = torch.cat([r(masked[s:s + 64].float() / 255, mf[s:s + 64]) for s in range(0, len(x), 64)])
            rows.append({"bucket": b, "range": bucket_label(b, lib.edges), **accuracies(m),
                         "R_hole_psnr": float(hole_psnr(filled, xf, mf).mean()),
                         "mean_fill_psnr": float(hole_psnr(mean_fill(xf, mf), xf, mf).mean())})
    return {"test_data": test.spec, "images": len(test), "rows": rows,
            "feature_losses": r.checkpoint_meta.get("feature_losses")}


def quality_key(run: str | os.PathLike[str], test_data: str, seed: int, precision: str) -> dict[str, Any]:
    """What a training report depends on: the three models, the test data, the library, seed and precision."""
    import json

    from maskcrypt.models.checkpoint import find_checkpoint
    from maskcrypt.run import RunPaths

    paths = RunPaths.resolve(run)
    models = {role: find_checkpoint(paths.models / role)[1].get("model_sha256")
              for role in ("original", "encrypted", "inpainter")}
    manifest = json.loads((paths.masks / "_library.json").read_text())
    return {"models": models, "test_data": test_data, "seed": seed, "precision": precision,
            "library_parts": sorted(p["path"] for p in manifest["parts"])}


def cached_training_quality(run: str | os.PathLike[str], test_data: str, seed: int = 0, precision: str = "auto",
                            log: Any = print) -> dict[str, Any]:
    """:func:`training_quality`, reused from ``results/train_quality.json`` when its key is unchanged.

    Relaunching a trained run (new thresholds, another rank mode) otherwise recomputes it
    on the whole test split every time (minutes on a 10,000-image test set).
    """
    import json

    from maskcrypt.fileio import write_json
    from maskcrypt.run import RunPaths

    path = RunPaths.resolve(run).results / "train_quality.json"
    key = quality_key(run, test_data, seed, precision)
    if path.exists():
        before = json.loads(path.read_text())
        if before.get("key") == key:
            log(f"training report: unchanged models and test data, reused {path}")
            return before
    quality = {**training_quality(run, test_data, seed=seed, precision=precision), "key": key}
    write_json(path, quality)
    return quality


def format_quality(q: dict[str, Any]) -> str:
    lines = [f"held-out quality on {q['images']} images of {q['test_data']}, one random mask per image:",
             f"{'bucket':>14} {'E acc':>7} {'O acc':>7} {'R PSNR':>8} {'mean fill':>10}"]
    for row in q["rows"]:
        psnr = f"{row['R_hole_psnr']:8.2f} {row['mean_fill_psnr']:10.2f}" if "R_hole_psnr" in row else ""
        lines.append(f"{row['range']:>14} {row['E']:7.1%} {row['O']:7.1%} {psnr}")
    return "\n".join(lines)
