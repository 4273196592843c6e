"""Unlinkability across masks (Gomez-Barrero et al.'s D_sys): hand cases against a brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.verification.unlinkability import BINS, cross_mask_scores, unlinkability


def brute_force_d_sys(mated: list[float], non_mated: list[float], bins: int = BINS) -> float:
    """The definition, bin by bin with loops: D(s) = (LR - 1) / (LR + 1) where LR > 1 (omega = 1), else 0;
    D_sys = sum over bins of D(s) times the mated density's mass there."""
    width = 2.0 / bins
    total = 0.0
    for k in range(bins):
        lo, hi = -1.0 + k * width, -1.0 + (k + 1) * width
        last = k == bins - 1
        f_m = sum(1 for v in mated if lo <= v < hi or (last and v == hi)) / len(mated)
        f_n = sum(1 for v in non_mated if lo <= v < hi or (last and v == hi)) / len(non_mated)
        if f_m == 0:
            continue
        d = 1.0 if f_n == 0 else max(0.0, (f_m / f_n - 1.0) / (f_m / f_n + 1.0))
        total += d * f_m
    return total


def test_fully_separated_scores_are_fully_linkable_and_identical_ones_unlinkable():
    assert unlinkability([0.9, 0.85, 0.95], [-0.5, 0.1, 0.2, 0.0]).d_sys == 1.0
    same = np.linspace(-0.3, 0.7, 50)
    assert unlinkability(same, same).d_sys == 0.0
    assert unlinkability(same, np.concatenate([same, same])).d_sys == 0.0  # densities normalized separately


def test_partial_overlap_equals_the_brute_force_definition():
    rng = np.random.default_rng(7)
    mated = np.clip(rng.normal(0.5, 0.2, 40), -1, 1)
    non_mated = np.clip(rng.normal(0.1, 0.2, 300), -1, 1)
    u = unlinkability(mated, non_mated)
    assert 0.0 < u.d_sys < 1.0
    assert u.d_sys == pytest.approx(brute_force_d_sys(mated.tolist(), non_mated.tolist()), abs=1e-12)
    assert u.mated_pairs == 40 and u.non_mated_pairs == 300
    assert np.isclose(u.mated_density.sum(), 1.0) and ((u.local >= 0) & (u.local <= 1)).all()
    with pytest.raises(MaskcryptError, match="mated and non-mated"):
        unlinkability([], non_mated)


def test_cross_mask_scores_leave_out_the_same_photo():
    """Photo i under mask A against photo j under mask B: mated when the people match and i != j."""
    a = np.eye(3)[[0, 0, 1]]  # photos 0 and 1 of person 7, photo 2 of person 9
    b = np.eye(3)[[0, 1, 1]]
    mated, non_mated = cross_mask_scores(a, b, np.array([7, 7, 9]))
    assert sorted(mated.tolist()) == [0.0, 1.0]  # (0 vs 1): 0, (1 vs 0): 1; never (0 vs 0) or (1 vs 1)
    assert sorted(non_mated.tolist()) == [0.0, 0.0, 0.0, 1.0]
