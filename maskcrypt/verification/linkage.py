"""Linkage of identities the attacker never saw: the split into attacker and victims, and the figures (numpy).

The closed-set attack score asks "which of the people I trained on is this?". A
realistic adversary trains on photos of *other* people and links a victim's masked
upload to a clean photo of the victim found elsewhere: 1:N identification (Recall@1)
and 1:1 verification of masked probe against clean photo (TAR at a FAR). The test
identities are split, seeded, into attacker identities (whose photos the attacker's
embedder may train on) and victims (never seen by it); the victims' photos are split
into a clean gallery and probes, and the probes are masked.

Pure functions; the embedder trains in :mod:`maskcrypt.determine.attackers` and the
figures are computed on Ray in :mod:`maskcrypt.determine.linkage`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import clustered_wilson, design_effect
from maskcrypt.verification.protocol import tar_at_far

#: The FARs of linkage verification, and the column of each.
LINKAGE_FARS = {1e-2: "tar_at_far_1e-2", 1e-3: "tar_at_far_1e-3"}
#: A TAR at FAR is reported only where the impostor pairs number at least this many / FAR (ten false accepts).
MIN_FALSE_ACCEPTS = 10
#: ``results/linkage.parquet``'s columns (``impostor_pairs``: what each TAR at FAR rests on).
COLUMNS = ["mask_id", "bucket", "split", "model", "recall_at_1", "recall_at_1_lo", "recall_at_1_hi",
           "recall_at_1_chance", *LINKAGE_FARS.values(), "n_probes", "n_gallery", "victims", "deff",
           "impostor_pairs"]


def split_identities(names: Sequence[str], victims: float, seed: int) -> tuple[list[str], list[str]]:
    """``(victims, attackers)``: a seeded share ``victims`` of the identities ``names``, and the rest (sorted).

    At least one identity on each side when there are two or more; by name, so the same
    test identities give the same split whatever their order.
    """
    unique = sorted({str(n) for n in names})
    if len(unique) < 2:
        return [], unique
    k = min(len(unique) - 1, max(1, round(victims * len(unique))))
    chosen = np.random.default_rng([seed, 0x11CC]).permutation(len(unique))[:k]
    picked = {unique[i] for i in chosen}
    return sorted(picked), [n for n in unique if n not in picked]


@dataclass(frozen=True)
class VictimLayout:
    """Positions (in the test set) of the victims' clean gallery photos and of their probes, with each probe's
    split (0 selection, 1 confirmation); ``dropped``: victims with too few photos for both."""

    gallery: np.ndarray
    probes: np.ndarray
    probe_split: np.ndarray
    dropped: list[str]


def victim_layout(labels: np.ndarray, split: np.ndarray, gallery: np.ndarray, class_names: Sequence[str],
                  victims: Sequence[str], enroll: int, seed: int) -> VictimLayout:
    """Where each victim's clean gallery photos and masked probes come from.

    An open-set test set has its own gallery: the victims' gallery photos are it and their
    probes are the probes. A closed-set one has none: per victim, ``enroll`` photos
    (seeded; at most all but one) form the gallery and the rest are probes, each keeping
    its selection/confirmation split. A victim with fewer than two photos is dropped.
    """
    labels, split, gallery = np.asarray(labels), np.asarray(split), np.asarray(gallery, bool)
    wanted = {str(v) for v in victims}
    ids = [i for i, c in enumerate(class_names) if str(c) in wanted]
    g_pos: list[int] = []
    p_pos: list[int] = []
    dropped: list[str] = []
    rng = np.random.default_rng([seed, 0x6A11])
    for i in ids:
        mine = np.flatnonzero(labels == i)
        if gallery.any():
            g, p = mine[gallery[mine]], mine[~gallery[mine]]
        else:
            order = rng.permutation(mine)
            take = min(enroll, len(mine) - 1)
            g, p = np.sort(order[:take]), np.sort(order[take:])
        if len(g) == 0 or len(p) == 0:
            dropped.append(str(class_names[i]))
            continue
        g_pos.extend(g.tolist())
        p_pos.extend(p.tolist())
    probes = np.asarray(sorted(p_pos), np.int64)
    return VictimLayout(np.asarray(sorted(g_pos), np.int64), probes, split[probes].astype(np.int8), dropped)


def linkage_figures(probes: np.ndarray, probe_labels: np.ndarray, gallery: np.ndarray,
                    gallery_labels: np.ndarray, confidence: float = 0.95) -> dict[str, float | int]:
    """Recall@1 and TAR at each FAR of unit embeddings ``probes`` (masked) against ``gallery`` (clean).

    Recall@1: the share of probes whose most similar gallery photo (cosine) is of the
    same identity; chance is 1 / the gallery's identities. Its interval
    (``recall_at_1_lo``/``_hi``) is over the victims: the probes are clustered by their
    identity and the gallery held fixed, the design-effect Wilson interval
    (:func:`maskcrypt.core.stats.clustered_wilson`), which is what resampling the probe
    identities estimates, without a bootstrap's collapse at 0% or 100%. Verification: every (probe,
    gallery photo) pair, genuine when the identities match; TAR at FAR from
    :func:`maskcrypt.verification.protocol.tar_at_far`, NaN where the impostor pairs are
    fewer than ``MIN_FALSE_ACCEPTS / FAR`` (too few to resolve that FAR), or there is no
    genuine pair.
    """
    probes, gallery = np.asarray(probes, np.float64), np.asarray(gallery, np.float64)
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    if len(probes) == 0 or len(gallery) == 0:
        raise MaskcryptError("linkage: needs at least one probe and one gallery photo")
    sims = probes @ gallery.T
    same = probe_labels[:, None] == gallery_labels[None, :]
    hits = (gallery_labels[sims.argmax(1)] == probe_labels).astype(np.float64)
    _, who = np.unique(probe_labels, return_inverse=True)
    per = np.bincount(who, weights=hits)
    deff = design_effect(per, per, np.bincount(who))
    lo, hi = clustered_wilson(hits.sum(), len(hits), deff, int(who.max()) + 1, confidence)
    out: dict[str, float | int] = {
        "recall_at_1": float(hits.mean()), "recall_at_1_lo": float(lo), "recall_at_1_hi": float(hi),
        "victims": int(who.max()) + 1, "deff": deff,
        "recall_at_1_chance": 1.0 / len(np.unique(gallery_labels)),
        "n_probes": len(probes), "n_gallery": len(gallery), "impostor_pairs": int((~same).sum()),
    }
    for far, column in LINKAGE_FARS.items():
        enough = (~same).sum() >= math.ceil(MIN_FALSE_ACCEPTS / far - 1e-9) and same.any()
        out[column] = tar_at_far(sims.ravel(), same.ravel(), far).tar if enough else float("nan")
    return out
