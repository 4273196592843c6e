"""Unlinkability across masks: can one person's images under mask A be linked to theirs under mask B?

ISO/IEC 24745 asks that two protected references of one person, made for two applications,
cannot be linked. For maskcrypt the two references are the same face under two masks (two
services, or a mask before and after it was reissued). The field's measure is Gomez-Barrero
et al.'s (IEEE TIFS 2018): from *mated* comparison scores (the same person, different photos,
one photo under mask A and the other under mask B) and *non-mated* ones (different people),

* the local measure ``D(s) = p(mated | s) - p(non-mated | s)`` where the likelihood ratio
  ``LR(s) = f_mated(s) / f_non_mated(s)`` times the prior ratio ``omega`` exceeds 1, else 0:
  with omega = 1, ``D(s) = (LR(s) - 1) / (LR(s) + 1)``;
* the global ``D_sys = integral of D(s) f_mated(s) ds``, in [0, 1]: 0 when a score says nothing
  about whether two images are of one person (fully unlinkable), 1 when mated and non-mated
  scores never overlap (fully linkable).

Density estimator (fixed here): histograms on :data:`BINS` equal-width bins over [-1, 1]
(cosine similarities), each normalized by its own count (the two densities separately, as
the paper does; the unequal numbers of mated and non-mated pairs do not bias D). A pair of
the same photo is never compared: under masks A and B it shares every pixel both masks keep.

Pure numpy; the embeddings come from :mod:`maskcrypt.determine.unlinkability`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskcrypt.core.errors import MaskcryptError

#: Histogram bins over the cosine range [-1, 1].
BINS = 100
#: ``results/unlinkability.parquet``'s columns.
COLUMNS = ["mask_a", "mask_b", "split", "model", "d_sys", "mated_pairs", "non_mated_pairs"]


@dataclass(frozen=True)
class Unlinkability:
    """D_sys and what it rests on, with the local curve (bin centres, D(s), both densities) for a plot."""

    d_sys: float
    mated_pairs: int
    non_mated_pairs: int
    centres: np.ndarray
    local: np.ndarray
    mated_density: np.ndarray
    non_mated_density: np.ndarray


def cross_mask_scores(emb_a: np.ndarray, emb_b: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mated and non-mated cosine scores between photos under mask A (rows) and under mask B (columns).

    ``emb_a[i]`` and ``emb_b[i]`` are photo ``i`` under each mask (unit vectors); the diagonal
    (a photo against itself) is left out.
    """
    a, b = np.asarray(emb_a, np.float64), np.asarray(emb_b, np.float64)
    labels = np.asarray(labels)
    if a.shape != b.shape or a.shape[0] != labels.shape[0]:
        raise MaskcryptError(f"unlinkability: {a.shape[0]} and {b.shape[0]} embeddings for {labels.shape[0]} photos")
    sims = a @ b.T
    same = labels[:, None] == labels[None, :]
    other = ~np.eye(len(labels), dtype=bool)
    return sims[same & other], sims[~same]


def unlinkability(mated: np.ndarray, non_mated: np.ndarray, omega: float = 1.0, bins: int = BINS) -> Unlinkability:
    """D_sys and the local D(s) of two score samples (Gomez-Barrero et al. 2018), on a histogram estimator."""
    mated, non_mated = np.asarray(mated, np.float64).ravel(), np.asarray(non_mated, np.float64).ravel()
    if mated.size == 0 or non_mated.size == 0:
        raise MaskcryptError(f"unlinkability: needs mated and non-mated scores, got {mated.size} and "
                             f"{non_mated.size} (too few photos per person, or one person)")
    edges = np.linspace(-1.0, 1.0, bins + 1)
    f_m = np.histogram(np.clip(mated, -1.0, 1.0), edges)[0] / mated.size
    f_n = np.histogram(np.clip(non_mated, -1.0, 1.0), edges)[0] / non_mated.size
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.where(f_n > 0, f_m / np.where(f_n > 0, f_n, 1.0), np.inf)
        ratio = omega * lr
        local = np.where(ratio > 1.0, np.where(np.isinf(ratio), 1.0, (ratio - 1.0) / (ratio + 1.0)), 0.0)
    local = np.where(f_m > 0, local, 0.0)
    return Unlinkability(float(np.clip((local * f_m).sum(), 0.0, 1.0)), int(mated.size), int(non_mated.size),
                         (edges[:-1] + edges[1:]) / 2.0, local, f_m, f_n)
