"""Stage: face verification of a determined run, in the field's units (``maskcrypt verify RUN --pairs SPEC``).

The method judges masks by identification accuracy; face-recognition users judge a
system by verification on pairs (LFW, CFP-FP, AgeDB-30...). This stage measures the
run's target masks that way, on *all* pairs of a source (no rule selects on them), in
process (no Ray), through the :class:`~maskcrypt.models.predictor.Predictor`:

=============  ==========  ==============================================================
model          condition   what it says
=============  ==========  ==============================================================
O              clean       the utility reference: an ordinary recognizer on clean pairs
E              masked      the deployed system: both images of a pair under the mask
O              masked      an attacker with an ordinary model and the encrypted images
O              inpainted   an attacker who first inpaints the hole with R
E              inpainted   METHOD's fifth accuracy, in verification units
=============  ==========  ==============================================================

Embeddings follow insightface's ``verification.py``: ``embed(x) + embed(mirror(x))``,
then unit-normalized (the mirror is of the image the model sees); the figures are
:mod:`maskcrypt.verification`'s (10-fold accuracy with the threshold chosen on the other
nine folds, TAR at FAR 1e-3 and 1e-4 on all pairs, AUC, ROC). Results go to
``RUN/results/verification.parquet`` (one row per model, condition and mask, with the ROC
arrays) and ``RUN/results/roc.png``. The attackers of the attack stage (README, "What an attacker
gets") are verified beside them: O on OpenCV's Telea and Navier-Stokes fills (always; they
need no training) and the run's adaptive-family recognizer on masked and on R-inpainted
pairs (when its training is complete). Known-mask attackers are left out (one model per
mask; the attack table has their identification figures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.errors import MaskcryptError
from maskcrypt.verification import FARS, consecutive_folds, evaluate, far_key, far_label

#: (model, condition, side) in the order rows are written; side says whose figure it is.
CONDITIONS = (("O", "clean", "reference"), ("E", "masked", "deployed"), ("O", "masked", "attacker"),
              ("O", "inpainted", "attacker"), ("E", "inpainted", "method"), ("O", "telea", "attacker"),
              ("O", "ns", "attacker"), ("family", "masked", "attacker"), ("family", "inpainted", "attacker"))
TABLE = "verification"
ROC_PNG = "roc.png"


def pairs_spec(run: str | Path, spec: str = "") -> str:
    """The source whose pairs are verified: ``spec``, else the run's test data (its determination's, or prepare's)."""
    if spec:
        return spec
    from maskcrypt.run import RunPaths, read_run_json

    record = read_run_json(RunPaths.resolve(run)) or {}
    return (record.get("stages", {}).get("determine", {}).get("test_data")
            or record.get("prepare", {}).get("data") or "synthetic:")


def load_pairs(spec: str, size: int, channels: int, generate: bool = True) -> tuple[Any, np.ndarray, str]:
    """(images used by the pairs, pairs re-indexed into them with folds, where the pairs came from).

    A labelled source without pairs gets them generated (``#pairs=generate``'s rule) when
    ``generate``; ``None`` images are returned when it has none and ``generate`` is off.
    """
    from maskcrypt.data import load, parse_spec
    from maskcrypt.data.pairs import generate_pairs

    parsed = parse_spec(spec)
    ds = load(parsed, default_split="test", size=size, channels=channels, verification=True)
    origin = ("generated (seeded, 10 folds)" if parsed.get("pairs") == "generate"
              else "the source's own" if ds.pairs is not None else "")
    pairs = ds.pairs
    if pairs is None or not len(pairs):
        if not generate:
            return None, np.zeros((0, 4), np.int64), ""
        pairs, disjoint = generate_pairs(ds.labels, parsed.get("pairs_per_fold"), parsed.get("seed"))
        origin = ("generated from the labels (the source has none; seeded, 10 "
                  + ("identity-disjoint folds)" if disjoint else "folds, not identity-disjoint: too few identities)"))
    pairs = np.asarray(pairs, np.int64).copy()
    if np.unique(pairs[:, 3]).size < 2:  # a pairs file without folds: 10 consecutive ones, as insightface
        pairs[:, 3] = consecutive_folds(len(pairs))
    used = np.unique(pairs[:, :2])
    pairs[:, :2] = np.searchsorted(used, pairs[:, :2])
    ds.images = ds.images[used]
    ds.labels = ds.labels[used]
    return ds, pairs, origin


