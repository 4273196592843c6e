"""The attackers' table: pure functions from the attack stage's counts to ``results/attacks.parquet``.

The attackers themselves (what each one holds and does) are described in
:mod:`maskcrypt.determine.attackers`, which trains the adaptive ones on Ray Tune; this
module only turns counts into the table, the worst attacker per (mask, split) (the
privacy figure) and the chance level, so those rules are tested on hand-made tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import ATTACKERS, Thresholds
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import clustered_wilson, wilson_interval
from maskcrypt.selection.rules import people_design_effect

#: Open set only: the known-mask attacker's probes against a gallery masked with the same mask.
MASKED_GALLERY = "adaptive-known/masked-gallery"
#: Every attacker row of ``results/attacks.parquet``, in report order.
ORDER = (*ATTACKERS, MASKED_GALLERY)
#: What each attacker is, for the report.
DESCRIPTIONS = {
    "O": "O (trained on clean faces) on the masked image",
    "R+O": "R (the run's RFR-Net) inpaints, then O",
    "telea+O": "OpenCV Telea inpainting (no training), then O",
    "ns+O": "OpenCV Navier-Stokes inpainting (no training), then O",
    "adaptive-family": "one recognizer trained from O on the attacker's images under fresh masks of the target "
                       "buckets (mask unknown, generator known)",
    "adaptive-family+R": "the adaptive-family recognizer on R's inpainting",
    "adaptive-known": "a recognizer trained from O on the attacker's images under exactly this mask (mask known)",
    MASKED_GALLERY: "adaptive-known with its gallery masked by the same mask (open set)",
}
#: The fill each inpainting attacker recognizes (its fidelity columns are that fill's); the others have none.
FILLS = {"R+O": "R", "telea+O": "telea", "ns+O": "ns", "adaptive-family+R": "R"}
#: A fill's fidelity against the original, averaged over the split's probes (see maskcrypt.models.fidelity).
FIDELITY = ("psnr_hole", "ssim_hole", "psnr_image", "ssim_image")
COLUMNS = ["mask_id", "bucket", "split", "attacker", "n", "correct", "accuracy", "accuracy_lo", "accuracy_hi",
           "identities", "deff", "chance", *FIDELITY, "worst_attacker", "worst_accuracy"]
FAMILY = "family"


def attacker_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """The scorer's attack rows in long form: ``mask_id``, ``split``, ``attacker``, ``n``, ``correct``, fidelity.

    ``O`` and ``R+O`` are Table 2's ``correct_O_masked`` / ``correct_O_inpainted``; every
    other attacker is an ``atk:<name>`` column. With the scorer's per-identity counts
    (``idn``, ``idc:<column>``), each row's design effect (``deff``) and ``identities``;
    NaN without them. An inpainting attacker's fidelity
    (:data:`FIDELITY`) is the mean over the split's probes of its fill's figures (the
    scorer's ``fid:<fill>:<figure>`` sums over ``n``); the others get NaN.
    """
    source = {"O": "correct_O_masked", "R+O": "correct_O_inpainted",
              **{c[len("atk:"):]: c for c in counts.columns if c.startswith("atk:")}}
    unknown = sorted(set(source) - set(ORDER))
    if unknown:
        raise MaskcryptError(f"attack counts: unknown attacker column(s) {unknown}")
    missing = [c for c in ("mask_id", "split", "n", *source.values()) if c not in counts.columns]
    if missing:
        raise MaskcryptError(f"attack counts: missing column(s) {missing}")
    parts = []
    for name, col in source.items():
        part = counts[["mask_id", "split", "n"]].assign(attacker=name, correct=counts[col].astype(int))
        part["deff"], part["identities"] = people_columns(counts, col)
        for fig in FIDELITY:  # sums over the split's probes -> means; NaN where the attacker fills nothing
            key = f"fid:{FILLS.get(name)}:{fig}"
            part[fig] = counts[key].astype(float) / counts["n"] if key in counts.columns else np.nan
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def attacks_table(counts: pd.DataFrame, ranks: pd.DataFrame, th: Thresholds = Thresholds(),
                  chance: float = float("nan")) -> pd.DataFrame:
    """``results/attacks.parquet``: one row per (mask, split, attacker) with an interval over people and, for an
    inpainting attacker, its fill's PSNR and SSIM against the originals (in the hole and over the image).

    The interval is the design-effect Wilson interval over the split's identities
    (:func:`people_interval`): an attacker's figure is a claim about the people behind
    the masked images, whose photos are clustered within them.

    ``counts``: the attack stage's rows (one per mask and split, see
    :func:`attacker_counts`); ``ranks``: the attack list (``mask_id``, ``bucket``).
    ``worst_attacker`` / ``worst_accuracy`` repeat, on every row of a (mask, split), the
    attacker with the highest accuracy there (ties: the first in :data:`ORDER`), the
    privacy figure; ``chance`` is the accuracy of guessing among the test identities.
    """
    long = attacker_counts(counts)
    if (long["correct"] > long["n"]).any() or (long["n"] <= 0).any():
        raise MaskcryptError("attack counts: every attacker needs 0 <= correct <= n and n > 0")
    out = long.merge(ranks[["mask_id", "bucket"]], on="mask_id", how="left", validate="many_to_one")
    if out["bucket"].isna().any():
        raise MaskcryptError(f"attack counts: mask(s) {sorted(set(out.loc[out['bucket'].isna(), 'mask_id']))[:5]} "
                             "are not in the attack list")
    out["bucket"] = out["bucket"].astype(int)
    out["accuracy"] = out["correct"] / out["n"]
    out["accuracy_lo"], out["accuracy_hi"] = people_interval(out, th)
    out["chance"] = float(chance)
    out["_order"] = out["attacker"].map({a: i for i, a in enumerate(ORDER)})
    out = out.sort_values(["bucket", "mask_id", "split", "_order"]).reset_index(drop=True)
    worst = (out.sort_values(["accuracy", "_order"], ascending=[False, True], kind="stable")
             .drop_duplicates(["mask_id", "split"])[["mask_id", "split", "attacker", "accuracy"]]
             .rename(columns={"attacker": "worst_attacker", "accuracy": "worst_accuracy"}))
    out = out.merge(worst, on=["mask_id", "split"], how="left").drop(columns="_order")
    return out[COLUMNS]


def people_columns(counts: pd.DataFrame, column: str) -> tuple[Any, Any]:
    """``deff`` and ``identities`` of one count column per row (NaN both where it has no per-identity counts)."""
    found = people_design_effect(counts, [column])
    if found is None:
        return np.nan, np.nan
    deff, ids = found
    return np.where(np.isnan(ids), np.nan, deff), ids


def people_interval(table: pd.DataFrame, th: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``correct / n`` interval over people (``deff``, ``identities``), or per image where not counted."""
    lo, hi = wilson_interval(table["correct"], table["n"], th.confidence)
    known = table["identities"].notna().to_numpy()
    if known.any():
        ids = table["identities"].fillna(2).to_numpy()
        clo, chi = clustered_wilson(table["correct"], table["n"], table["deff"].fillna(1.0).to_numpy(), ids,
                                    th.confidence)
        lo, hi = np.where(known, clo, lo), np.where(known, chi, hi)
    return lo, hi


