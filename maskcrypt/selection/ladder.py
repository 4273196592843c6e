"""The attacker ladder: how much of the family attack's success comes with how many labelled photos.

The family attacker (``adaptive-family``) fine-tunes O on *all* of the attacker's
labelled photos: one point of a curve. The ladder trains the same attacker on N photos
for a few N (``--attacker-ladder``, default 256, 1,024 and all): how fast an attacker who
already holds O adapts to the masks with N photos (not how many photos a stranger must
collect: in closed set O trained on clean photos of every scored person). Rung 0 is O
itself (no photo: the ordinary recognizer on the masked image). Every rung starts from O's weights (the attacker holds
O: the worst case) and takes the same number of optimizer steps, so a rung differs from
the next only in the photos.

Pure functions (the photos of each rung, the table); the training is
:func:`maskcrypt.determine.attackers.train_for`'s, the counting the attack stage's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from maskcrypt.config import Thresholds
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.selection.attacks import people_columns, people_interval

#: ``results/attacker_ladder.parquet``'s columns.
COLUMNS = ["mask_id", "bucket", "split", "photos", "n", "correct", "accuracy", "accuracy_lo", "accuracy_hi",
           "identities", "deff", "chance"]


def photo_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of the attacker's photos whose every prefix is stratified per identity.

    Round robin over the identities: each identity's photos in a seeded shuffle, the
    identities in a seeded order, then the first photo of every identity, the second of
    every identity that has two, and so on. A rung of N photos is the first N: as even
    over identities as N allows, and nested (the 256 within the 1,024 within all).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x1ADD])
    classes = rng.permutation(np.unique(labels))
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    depth = max((len(p) for p in per), default=0)
    return np.asarray([p[i] for i in range(depth) for p in per if i < len(p)], dtype=np.int64)


def rungs(ladder: Sequence[int | None], total: int) -> list[int]:
    """The actual photo counts of a ladder on ``total`` photos: rung 0 (O), each count capped at ``total``,
    ``all`` as ``total``, duplicates dropped (a data set of 800 photos has rungs 0, 256 and 800)."""
    if not ladder:
        return []
    return sorted({0, *(total if n is None else min(int(n), total) for n in ladder)})


def rung_rows(order: np.ndarray, photos: int, total: int) -> np.ndarray:
    """The training rows of a rung: its ``photos`` first photos of ``order``, repeated cyclically up to ``total``
    rows, so that an epoch of every rung has as many samples (and optimizer steps) as the full rung's."""
    if not 0 < photos <= len(order):
        raise MaskcryptError(f"attacker ladder: a rung of {photos} photo(s) from {len(order)}")
    return np.resize(order[:photos], total).astype(np.int64)


def ladder_table(counts: pd.DataFrame, attack_list: pd.DataFrame, columns: dict[int, str],
                 th: Thresholds = Thresholds(), chance: float = float("nan")) -> pd.DataFrame:
    """``results/attacker_ladder.parquet``: per (mask, split, rung) the count, accuracy and interval over people.

    ``counts``: the attack stage's rows (``mask_id``, ``split``, ``n`` and the count
    columns); ``columns``: photos -> the count column of that rung (0 ->
    ``correct_O_masked``); ``attack_list``: ``mask_id`` -> ``bucket``.
    """
    missing = [c for c in ("mask_id", "split", "n", *columns.values()) if c not in counts.columns]
    if missing:
        raise MaskcryptError(f"attacker ladder: the attack counts lack column(s) {missing}")
    parts = []
    for p, c in sorted(columns.items()):
        part = counts[["mask_id", "split", "n"]].assign(photos=int(p), correct=counts[c].astype(int))
        part["deff"], part["identities"] = people_columns(counts, c)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True).merge(attack_list[["mask_id", "bucket"]], on="mask_id", how="left",
                                                     validate="many_to_one")
    if out["bucket"].isna().any() or (out["correct"] > out["n"]).any() or (out["n"] <= 0).any():
        raise MaskcryptError("attacker ladder: counts outside the attack list, or not 0 <= correct <= n > 0")
    out["bucket"] = out["bucket"].astype(int)
    out["accuracy"] = out["correct"] / out["n"]
    out["accuracy_lo"], out["accuracy_hi"] = people_interval(out, th)
    out["chance"] = float(chance)
    return out.sort_values(["bucket", "mask_id", "split", "photos"]).reset_index(drop=True)[COLUMNS]
