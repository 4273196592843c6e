"""Unlinkability across the target masks, on Ray: ``results/unlinkability.parquet`` and ``results/unlinkability.png``.

For every pair of target masks (A, B) and each split: the probes embedded under mask A
are compared with the same people's *other* probes under mask B (mated) and with other
people's (non-mated), and Gomez-Barrero et al.'s D_sys says how well a score tells the two
apart (:mod:`maskcrypt.verification.unlinkability`). Two models: E (the operator's own
recognizer: the worst case, it was trained to see through every mask) and the linkage
embedder (an outsider trained on other people, on the victims' probes only). A Ray task
per share of the masks embeds every probe under each of its masks (the images stay in the
object store); the scores and D_sys are computed on the driver from the embeddings (a few
hundred KB a mask).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import EvalSettings
from maskcrypt.evaluation.scorer import choose_device
from maskcrypt.evaluation.testset import SPLITS, pixels
from maskcrypt.masks.core import pack_masks, unpack_masks
from maskcrypt.models.checkpoint import find_checkpoint
from maskcrypt.models.predictor import Predictor
from maskcrypt.reporting.pictures import plot_unlinkability
from maskcrypt.verification.unlinkability import COLUMNS, Unlinkability, cross_mask_scores, unlinkability

#: The models compared across masks: the operator's recognizer, then the outsider's embedder.
MODELS = ("E", "linkage")
PICTURE = "unlinkability.png"


def _embed_task(models: dict[str, str], settings: EvalSettings, images: Any, rows: dict[str, np.ndarray],
                mask_ids: list[str], bits: list[bytes], size: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """One share of the masks: each model's unit embeddings of its rows of ``images`` under each mask."""
    import torch

    torch.set_num_threads(max(1, int(settings.cpus_per_actor)))
    device = choose_device(settings.gpus_per_actor, torch.cuda.is_available())
    predictor = Predictor.from_checkpoints(models, device, settings.precision, settings.images_per_chunk)
    x = predictor.to_device(torch.from_numpy(np.ascontiguousarray(pixels(images))))
    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in models}
    for mid, mask in zip(mask_ids, torch.from_numpy(unpack_masks(bits, *size))):
        for name in models:
            emb = predictor.outputs(x[torch.from_numpy(rows[name])], lambda s, e, m=mask: m, embed=True,
                                    names=[name])[name]
            out[name][mid] = emb.float().cpu().numpy()
    return out


def evaluate_unlinkability(d: Any, target_ids: list[str]) -> pd.DataFrame | None:
    """The table for every pair of ``target_ids``, or None with the reason in ``d.result["unlinkability"]``."""
    import ray

    info: dict[str, Any] = d.result.setdefault("unlinkability", {})
    if len(target_ids) < 2:
        info["skipped"] = f"{len(target_ids)} target mask(s): unlinkability compares pairs of masks"
        d.log(f"unlinkability: skipped, {info['skipped']}")
        return None
    t0 = time.perf_counter()
    test = d.test
    probes = np.flatnonzero(~np.asarray(test.gallery))
    labels, split = np.asarray(test.labels)[probes], np.asarray(test.split)[probes]
    models = {"E": str(find_checkpoint(d.models["E"], kind="recognizer")[0])}
    victims = set((d.result.get("attack") or {}).get("linkage", {}).get("victims") or [])
    folder = Path(d.paths.attackers) / "linkage"
    rows = {"E": np.arange(len(probes))}
    if victims and folder.exists():
        mine = np.flatnonzero(np.isin([str(test.classes[i]) for i in labels], sorted(victims)))
        if len(mine):
            models["linkage"] = str(find_checkpoint(folder, kind="recognizer")[0])
            rows["linkage"] = mine
    images = test.images[probes]
    ref = images if not isinstance(images, np.ndarray) else ray.put(np.ascontiguousarray(images))
    batch = d.library.get(list(target_ids))
    bits = pack_masks(batch.masks)
    s = d.settings
    task = ray.remote(_embed_task).options(num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor)
    shares = np.array_split(np.arange(len(target_ids)), min(len(target_ids), s.actors))
    parts = ray.get([task.remote(models, s, ref, rows, [batch.mask_ids[i] for i in share],
                                 [bits[i] for i in share], test.size) for share in shares if len(share)])
    emb = {m: {k: v for part in parts for k, v in part[m].items()} for m in models}
    records, worst = [], {}
    for a, b in itertools.combinations(batch.mask_ids, 2):
        for name in models:
            for k, sp in enumerate(SPLITS):
                where = np.flatnonzero(split[rows[name]] == k)
                people = labels[rows[name]][where]
                if where.size < 2 or np.unique(people).size < 2:
                    continue
                mated, non_mated = cross_mask_scores(emb[name][a][where], emb[name][b][where], people)
                if mated.size == 0:
                    continue
                u = unlinkability(mated, non_mated)
                records.append({"mask_a": a, "mask_b": b, "split": sp, "model": name, "d_sys": u.d_sys,
                                "mated_pairs": u.mated_pairs, "non_mated_pairs": u.non_mated_pairs})
                if sp == "selection" and (name not in worst or u.d_sys > worst[name][2].d_sys):
                    worst[name] = (a, b, u)
    if not records:
        info["skipped"] = "no split with two or more people, one of them with two or more probes"
        d.log(f"unlinkability: skipped, {info['skipped']}")
        return None
    curves: dict[str, Unlinkability] = {f"{name} {a} vs {b}": u for name, (a, b, u) in worst.items()}
    plot_unlinkability(curves, d.paths.results / PICTURE)
    info.update({"pairs": len(list(itertools.combinations(target_ids, 2))), "models": list(models),
                 "worst": {name: {"mask_a": a, "mask_b": b, "d_sys": u.d_sys} for name, (a, b, u) in worst.items()},
                 "victims": len(victims) if "linkage" in models else 0})
    d.timings["unlinkability"] = time.perf_counter() - t0
    info["seconds"] = round(d.timings["unlinkability"], 1)
    d.log(f"unlinkability: {info['pairs']} pairs of target masks, {', '.join(models)}, in "
          f"{d.timings['unlinkability']:.1f}s; worst D_sys "
          + ", ".join(f"{name} {w['d_sys']:.2f}" for name, w in info["worst"].items()))
    return pd.DataFrame(records)[COLUMNS]