def worst_attackers(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per mask on ``split``: ``worst_attacker`` and ``worst_accuracy`` (what Table 2 and t_attack use)."""
    rows = table[table["split"] == split].drop_duplicates("mask_id")
    return rows[["mask_id", "worst_attacker", "worst_accuracy"]].reset_index(drop=True)


def worst_linkages(linkage: pd.DataFrame | None, split: str) -> pd.DataFrame:
    """Per mask on ``split``: ``worst_linkage`` (the outsider embedder's Recall@1, the ``model == "linkage"`` row; O
    and E are reference rows) and ``linkage_chance`` (1 / the victims); empty without a linkage table."""
    if linkage is None or linkage.empty:
        return pd.DataFrame(columns=["mask_id", "worst_linkage", "linkage_chance"])
    rows = linkage[(linkage["split"] == split) & (linkage["model"] == "linkage")]
    return rows[["mask_id", "recall_at_1", "recall_at_1_chance"]].rename(
        columns={"recall_at_1": "worst_linkage", "recall_at_1_chance": "linkage_chance"}).reset_index(drop=True)


def attacker_figures(table: pd.DataFrame, mask_id: str) -> dict[str, Any]:
    """``targets.json``'s attacker figures of one mask: per split, per attacker, and the worst."""
    out: dict[str, Any] = {}
    for split, rows in table[table["mask_id"] == mask_id].groupby("split", sort=False):
        out[split] = {"worst_attacker": rows["worst_attacker"].iloc[0],
                      "worst_accuracy": float(rows["worst_accuracy"].iloc[0]),
                      "attackers": {r.attacker: {"n": int(r.n), "correct": int(r.correct),
                                                 "accuracy": float(r.accuracy), "accuracy_lo": float(r.accuracy_lo),
                                                 "accuracy_hi": float(r.accuracy_hi)}
                                    for r in rows.itertuples()}}
    return out


def chance_level(test: Any) -> float:
    """Guessing among the identities of the test probes: 1 / their number."""
    probes = np.asarray(test.labels)[~np.asarray(test.gallery)]
    return 1.0 / max(1, len(np.unique(probes)))
