"""Stage: face verification of a determined run, in the field's units (``maskcrypt verify RUN --pairs SPEC``).

The method judges masks by identification accuracy; face-recognition users judge a
system by verification on pairs (LFW, CFP-FP, AgeDB-30...). This stage measures the
run's target masks that way, on *all* pairs of a source (no rule selects on them), on Ray:
the images the pairs use are decoded by Ray tasks into the object store, and evaluation
actors (:class:`PairScorer`, on the run's devices: ``--eval-gpus``) hold them with the
models, one task per mask, each answering per-pair similarities' figures through the
:class:`~maskcrypt.models.predictor.Predictor`. The driver holds the pairs, the masks and
the table:

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
:mod:`maskcrypt.verification.protocol`'s (10-fold accuracy with the threshold chosen on the other
nine folds, TAR at FAR 1e-3 and 1e-4 on all pairs, AUC, ROC). Results go to
``RUN/results/verification.parquet`` (one row per model, condition and mask, with the ROC
arrays) and ``RUN/results/roc.png``. The attackers of the attack stage (docs/determination.md, "What an attacker
gets") are verified beside them: O on OpenCV's Telea and Navier-Stokes fills (always; they
need no training) and the run's adaptive-family recognizer on masked and on R-inpainted
pairs (when its training is complete). Known-mask attackers are left out (one model per
mask; the attack table has their identification figures).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import EvalSettings, check_same_training
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import save_figure, write_parquet
from maskcrypt.core.rundir import Run
from maskcrypt.data import describe, labelled, parse_spec, source_split
from maskcrypt.data.pairs import generate_pairs
from maskcrypt.evaluation.crossproduct import _pool
from maskcrypt.evaluation.scorer import choose_device
from maskcrypt.evaluation.testset import pixels
from maskcrypt.masks import MaskLibrary, bucket_label
from maskcrypt.masks.core import pack_masks, unpack_masks
from maskcrypt.models.checkpoint import find_checkpoint
from maskcrypt.models.predictor import Predictor
from maskcrypt.runtime.cluster import require_ray
from maskcrypt.serving.requests import load_targets
from maskcrypt.verification.protocol import FARS, consecutive_folds, evaluate, far_key, far_label

#: (model, condition, side) in the order rows are written; side says whose figure it is.
CONDITIONS = (("O", "clean", "reference"), ("E", "masked", "deployed"), ("O", "masked", "attacker"),
              ("O", "inpainted", "attacker"), ("E", "inpainted", "method"), ("O", "telea", "attacker"),
              ("O", "ns", "attacker"), ("family", "masked", "attacker"), ("family", "inpainted", "attacker"))
TABLE = "verification"
ROC_PNG = "roc.png"


def pairs_spec(run: str | os.PathLike[str] | Run, spec: str = "") -> str:
    """The source whose pairs are verified: ``spec``, else the run's test data (its determination's, or prepare's)."""
    if spec:
        return spec

    record = Run.open(run).record
    return (record.get("stages", {}).get("determine", {}).get("test_data")
            or record.get("prepare", {}).get("data") or "synthetic:")


def pairs_index(spec: str, size: int, channels: int, generate: bool = True) -> tuple[Any, np.ndarray, str]:
    """(the split's index, its pairs into the split's positions with folds, where the pairs came from).

    Decodes no image. A labelled source without pairs gets them generated
    (``#pairs=generate``'s rule) when ``generate``; ``None`` is returned for the split when
    it has none and ``generate`` is off.
    """
    parsed = parse_spec(spec)
    split = source_split(parsed, default_split="test", size=size, channels=channels, verification=True)
    origin = ("generated (seeded, 10 folds)" if parsed.get("pairs") == "generate"
              else "the source's own" if split.pairs is not None else "")
    pairs = split.pairs
    if pairs is None or not len(pairs):
        if not generate:
            return None, np.zeros((0, 4), np.int64), ""
        pairs, disjoint = generate_pairs(split.labels, parsed.get("pairs_per_fold"), parsed.get("seed"))
        origin = ("generated from the labels (the source has none; seeded, 10 "
                  + ("identity-disjoint folds)" if disjoint else "folds, not identity-disjoint: too few identities)"))
    pairs = np.asarray(pairs, np.int64).copy()
    if np.unique(pairs[:, 3]).size < 2:  # a pairs file without folds: 10 consecutive ones, as insightface
        pairs[:, 3] = consecutive_folds(len(pairs))
    return split, pairs, origin


