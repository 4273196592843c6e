"""Confidence intervals of the method's figures: accuracies over test images, and paired differences.

Every accuracy maskcrypt reports is a proportion of test images recognized; the masks
are fixed, so an interval says how much another draw of test images could move the
figure. Pure numpy, vectorized.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np


def _z(confidence: float) -> float:

    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(correct: Any, n: Any, confidence: float = 0.95,
                    population: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``correct / n`` (vectorized; n = 0 gives [0, 1]).

    With ``population`` (the N images the ``n`` were drawn from without replacement),
    the interval is for the accuracy on all N, with the finite-population correction
    ``(N - n) / (N - 1)`` on the variance: it narrows as ``n`` nears N and is the exact
    count at ``n = N``. That is the right bound when the reference is full mode on the
    same N images (the adaptive search).
    """
    k = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z2 = np.full(np.broadcast(k, n).shape, _z(confidence) ** 2)
    if population is not None:
        big = np.asarray(population, dtype=np.float64)
        z2 = z2 * np.clip((big - n) / np.maximum(big - 1.0, 1.0), 0.0, 1.0)
    safe = np.maximum(n, 1.0)
    p = k / safe
    denom = 1.0 + z2 / safe
    centre = (p + z2 / (2 * safe)) / denom
    half = np.sqrt(z2 * (p * (1 - p) / safe + z2 / (4 * safe * safe))) / denom
    lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return lo, hi


def paired_difference_interval(both: Any, first_only: Any, second_only: Any, neither: Any,
                               confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference of two paired proportions and its Newcombe (1998, method 10) interval.

    ``first_only`` counts images right in the first condition only (e.g. recognized on
    the masked image but not after inpainting); the difference is
    ``(first_only - second_only) / n``. Vectorized.
    """
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (both, first_only, second_only, neither))
    n = a + b + c + d
    safe = np.maximum(n, 1.0)
    p1, p2 = (a + b) / safe, (a + c) / safe
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    ad_bc = a * d - b * c
    num = np.where(ad_bc > 0, np.maximum(ad_bc - n / 2.0, 0.0), ad_bc)
    den = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    phi = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    dl = np.sqrt(np.maximum((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = np.sqrt(np.maximum((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    return diff, np.maximum(diff - dl, -1.0), np.minimum(diff + du, 1.0)


