"""Linkage of identities the attacker never saw, on Ray: ``results/linkage.parquet``.

The linkage embedder (``models/attackers/linkage/``, trained by
:func:`maskcrypt.determine.attackers.linkage_job` on the attacker identities' photos
only, from random or public weights) embeds each victim's masked probes and clean
gallery photos; so do O and E as reference rows (they were trained on the operator's
photos, which include the victims in a closed-set run; they are references, not bounds on
the attacker: O, which never saw a mask, links fewer victims than the outsider does, and E
is the deployed system, not an attacker). For every attacked mask and split: Recall@1
against the gallery (with its interval over the victims) and TAR at FAR 1e-2 and 1e-3 of
masked-probe-vs-clean-photo pairs
(:func:`maskcrypt.verification.linkage.linkage_figures`). The same protocol for every
row: masked probes, a clean gallery.

The images stay in the object store (or the test set's array); Ray tasks, one per
share of the masks, fetch the victims' photos and hold the three models; the driver
gets back one small row per (mask, split, model).
"""

from __future__ import annotations

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
from maskcrypt.verification.linkage import COLUMNS, linkage_figures, victim_layout

#: The rows of the table, in report order: the attacker's embedder, then the references.
MODELS = ("linkage", "O", "E")


def _linkage_task(models: dict[str, str], settings: EvalSettings, images: Any, n_gallery: int,
                  gallery_labels: np.ndarray, probe_labels: np.ndarray, probe_split: np.ndarray,
                  splits: list[str], mask_ids: list[str], bits: list[bytes], size: tuple[int, int],
                  confidence: float = 0.95) -> list[dict]:
    """One share of the masks: every model's figures per mask and split (runs in a Ray task)."""
    import torch

    torch.set_num_threads(max(1, int(settings.cpus_per_actor)))
    device = choose_device(settings.gpus_per_actor, torch.cuda.is_available())
    predictor = Predictor.from_checkpoints(models, device, settings.precision, settings.images_per_chunk)
    x = predictor.to_device(torch.from_numpy(np.ascontiguousarray(pixels(images))))
    gallery = {k: v.cpu().numpy() for k, v in predictor.outputs(x[:n_gallery], None, embed=True).items()}
    masks = torch.from_numpy(unpack_masks(bits, *size))
    rows = []
    for mid, mask in zip(mask_ids, masks):
        probes = predictor.outputs(x[n_gallery:], lambda s, e, m=mask: m, embed=True)
        for name in MODELS:
            emb = probes[name].cpu().numpy()
            for k, split in enumerate(SPLITS):
                if split not in splits or not (probe_split == k).any():
                    continue
                sel = probe_split == k
                rows.append({"mask_id": mid, "split": split, "model": name,
                             **linkage_figures(emb[sel], probe_labels[sel], gallery[name], gallery_labels,
                                               confidence)})
    return rows


def evaluate_linkage(d: Any, alist: pd.DataFrame, folder: Path | None) -> pd.DataFrame | None:
    """``results/linkage.parquet`` for the attack list's masks, or None (the reason in ``d.result``) when skipped."""
    import ray

    info = d.result.setdefault("attack", {}).get("linkage") or {}
    if folder is None or info.get("skipped"):
        return None
    t0 = time.perf_counter()
    layout = victim_layout(d.test.labels, d.test.split, d.test.gallery, d.test.classes, info["victims"],
                           d.config.enroll, int(info["seed"]))
    g_labels, p_labels = d.test.labels[layout.gallery], d.test.labels[layout.probes]
    info.update({"dropped_victims": layout.dropped, "probes": len(layout.probes), "gallery": len(layout.gallery)})
    if len(np.unique(g_labels)) < 2 or len(layout.probes) == 0:
        info["skipped"] = (f"too few victim photos: {len(np.unique(g_labels))} victim(s) with both a gallery photo "
                           "and a probe (needs two)")
        d.log(f"linkage: skipped, {info['skipped']}")
        return None
    models = {"linkage": str(find_checkpoint(folder, kind="recognizer")[0]),
              **{k: str(find_checkpoint(d.models[k], kind="recognizer")[0]) for k in ("O", "E")}}
    images = d.test.images[np.concatenate([layout.gallery, layout.probes])]
    ref = images if not isinstance(images, np.ndarray) else ray.put(np.ascontiguousarray(images))
    ids = alist["mask_id"].tolist()
    batch = d.library.get(ids)
    bits = pack_masks(batch.masks)
    s = d.settings
    task = ray.remote(_linkage_task).options(num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor)
    shares = np.array_split(np.arange(len(ids)), min(len(ids), s.actors))
    futures = [task.remote(models, s, ref, len(layout.gallery), g_labels, p_labels, layout.probe_split, d.splits,
                           [batch.mask_ids[i] for i in share], [bits[i] for i in share], d.test.size,
                           d.thresholds.confidence)
               for share in shares if len(share)]
    rows = [r for part in ray.get(futures) for r in part]
    table = pd.DataFrame(rows).merge(alist[["mask_id", "bucket"]], on="mask_id", how="left")
    table["bucket"] = table["bucket"].astype(int)
    table["_m"] = table["model"].map({m: i for i, m in enumerate(MODELS)})
    table["_s"] = table["split"].map({s: i for i, s in enumerate(SPLITS)})
    table = table.sort_values(["bucket", "mask_id", "_s", "_m"])
    d.timings["linkage"] = time.perf_counter() - t0
    info["seconds"] = round(d.timings["linkage"], 1)
    d.log(f"linkage: {len(ids)} masks x {len(layout.probes)} victim probes against {len(layout.gallery)} clean "
          f"photos of {len(np.unique(g_labels))} victims, {len(MODELS)} models, in {d.timings['linkage']:.1f}s")
    return table.reset_index(drop=True)[COLUMNS]