def decode_pair_images(split: Any, pairs: np.ndarray, log: Callable[[str], None]) -> tuple[Any, np.ndarray]:
    """The images the pairs use, decoded by Ray tasks into the object store; pairs re-indexed into them.

    A pair with an image that could not be decoded is dropped and counted (``strict=1``
    in the spec fails instead).
    """
    used = np.unique(pairs[:, :2])
    images, kept = split.to_object_store(order=used)
    where = np.full(len(split), -1, np.int64)
    where[kept] = np.arange(kept.size)
    out = pairs.copy()
    out[:, :2] = where[pairs[:, :2]]
    good = (out[:, :2] >= 0).all(1)
    if not good.all():
        log(f"verify: {int((~good).sum())} pair(s) left out: an image of theirs could not be read")
    return images, out[good]


def _row(model: str, condition: str, side: str, mask_id: str, bucket: int, label: str, emb: np.ndarray,
         pairs: np.ndarray) -> dict[str, Any]:
    sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(1).astype(np.float64)
    figures = evaluate(sims, pairs[:, 2] == 1, pairs[:, 3], subjects=pairs[:, 4] if pairs.shape[1] > 4 else None)
    fpr, tpr = figures.pop("roc")
    return {"model": model, "condition": condition, "side": side, "mask_id": mask_id, "bucket": bucket,
            "range": label, **figures, "roc_fpr": fpr.astype(np.float32), "roc_tpr": tpr.astype(np.float32)}


def verify_images(predictor: Any, images: Any, pairs: np.ndarray, masks: list[tuple[str, int, str, np.ndarray]],
                  log: Callable[[str], None] = print, clean: bool = True) -> pd.DataFrame:
    """Every condition of :data:`CONDITIONS` for ``masks`` (id, bucket, bucket label, H x W mask); one row each.

    ``predictor`` holds recognizers ``E`` and ``O`` (and R as its inpainter for the
    inpainted rows; ``family``, the adaptive-family attacker, when present); ``pairs``
    rows ``(a, b, same, fold)`` index ``images``. ``clean`` adds O's clean reference row.
    The plain loop: :class:`PairScorer` runs it per mask in evaluation actors.
    """
    rows = []
    if clean:
        emb = predictor.outputs(images, None, embed=True, flip=True, names=["O"])["O"].cpu().numpy()
        rows.append(_row("O", "clean", "reference", "", 0, "no mask", emb, pairs))
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


class PairScorer:
    """An evaluation actor of the verification: the pairs' images and the models on one device, masks streaming.

    Each input row is one task: the clean reference (an empty ``bits``) or one mask
    (``mask_id``, ``bucket``, ``range``, packed ``bits``); it answers that task's rows of
    :func:`verify_images` (figures and ROC arrays, a few KB), never embeddings.
    """

    def __init__(self, images: Any, pairs: np.ndarray, models: dict[str, str], inpainter: str | None,
                 precision: str, images_per_chunk: int, gpus: float):
        import ray
        import torch

        self.pairs = ray.get(pairs) if isinstance(pairs, ray.ObjectRef) else pairs
        device = choose_device(gpus, torch.cuda.is_available())
        self.predictor = Predictor.from_checkpoints(models, device, precision, images_per_chunk, inpainter)
        self.x = self.predictor.to_device(torch.from_numpy(pixels(images)))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        h, w = int(self.x.shape[2]), int(self.x.shape[3])
        out = []
        for _, task in batch.iterrows():
            if not len(task["bits"]):
                rows = verify_images(self.predictor, self.x, self.pairs, [], log=lambda _: None, clean=True)
            else:
                mask = unpack_masks([task["bits"]], h, w)[0]
                rows = verify_images(self.predictor, self.x, self.pairs,
                                     [(str(task["mask_id"]), int(task["bucket"]), str(task["range"]), mask)],
                                     log=lambda _: None, clean=False)
            out.append(rows.assign(order=int(task["order"])))
        return pd.concat(out, ignore_index=True)


