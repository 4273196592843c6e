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


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Bernoulli KL divergence kl(p || q), with 0 log 0 = 0 (q kept inside (0, 1))."""
    q = np.clip(q, 1e-15, 1 - 1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return a + b


def sampling_bounds(correct: Any, n: Any, population: int, error: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the accuracy over all ``population`` images from ``correct`` of the first ``n`` of a random order.

    The ``n`` images are a uniform sample *without replacement* of the ``population``
    (a prefix of one random permutation), and the bounds are for the accuracy on the
    whole population, which is what full mode measures. Each bound fails with
    probability at most ``error / 2`` (so the interval with at most ``error``), with no
    normal approximation. They are the intersection of two valid bounds, each given
    ``error / 4`` a side:

    * the Chernoff bound in its KL form, ``n kl(p_hat || q) <= log(4 / error)``, which
      holds for sampling without replacement because such sums are dominated in the
      convex order by sampling with replacement (Hoeffding 1963, section 6); tight near
      0 and 1, where E's accuracies sit;
    * the Hoeffding-Serfling bound, half-width ``sqrt((1 - (n - 1) / N) log(4 / error) / (2 n))``,
      which narrows to the exact count as ``n`` reaches ``N`` (Serfling 1974).

    At ``n = population`` both ends are the exact accuracy; at ``n = 0``, [0, 1]. Many
    bounds used together need ``error`` divided among them (a union bound): see
    :meth:`maskcrypt.config.sections.AdaptivePlan.bound_error`.
    """
    k = np.asarray(correct, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    k, m = np.broadcast_arrays(k, m)
    if not 0.0 < error < 1.0:
        raise ValueError(f"error: expected a probability in (0, 1), got {error}")
    safe = np.maximum(m, 1.0)
    p = np.clip(k / safe, 0.0, 1.0)
    budget = np.log(4.0 / error) / safe
    lo_kl, hi_kl = np.zeros_like(p), np.ones_like(p)
    below, above = p.copy(), p.copy()  # bisection brackets: [lo_kl, below] and [above, hi_kl]
    for _ in range(40):  # 2^-40: far below one image in any population
        mid = (lo_kl + below) / 2
        inside = _kl(p, mid) <= budget
        below, lo_kl = np.where(inside, mid, below), np.where(inside, lo_kl, mid)
        mid = (above + hi_kl) / 2
        inside = _kl(p, mid) <= budget
        above, hi_kl = np.where(inside, mid, above), np.where(inside, hi_kl, mid)
    half = np.sqrt(np.clip(1.0 - (m - 1.0) / population, 0.0, 1.0) * np.log(4.0 / error) / (2.0 * safe))
    lo = np.maximum(below, p - half)
    hi = np.minimum(above, p + half)
    exact = m >= population
    lo = np.where(m > 0, np.where(exact, p, np.clip(lo, 0.0, 1.0)), 0.0)
    hi = np.where(m > 0, np.where(exact, p, np.clip(hi, 0.0, 1.0)), 1.0)
    return lo, hi


def hypergeometric_bounds(correct: Any, n: Any, population: int, error: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact bounds on the accuracy over all ``population`` images from ``correct`` of a uniform sample of ``n``.

    The same question as :func:`sampling_bounds`, answered exactly: the ``n`` images are
    drawn without replacement from ``population`` images of which an unknown ``K`` are
    right, so ``correct`` is hypergeometric. The upper bound is the largest ``K`` whose
    lower tail at ``correct`` still exceeds ``error / 2``, the lower bound the smallest
    ``K`` whose upper tail does (each bound fails with probability at most ``error / 2``,
    the interval with at most ``error``; Buonaccorsi 1987 for the construction). No
    approximation: the finite population shrinks the bounds as ``n`` nears ``N``, the
    variance near 0 and 1 keeps them tight where E's accuracies sit, and at ``n = N`` they
    are the exact count. At ``n = 0``, [0, 1]. Vectorized: a bisection over ``K`` for all
    pairs at once (the tails are monotone in ``K``); scipy computes the tails.
    """
    from scipy.stats import hypergeom

    if not 0.0 < error < 1.0:
        raise ValueError(f"error: expected a probability in (0, 1), got {error}")
    k, m = np.broadcast_arrays(np.asarray(correct, dtype=np.int64), np.asarray(n, dtype=np.int64))
    big = int(population)
    if (m < 0).any() or (m > big).any() or (k < 0).any() or (k > m).any():
        raise ValueError(f"hypergeometric bounds: expected 0 <= correct <= n <= {big}")
    tail = error / 2.0
    # K lies in [k, N - (n - k)]: the sample's right answers, plus every unseen image right at most.
    least, most = k.copy(), big - (m - k)
    # Upper: the largest K with P_K(X <= k) > tail (true at K = k, where X <= k always).
    ok, bad = least.copy(), most + 1
    for _ in range(int(np.ceil(np.log2(big + 2))) + 1):
        probe = (ok + bad) // 2
        active = bad - ok > 1
        inside = hypergeom.cdf(k, big, np.minimum(probe, big), m) > tail
        ok = np.where(active & inside, probe, ok)
        bad = np.where(active & ~inside, probe, bad)
    upper = ok
    # Lower: the smallest K with P_K(X >= k) > tail (true at K = N - (n - k), where X >= k always).
    ok, bad = most.copy(), least - 1
    for _ in range(int(np.ceil(np.log2(big + 2))) + 1):
        probe = (ok + bad + 1) // 2
        active = ok - bad > 1
        inside = hypergeom.sf(k - 1, big, np.maximum(probe, 0), m) > tail
        ok = np.where(active & inside, probe, ok)
        bad = np.where(active & ~inside, probe, bad)
    lower = ok
    lo = np.where(m > 0, lower / big, 0.0)
    hi = np.where(m > 0, upper / big, 1.0)
    return lo.astype(np.float64), hi.astype(np.float64)
