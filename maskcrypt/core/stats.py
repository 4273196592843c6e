"""Confidence intervals of the method's figures: accuracies over test images or over people, and paired differences.

Every accuracy maskcrypt reports is a proportion of test images recognized; the masks
are fixed, so an interval says how much another draw of test images could move the
figure. Two kinds:

* **per image** (:func:`wilson_interval`): the images are the sample. Right where the
  claim is about these people's images (closed-set Table 1 and Table 2: the enrolled
  people themselves) and for the race's bounds (full mode on the same images).
* **over people** (:func:`clustered_wilson`): the identities are the sample, their
  photos clustered within them. Right where the claim is about people ("an attacker
  recognizes X% of the people behind the masked images", open-set figures): one
  person's photos are not independent draws, and an interval that treats them as such
  is too narrow. The design-effect Wilson interval: effective n = n / deff, with
  deff = 1 + (m - 1) rho from the intra-identity correlation rho (Kish).

Pure numpy (scipy's t quantile imported where used), vectorized.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _z2(confidence: float, dof: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Squared two-sided quantile: the normal's, or Student's t with ``dof`` degrees of freedom where given."""
    if dof is None:
        return np.full(shape, _z(confidence) ** 2)
    from scipy.stats import t as student

    dof = np.broadcast_to(np.asarray(dof, dtype=np.float64), shape)
    q = student.ppf(0.5 + confidence / 2.0, np.maximum(dof, 1.0))
    return np.where(np.isfinite(dof), q, _z(confidence)) ** 2


def wilson_interval(correct: Any, n: Any, confidence: float = 0.95,
                    population: Any = None, dof: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``correct / n`` (vectorized; n = 0 gives [0, 1]).

    With ``population`` (the N images the ``n`` were drawn from without replacement),
    the interval is for the accuracy on all N, with the finite-population correction
    ``(N - n) / (N - 1)`` on the variance: it narrows as ``n`` nears N and is the exact
    count at ``n = N``. That is the right bound when the reference is full mode on the
    same N images (the adaptive search). ``dof``: use Student's t quantile with these
    degrees of freedom instead of the normal's (the clustered interval's small-sample
    correction, :func:`clustered_wilson`). ``correct`` and ``n`` may be fractional
    (effective counts).
    """
    k = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z2 = _z2(confidence, dof, np.broadcast(k, n).shape)
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
                               confidence: float = 0.95, deff: Any = None,
                               dof: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference of two paired proportions and its Newcombe (1998, method 10) interval.

    ``first_only`` counts images right in the first condition only (e.g. recognized on
    the masked image but not after inpainting); the difference is
    ``(first_only - second_only) / n``. Vectorized. ``deff`` (>= 1, per row) divides
    every cell, so the interval is over people (effective counts, see
    :func:`clustered_wilson`), with ``dof`` for the t quantile.
    """
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (both, first_only, second_only, neither))
    if deff is not None:
        scale = 1.0 / np.maximum(np.asarray(deff, dtype=np.float64), 1.0)
        a, b, c, d = a * scale, b * scale, c * scale, d * scale
    n = a + b + c + d
    safe = np.maximum(n, 1.0)
    p1, p2 = (a + b) / safe, (a + c) / safe
    l1, u1 = wilson_interval(a + b, n, confidence, dof=dof)
    l2, u2 = wilson_interval(a + c, n, confidence, dof=dof)
    ad_bc = a * d - b * c
    num = np.where(ad_bc > 0, np.maximum(ad_bc - n / 2.0, 0.0), ad_bc)
    den = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    phi = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    dl = np.sqrt(np.maximum((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = np.sqrt(np.maximum((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    return diff, np.maximum(diff - dl, -1.0), np.minimum(diff + du, 1.0)


def design_effect(sums: Any, sumsq: Any, n: Any) -> float:
    """Kish's design effect of a mean over images clustered by identity: ``1 + (m_w - 1) rho``, at least 1.

    Per identity: ``n`` images, the sum and the sum of squares of their values (for a
    right/wrong figure both are the count right; for a paired difference in {-1, 0, 1},
    the difference and the discordant count). ``rho`` is the one-way ANOVA estimate of the
    intra-identity correlation, floored at 0, and ``m_w = sum n_i^2 / sum n_i`` the
    size-weighted mean cluster size. One image per identity gives exactly 1 (plain
    intervals), so does a figure of 0% or 100% (no variance to inflate). Identities with
    no image are ignored.
    """
    s, q, m = (np.asarray(v, dtype=np.float64).ravel() for v in (sums, sumsq, n))
    keep = m > 0
    s, q, m = s[keep], q[keep], m[keep]
    k, total = m.size, m.sum()
    if k < 2 or total <= k:
        return 1.0
    mean = s.sum() / total
    between = (s * s / m).sum() - total * mean * mean  # sum n_i (mean_i - mean)^2
    within = q.sum() - (s * s / m).sum()  # sum over identities of the within sum of squares
    msb, msw = between / (k - 1), within / (total - k)
    n0 = (total - (m * m).sum() / total) / (k - 1)
    denom = msb + (n0 - 1.0) * msw
    rho = (msb - msw) / denom if denom > 1e-12 else 0.0
    return float(1.0 + ((m * m).sum() / total - 1.0) * min(max(rho, 0.0), 1.0))


def clustered_wilson(correct: Any, n: Any, deff: Any, identities: Any,
                     confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The design-effect Wilson interval: an accuracy over people whose photos are clustered within them.

    The Wilson interval on the effective sample ``n / deff`` (``correct / deff`` right),
    with Student's t quantile on ``identities - 1`` degrees of freedom, the usual
    small-sample correction when the clusters are few (40 identities: 2.02 in place of
    1.96). ``deff`` from :func:`design_effect`. At one image per identity it is the plain
    Wilson interval (up to the t quantile); unlike a percentile bootstrap it does not
    collapse to a point at 0% or 100%. Vectorized.
    """
    scale = 1.0 / np.maximum(np.asarray(deff, dtype=np.float64), 1.0)
    dof = np.maximum(np.asarray(identities, dtype=np.float64) - 1.0, 1.0)
    return wilson_interval(np.asarray(correct, dtype=np.float64) * scale, np.asarray(n, dtype=np.float64) * scale,
                           confidence, dof=dof)


def encode_counts(values: Any) -> bytes:
    """Per-identity counts as they travel in count tables (``idc:<column>``, ``idn``): little-endian int32 bytes."""
    return np.asarray(values, dtype="<i4").tobytes()


def decode_counts(blob: Any) -> np.ndarray:
    """The inverse of :func:`encode_counts` (an int64 array)."""
    return np.frombuffer(bytes(blob), dtype="<i4").astype(np.int64)


#: Count-table columns of per-identity counts: ``idn`` the probes of each identity of the row's split,
#: ``idc:<column>`` the count of ``<column>`` per identity, both in the split's sorted identity order.
IDN, IDC = "idn", "idc:"


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