def verify_on_ray(images: Any, pairs: np.ndarray, masks: list[tuple[str, int, str, np.ndarray]],
                  models: dict[str, Path], inpainter: Path | None, settings: Any,
                  log: Callable[[str], None]) -> pd.DataFrame:
    """:func:`verify_images` for every mask, one Ray Data task per mask on a pool of :class:`PairScorer` actors.

    Rows come back in :data:`CONDITIONS` order per mask, the clean reference first; the
    stage logs its progress (masks done, images embedded per second) as they arrive.
    """
    import ray
    import ray.data

    resolved = {k: str(find_checkpoint(p, kind="recognizer")[0]) for k, p in models.items()}
    r = str(find_checkpoint(inpainter, kind="inpainter")[0]) if inpainter is not None else None
    packed = pack_masks(np.stack([m[3] for m in masks])) if masks else []
    tasks = [{"order": 0, "mask_id": "", "bucket": 0, "range": "no mask", "bits": b""}]
    tasks += [{"order": i + 1, "mask_id": m[0], "bucket": m[1], "range": m[2], "bits": bits}
              for i, (m, bits) in enumerate(zip(masks, packed))]
    constructor = {"images": images, "pairs": ray.put(pairs), "models": resolved, "inpainter": r,
                   "precision": settings.precision, "images_per_chunk": settings.images_per_chunk,
                   "gpus": settings.gpus_per_actor}
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    pool = {**_pool(settings, constructor, len(tasks)), "batch_format": "pandas"}
    out = ds.map_batches(PairScorer, batch_size=1, **pool)
    per_mask = 2 * len(images) * (2 + (2 if inpainter is not None else 0) + 2 + 2 * ("family" in models))
    parts, t0 = [], time.perf_counter()
    for block in out.iter_batches(batch_size=None, batch_format="pandas"):
        parts.append(block)
        done = sum(int((p["mask_id"] != "").any()) for p in parts)
        now = time.perf_counter() - t0
        log(f"verify: {done}/{len(masks)} masks, {len(pairs):,} pairs each, in {now:.0f}s "
            f"({done * per_mask / max(now, 1e-9):,.0f} images embedded/s)")
    table = pd.concat(parts, ignore_index=True)
    order = {c: i for i, c in enumerate((m, cond) for m, cond, _ in CONDITIONS)}
    table["_c"] = [order[(m, c)] for m, c in zip(table["model"], table["condition"])]
    table = table.sort_values(["order", "_c"], kind="stable").drop(columns=["order", "_c"]).reset_index(drop=True)
    for col in ("roc_fpr", "roc_tpr"):
        table[col] = [np.asarray(v, np.float32) for v in table[col]]
    return table


def _masks(root: Path, ids: list[str] | None) -> tuple[list[tuple[str, int, str, np.ndarray]], str]:
    """The masks verified: the run's targets best first (or its candidates when it has none), or ``ids``."""
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