def _row(model: str, condition: str, side: str, mask_id: str, bucket: int, label: str, emb: np.ndarray,
         pairs: np.ndarray) -> dict[str, Any]:
    sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(1).astype(np.float64)
    figures = evaluate(sims, pairs[:, 2] == 1, pairs[:, 3])
    fpr, tpr = figures.pop("roc")
    return {"model": model, "condition": condition, "side": side, "mask_id": mask_id, "bucket": bucket,
            "range": label, **figures, "roc_fpr": fpr.astype(np.float32), "roc_tpr": tpr.astype(np.float32)}


def verify_images(predictor: Any, images: np.ndarray, pairs: np.ndarray, masks: list[tuple[str, int, str, np.ndarray]],
                  log: Callable[[str], None] = print) -> pd.DataFrame:
    """Every condition of :data:`CONDITIONS` for ``masks`` (id, bucket, bucket label, H x W mask); one row each.

    ``predictor`` holds recognizers ``E`` and ``O`` (and R as its inpainter for the
    inpainted rows; ``family``, the adaptive-family attacker, when present); ``pairs``
    rows ``(a, b, same, fold)`` index ``images``.
    """
    rows = []
    clean = predictor.outputs(images, None, embed=True, flip=True, names=["O"])["O"].cpu().numpy()
    rows.append(_row("O", "clean", "reference", "", 0, "no mask", clean, pairs))
    for mask_id, bucket, label, mask in masks:
        t0 = time.perf_counter()
        out = predictor.outputs(images, mask, embed=True, flip=True, names=["E", "O"])
        rows.append(_row("E", "masked", "deployed", mask_id, bucket, label, out["E"].cpu().numpy(), pairs))
        rows.append(_row("O", "masked", "attacker", mask_id, bucket, label, out["O"].cpu().numpy(), pairs))
        if predictor.inpainter is not None:
            out = predictor.outputs(images, mask, embed=True, flip=True, fill=True, names=["E", "O"])
            rows.append(_row("O", "inpainted", "attacker", mask_id, bucket, label, out["O"].cpu().numpy(), pairs))
            rows.append(_row("E", "inpainted", "method", mask_id, bucket, label, out["E"].cpu().numpy(), pairs))
        for filler in ("telea", "ns"):
            out = predictor.outputs(images, mask, embed=True, flip=True, fill=filler, names=["O"])
            rows.append(_row("O", filler, "attacker", mask_id, bucket, label, out["O"].cpu().numpy(), pairs))
        if "family" in predictor.models:
            out = predictor.outputs(images, mask, embed=True, flip=True, names=["family"])
            rows.append(_row("family", "masked", "attacker", mask_id, bucket, label, out["family"].cpu().numpy(),
                             pairs))
            if predictor.inpainter is not None:
                out = predictor.outputs(images, mask, embed=True, flip=True, fill=True, names=["family"])
                rows.append(_row("family", "inpainted", "attacker", mask_id, bucket, label,
                                 out["family"].cpu().numpy(), pairs))
        log(f"verify: mask {mask_id} in {time.perf_counter() - t0:.1f}s")
    return pd.DataFrame(rows)


def _masks(root: Path, ids: list[str] | None) -> tuple[list[tuple[str, int, str, np.ndarray]], str]:
    """The masks verified: the run's targets best first (or its candidates when it has none), or ``ids``."""
    from maskcrypt.masks import MaskLibrary, bucket_label
    from maskcrypt.serving import load_targets

    lib = MaskLibrary.open(str(root / "masks"))
    if ids:
        batch = lib.get(list(ids))
        return [(m, int(b), bucket_label(int(b), lib.edges), k) for m, b, k in
                zip(batch.mask_ids, batch.buckets, batch.masks)], "the masks asked for"
    if not (root / "targets.json").exists():
        raise MaskcryptError(f"run {root}: no targets.json (determine the target masks first: maskcrypt determine), "
                             "or name masks with --mask-ids")
    if not json.loads((root / "targets.json").read_text()).get("targets") and \
            not (root / "results" / "candidates.parquet").exists():
        return [], "masks: the run has no target and no candidate mask"
    targets = load_targets(root, allow_candidates=True)
    stored = lib.get(targets.ids) if targets.ids else None
    buckets = dict(zip(stored.mask_ids, stored.buckets)) if stored is not None else {}
    masks = [(m, int(buckets[m]), bucket_label(int(buckets[m]), lib.edges), k)
             for m, k in zip(targets.ids, targets.masks)]
    return masks, "target masks" if targets.source == "targets" else "candidate masks (the run has no target)"