def verify(run: str | os.PathLike[str] | Run, pairs: str = "", mask_ids: list[str] | None = None,
           settings: EvalSettings = EvalSettings(), log: Callable[[str], None] = print) -> pd.DataFrame:
    """Verification of a run's target masks on a source's pairs; writes the table, the ROC picture and run.json.

    Needs Ray (the caller's cluster, or the one entry points start): the pairs' images are
    decoded in Ray tasks and the models run in ``settings.actors`` evaluation actors.
    """
    require_ray("verify")
    t0 = time.perf_counter()
    run = Run.open(run)
    paths = run.paths
    r_dir = paths.models / "inpainter"
    models = {"E": paths.models / "encrypted", "O": paths.models / "original"}
    metas = {k: find_checkpoint(p, kind="recognizer")[1] for k, p in models.items()}
    family = family_attacker(paths.models / "attackers" / "family", log)
    if family is not None:
        models["family"] = family
    check_same_training(metas["O"], metas["E"])
    e, o = metas["E"], metas["O"]
    size, channels = int(e["image_size"]), int(e.get("channels", 3))
    if (int(o["image_size"]), int(o.get("channels", 3))) != (size, channels):
        raise MaskcryptError(f"run {paths.root}: E takes {size} px x {channels} channels, O "
                             f"{o['image_size']} px x {o.get('channels', 3)}: one set of pairs cannot serve both")
    spec = pairs_spec(paths.root, pairs)
    split, prs, origin = pairs_index(spec, size, channels)
    masks, what = _masks(paths.root, mask_ids)
    same = int(prs[:, 2].sum())
    where = f"{settings.actors} actor(s)" + (f" with {settings.gpus_per_actor:g} GPU each" if settings.gpus_per_actor
                                             else "")
    log(f"verify: {labelled(spec)} {len(prs)} pairs ({same} same, {len(prs) - same} different) of "
        f"{np.unique(prs[:, :2]).size} images, {np.unique(prs[:, 3]).size} folds, pairs {origin}; {len(masks)} "
        f"{what}; flip-sum embeddings on {where}")
    # Each pair's subject (its first image's identity): the verification's intervals are over subjects. A source
    # without identities (a .bin) makes every first image its own subject: the intervals are then per pair.
    labels = np.asarray(split.labels, np.int64)
    prs = np.column_stack([prs, labels[prs[:, 0]] if np.unique(labels).size > 1 else prs[:, 0]])
    images, prs = decode_pair_images(split, prs, log)
    table = verify_on_ray(images, prs, masks, models, r_dir if r_dir.exists() else None, settings, log)
    table.insert(0, "pairs_source", spec)
    write_parquet(table, paths.results / f"{TABLE}.parquet")
    plot_verification(table, paths.results / ROC_PNG)
    run.update("verify", {
        "pairs": spec, "pairs_origin": origin, "pair_count": len(prs), "masks": [m[0] for m in masks],
        "masks_are": what, "precision": settings.precision, "seconds": round(time.perf_counter() - t0, 1)})
    log(format_verification(table))
    log(f"verification: {paths.results / (TABLE + '.parquet')}; ROC: {paths.results / ROC_PNG}")
    return table


def family_attacker(folder: Path, log: Callable[[str], None]) -> Path | None:
    """The run's adaptive-family attacker's checkpoint when its training is complete, else None (said why)."""
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


def verify_determination(run: str | os.PathLike[str] | Run, test_spec: str, settings: EvalSettings,
                         log: Callable[[str], None]) -> bool:
    """The determination's hook: verify its targets when its test source has pairs; else clear stale results.

    Returns whether a verification was written (the report then shows it).
    """
    run = Run.open(run)
    paths = run.paths
    if "pairs" not in describe(test_spec):  # own pairs or #pairs=generate; decodes no image
        for stale in (paths.results / f"{TABLE}.parquet", paths.results / ROC_PNG):
            stale.unlink(missing_ok=True)
        return False
    verify(paths.root, test_spec, settings=settings, log=log)
    return True


def format_verification(table: pd.DataFrame) -> str:
    """A fixed-width table: accuracy mean ± fold std [interval over subjects] and TAR at each FAR (``*``: not
    resolvable), per row."""
    heads = "".join(f" {'TAR@FAR=' + far_label(far):>16}" for far in FARS)
    lines = [f"{'model':>6} {'condition':>10} {'mask':>14} {'bucket':>11} {'accuracy [over subjects]':>32}{heads} "
             f"{'negatives':>9}"]
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
        if "accuracy_lo" in d:
            acc += f" [{d['accuracy_lo']:.1%}, {d['accuracy_hi']:.1%}]"
        lines.append(f"{r['model']:>6} {r['condition']:>10} {r['mask_id'] or '-':>14} {r['range']:>11} {acc:>32}"
                     f"{cells} {r['negatives']:>9,}")
    if flagged:
        lines.append("* not resolvable: fewer than 1/FAR negative pairs, so no false accept is allowed (TAR at FAR 0)")
    return "\n".join(lines)


def plot_verification(table: pd.DataFrame, path: Path, panels: int = 6) -> Path:
    """ROC curves (log FAR): one panel per mask (the first ``panels``), each with O on clean pairs for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