def verify(run: str | Path, pairs: str = "", mask_ids: list[str] | None = None, precision: str = "auto",
           chunk: int = 0, device: str | None = None, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Verification of a run's target masks on a source's pairs; writes the table, the ROC picture and run.json."""
    import torch

    from maskcrypt.config import check_same_training
    from maskcrypt.data import labelled
    from maskcrypt.fileio import write_parquet
    from maskcrypt.models.predictor import Predictor
    from maskcrypt.run import RunPaths, update_record

    t0 = time.perf_counter()
    paths = RunPaths.resolve(run)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    r_dir = paths.models / "inpainter"
    models = {"E": paths.models / "encrypted", "O": paths.models / "original"}
    family = family_attacker(paths.models / "attackers" / "family", log)
    if family is not None:
        models["family"] = family
    predictor = Predictor.from_checkpoints(models, device=device, precision=precision, chunk=chunk,
                                           inpainter=r_dir if r_dir.exists() else None)
    check_same_training(predictor.meta("O"), predictor.meta("E"))
    e, o = predictor.meta("E"), predictor.meta("O")
    size, channels = int(e["image_size"]), int(e.get("channels", 3))
    if (int(o["image_size"]), int(o.get("channels", 3))) != (size, channels):
        raise MaskcryptError(f"run {paths.root}: E takes {size} px x {channels} channels, O "
                             f"{o['image_size']} px x {o.get('channels', 3)}: one set of pairs cannot serve both")
    spec = pairs_spec(paths.root, pairs)
    ds, prs, origin = load_pairs(spec, size, channels)
    masks, what = _masks(paths.root, mask_ids)
    same = int(prs[:, 2].sum())
    log(f"verify: {labelled(spec)} {len(prs)} pairs ({same} same, {len(prs) - same} different) of "
        f"{len(ds.images)} images, {np.unique(prs[:, 3]).size} folds, pairs {origin}; {len(masks)} {what}; "
        f"flip-sum embeddings on {device}")
    table = verify_images(predictor, ds.images, prs, masks, log=log)
    table.insert(0, "pairs_source", spec)
    write_parquet(table, paths.results / f"{TABLE}.parquet")
    plot_verification(table, paths.results / ROC_PNG)
    update_record(paths.run_json, "verify", {
        "pairs": spec, "pairs_origin": origin, "pair_count": len(prs), "masks": [m[0] for m in masks],
        "masks_are": what, "precision": precision, "seconds": round(time.perf_counter() - t0, 1)})
    log(format_verification(table))
    log(f"verification: {paths.results / (TABLE + '.parquet')}; ROC: {paths.results / ROC_PNG}")
    return table


def family_attacker(folder: Path, log: Callable[[str], None]) -> Path | None:
    """The run's adaptive-family attacker's checkpoint when its training is complete, else None (said why)."""
    from maskcrypt.models.checkpoint import find_checkpoint

    if not folder.exists():
        return None
    try:
        ckpt, meta = find_checkpoint(folder, kind="recognizer")
    except MaskcryptError as exc:
        log(f"verify: the adaptive-family attacker is left out ({exc})")
        return None
    if int(meta.get("epoch", 0)) != int(meta.get("epochs", -1)):
        log(f"verify: the adaptive-family attacker is left out (trained {meta.get('epoch')} of {meta.get('epochs')} "
            "epochs: relaunch the determination to finish it)")
        return None
    return ckpt


def verify_determination(run: str | Path, test_spec: str, precision: str, log: Callable[[str], None]) -> bool:
    """The determination's hook: verify its targets when its test source has pairs; else clear stale results.

    Returns whether a verification was written (the report then shows it).
    """
    from maskcrypt.data import describe
    from maskcrypt.run import RunPaths

    paths = RunPaths.resolve(run)
    if "pairs" not in describe(test_spec):  # own pairs or #pairs=generate; decodes no image
        for stale in (paths.results / f"{TABLE}.parquet", paths.results / ROC_PNG):
            stale.unlink(missing_ok=True)
        return False
    verify(paths.root, test_spec, precision=precision, log=log)
    return True


def format_verification(table: pd.DataFrame) -> str:
    """A fixed-width table: accuracy mean ± std and TAR at each FAR (``*``: not resolvable), per row."""
    heads = "".join(f" {'TAR@FAR=' + far_label(far):>16}" for far in FARS)
    lines = [f"{'model':>6} {'condition':>10} {'mask':>14} {'bucket':>11} {'accuracy':>16}{heads} {'negatives':>9}"]
    flagged = False
    for _, r in table.iterrows():
        d = r.to_dict()
        cells = ""
        for far in FARS:
            k = far_key(far)
            ok = bool(d["resolvable_" + k])
            flagged |= not ok
            tar = "{:.2%}".format(d["tar_" + k]) + ("" if ok else "*")
            cells += f" {tar:>16}"
        acc = f"{r['accuracy']:.2%} ± {r['accuracy_std']:.2%}"
        lines.append(f"{r['model']:>6} {r['condition']:>10} {r['mask_id'] or '-':>14} {r['range']:>11} {acc:>16}"
                     f"{cells} {r['negatives']:>9,}")
    if flagged:
        lines.append("* not resolvable: fewer than 1/FAR negative pairs, so no false accept is allowed (TAR at FAR 0)")
    return "\n".join(lines)


def plot_verification(table: pd.DataFrame, path: Path, panels: int = 6) -> Path:
    """ROC curves (log FAR): one panel per mask (the first ``panels``), each with O on clean pairs for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskcrypt.pictures import save_figure

    ref = table[table["condition"] == "clean"].iloc[0]
    ids = [m for m in dict.fromkeys(table["mask_id"]) if m][:panels] or [""]
    cols = min(3, len(ids))
    rows = -(-len(ids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    styles = {("O", "clean"): ("O clean (reference)", "#718096", "--"), ("E", "masked"): ("E masked", "#2b6cb0", "-"),
              ("O", "masked"): ("O masked", "#c05621", "-"), ("O", "inpainted"): ("O inpainted", "#dd6b20", ":"),
              ("E", "inpainted"): ("E inpainted", "#63b3ed", ":"), ("O", "telea"): ("O on Telea fill", "#9c4221", "-."),
              ("O", "ns"): ("O on Navier-Stokes fill", "#7b341e", "-."),
              ("family", "masked"): ("adaptive-family masked", "#c53030", "-"),
              ("family", "inpainted"): ("adaptive-family inpainted", "#e53e3e", ":")}
    floor = 1.0 / max(int(ref["negatives"]), 1)
    for ax, mid in zip(axes.ravel(), ids):
        part = [ref] + [r for _, r in table[table["mask_id"] == mid].iterrows()] if mid else [ref]
        for r in part:
            name, colour, ls = styles[(r["model"], r["condition"])]
            fpr, tpr = np.asarray(r["roc_fpr"]), np.asarray(r["roc_tpr"])
            ax.step(np.maximum(fpr, floor / 2), tpr, where="post", color=colour, ls=ls,
                    label=f"{name}: {r['accuracy']:.1%}")
        ax.set_xscale("log")
        ax.set_xlim(floor / 2, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{mid} {part[-1]['range']}" if mid else "no mask", fontsize=9)
        ax.set_xlabel("FAR (false accept rate)", fontsize=8)
        ax.set_ylabel("TAR", fontsize=8)
        ax.legend(fontsize=6, loc="lower right", title="10-fold accuracy", title_fontsize=6)
    for ax in axes.ravel()[len(ids):]:
        ax.axis("off")
    fig.suptitle("Verification ROC per target mask (pairs of both images under the mask)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
