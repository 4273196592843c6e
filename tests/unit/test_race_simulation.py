"""The adaptive race's error probability, by simulation: known correctness, full mode = the whole matrix.

No model and no Ray: each simulated mask answers each image right with a known rate,
full mode's accuracy is the realized accuracy on all images, and the race
(:func:`maskcrypt.selection.race.run_race`, the pipeline's own loop and rule) sees
prefixes of the same matrix. Its promise: every mask it ranks in a bucket's top k is
within the tolerance of full mode's k-th, except with probability at most ``delta``.
Misses are judged on the ranking the determination itself takes from the counts
(:func:`~maskcrypt.selection.rules.rank_masks`).
"""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from maskcrypt.config import AdaptivePlan
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import hypergeometric_bounds, sampling_bounds
from maskcrypt.selection.race import CachedBounds, oracle_passes, race_misses, run_race, simulate_race

#: The calibrated test's rates (see :func:`_boundary`): per bucket one mask at 0.6 and five at 0.57, a gap just
#: past the 0.02 tolerance, 100 faces, steps of 4, 8, 16 ... faces. Its draws are seeded 1000 + i.
BOUNDARY = {"buckets": 30, "decoys": 5, "rate": 0.6, "gap": 0.03, "images": 100}
BOUNDARY_PLAN = AdaptivePlan(first=4, growth=2.0, tolerance=0.02, delta=0.05)
DRAWS = 60


def _boundary(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rates that sit on the race's boundary: in each bucket (keep 1) one best mask and five a gap just past the
    tolerance below it. A failed bound of the best mask, or of the one the race has in front, is what it takes to
    pick a mask outside the tolerance: many buckets make many such chances in one draw."""
    rng = np.random.default_rng(1000 + seed)
    per = 1 + BOUNDARY["decoys"]
    rates = np.tile(np.r_[BOUNDARY["rate"], np.full(BOUNDARY["decoys"], BOUNDARY["rate"] - BOUNDARY["gap"])],
                    BOUNDARY["buckets"])
    correct = rng.random((len(rates), BOUNDARY["images"])) < rates[:, None]
    return correct, np.repeat(np.arange(1, BOUNDARY["buckets"] + 1), per)


def _boundary_misses(error: float) -> int:
    """Draws (of :data:`DRAWS`) in which the race, every bound at ``error``, ranks a mask outside the tolerance."""
    bounds = CachedBounds(BOUNDARY_PLAN.bounds, error)  # one population and error: reused across draws
    missed = 0
    for seed in range(DRAWS):
        correct, buckets = _boundary(seed)
        counts, _ = simulate_race(correct, buckets, 1, BOUNDARY_PLAN, bounds=bounds)
        missed += bool(race_misses(correct, buckets, counts, 1, BOUNDARY_PLAN.tolerance))
    return missed


def test_on_boundary_rates_the_union_bound_is_what_keeps_the_race_right():
    """Calibrated: each bound at delta (no union) misses in far more than delta of the draws; the race's own error
    (delta over every mask and step) misses in at most one of 60.

    How it can fail: with the union bound taken away (``error = delta`` per bound, as the
    race had before its guarantee) the same rule ranks a mask outside the tolerance in 28
    of these 60 draws (measured when written); with it, in none. A union that forgot the
    masks and counted only the 5 steps (delta / 5 per bound) misses in 3, so the second
    assertion also catches a union bound taken over too little.
    """
    correct, _ = _boundary(0)
    union = BOUNDARY_PLAN.bound_error(len(correct), correct.shape[1], 1, BOUNDARY["buckets"])
    assert union < BOUNDARY_PLAN.delta / 100  # 180 masks x 5 steps
    without = _boundary_misses(BOUNDARY_PLAN.delta)
    assert without >= 0.2 * DRAWS, without
    assert _boundary_misses(union) <= 1


def _bunched(seed: int, per_bucket: int = 20, buckets: int = 4, images: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Rates bunched at the top of each bucket (many masks near the k-th, as on held-out faces)."""
    rng = np.random.default_rng(seed)
    rates = np.concatenate([0.92 - 0.03 * b - rng.gamma(1.0, 0.03, per_bucket) for b in range(buckets)])
    correct = rng.random((len(rates), images)) < np.clip(rates, 0.05, 0.99)[:, None]
    return correct, np.repeat(np.arange(1, buckets + 1), per_bucket)


@pytest.mark.parametrize("keep", [1, 3])
def test_the_rule_never_misses_when_every_interval_holds_the_truth(keep):
    """The decision logic alone: adversarial intervals (always holding full mode's accuracy, placed to mislead).

    With keep 3 the settling test's cap (the keep-th highest upper bound of the bucket) is in play too."""
    rng = np.random.default_rng(5)
    for draw in range(30):
        correct, buckets = _boundary(draw) if keep == 1 else _bunched(draw)
        truth = correct.mean(axis=1)
        push = rng.random(len(truth))  # per mask, where in its interval the truth sits (0: at the top)

        def bounds(k, n, big, truth=truth, push=push):
            del k  # the counts are ignored: the interval is built around the truth, exact once n = N
            width = np.where(n >= big, 0.0, 0.6 / np.sqrt(np.maximum(n, 1)))
            return np.clip(truth - push * width, 0, 1), np.clip(truth + (1 - push) * width, 0, 1)

        counts, _ = simulate_race(correct, buckets, keep, BOUNDARY_PLAN, bounds=bounds)
        assert race_misses(correct, buckets, counts, keep, BOUNDARY_PLAN.tolerance) == [], draw


def test_misses_are_judged_on_the_pipelines_ranking_complete_masks_first():
    """A mask seen on a few lucky faces outranks a complete one by accuracy, never in rank_masks: not a miss."""
    correct = np.zeros((2, 10), bool)
    correct[0, :9] = True  # full mode: 0.9, measured on every face
    correct[1, :2] = True  # full mode: 0.2, but 2 of its first 2 faces right
    counts = pd.DataFrame({"mask_id": ["m000000", "m000001"], "n": [10, 2], "correct_E": [9, 2]})
    assert race_misses(correct, np.array([1, 1]), counts, 1, 0.02) == []
    complete = counts.assign(n=[10, 10], correct_E=[9, 2])
    assert race_misses(correct, np.array([1, 1]), complete.assign(correct_E=[1, 9]), 1, 0.02) == [1]


def test_a_mask_measured_off_the_plans_steps_stops_the_race():
    """The union bound counts the plan's steps: a count anywhere else is refused, not bounded."""
    masks = pd.DataFrame({"mask_id": ["a", "b"], "bucket": [1, 1]})

    def off_by_one(todo: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"mask_id": todo["mask_id"], "n": todo["stop"] - todo["start"] + 1, "correct_E": 1})

    with pytest.raises(MaskcryptError, match="off the plan's steps"):
        run_race(masks, 100, 1, AdaptivePlan(first=10), off_by_one)


def test_hypergeometric_bounds_equal_the_tails_by_brute_force():
    """On a small population, each bound is the extreme K whose exact tail at the count still exceeds error / 2."""
    big, error = 12, 0.2

    def tail(K: int, n: int, xs: range) -> float:  # P(X in xs) when n of the big images are drawn, K of them right
        return sum(comb(K, x) * comb(big - K, n - x) for x in xs) / comb(big, n)

    for n in range(big + 1):
        for k in range(n + 1):
            feasible = [K for K in range(big + 1) if k <= K and n - k <= big - K]
            want_hi = max(K for K in feasible if tail(K, n, range(k + 1)) > error / 2)
            want_lo = min(K for K in feasible if tail(K, n, range(k, n + 1)) > error / 2)
            lo, hi = hypergeometric_bounds(k, n, big, error)
            assert (round(float(lo) * big), round(float(hi) * big)) == (want_lo, want_hi), (n, k)


def test_hypergeometric_bounds_cover_close_at_the_end_and_are_monotone():
    rng = np.random.default_rng(0)
    population, error, misses, draws = 400, 0.05, 0, 1500
    for _ in range(draws):
        answers = rng.random(population) < rng.uniform(0.5, 0.99)
        n = int(rng.integers(1, population))
        lo, hi = hypergeometric_bounds(answers[:n].sum(), n, population, error)
        misses += not (lo <= answers.mean() <= hi)
    assert misses / draws <= error  # the interval fails with probability at most ``error``
    lo, hi = hypergeometric_bounds([0, 376, 400], [0, 400, 400], population, error)
    assert (lo[0], hi[0]) == (0.0, 1.0) and lo[1] == hi[1] == 0.94 and lo[2] == hi[2] == 1.0
    k = np.arange(0, 101)
    lo, hi = hypergeometric_bounds(k, 100, 1000, 0.01)
    assert (np.diff(lo) >= 0).all() and (np.diff(hi) >= 0).all() and (lo <= k / 100).all() and (hi >= k / 100).all()
    # More faces seen with the same rate: narrower.
    wide = np.subtract(*hypergeometric_bounds(90, 100, 1000, 0.01)[::-1])
    narrow = np.subtract(*hypergeometric_bounds(900, 1000, 1000 * 2, 0.01)[::-1])
    assert narrow < wide
    # Tighter than the closed-form bounds at the same error, most of all at mid-n of a finite population.
    exact_lo, exact_hi = hypergeometric_bounds(950, 1000, 2000, 1e-6)
    loose_lo, loose_hi = sampling_bounds(950, 1000, 2000, 1e-6)
    assert loose_lo < exact_lo <= 0.95 <= exact_hi < loose_hi
    cached = CachedBounds("hypergeometric", 0.01)
    got = cached(k, np.full(k.shape, 100), 1000)
    assert np.array_equal(got[0], lo) and np.array_equal(got[1], hi) and len(cached.known) == 101
    with pytest.raises(ValueError, match="error"):
        hypergeometric_bounds(1, 2, 10, 0.0)
    with pytest.raises(ValueError, match="correct <= n"):
        hypergeometric_bounds(3, 2, 10, 0.1)


def test_sampling_bounds_cover_the_population_accuracy_and_close_at_the_end():
    # The closed-form bounds (--adaptive-bounds kl-serfling): every prefix of one random order of 500 images, 95%
    # right, at error 0.01.
    rng = np.random.default_rng(0)
    population = 500
    misses = 0
    for _ in range(2000):
        answers = rng.random(population) < 0.95
        truth = answers.mean()
        n = int(rng.integers(1, population))
        lo, hi = sampling_bounds(answers[:n].sum(), n, population, 0.01)
        misses += not (lo <= truth <= hi)
    assert misses / 2000 <= 0.01
    lo, hi = sampling_bounds([0, 470, 500], [0, 500, 500], population, 0.01)
    assert (lo[0], hi[0]) == (0.0, 1.0) and lo[1] == hi[1] == 0.94 and lo[2] == hi[2] == 1.0
    with pytest.raises(ValueError, match="error"):
        sampling_bounds(1, 2, 10, 0.0)


def test_the_plan_divides_delta_over_every_mask_and_step_and_maps_the_old_confidence():
    plan = AdaptivePlan(delta=0.05)
    levels = len(plan.steps(2000, plan.first_for(600, 2000, 5, 6))) - 1
    assert plan.bound_error(600, 2000, 5, 6) == pytest.approx(0.05 / (600 * levels))
    assert AdaptivePlan(confidence=0.99).delta == pytest.approx(0.01)  # --adaptive-confidence keeps working
    # The first round shrinks as the library grows (and stays within its limits).
    firsts = [AdaptivePlan().first_for(m, 2000, 5, 6) for m in (60, 600, 6000, 60000)]
    assert firsts == sorted(firsts, reverse=True) and min(firsts) >= 16 and max(firsts) <= 64
    assert AdaptivePlan(first=50).first_for(60000, 2000, 5, 6) == 50
    # A selection split smaller than the smallest first round: every mask sees all of it at once.
    assert AdaptivePlan().first_for(60000, 10, 5, 6) == 10 and AdaptivePlan(first=50).first_for(60, 10, 5, 6) == 10
    assert list(AdaptivePlan().steps(10, 10)) == [10]
    with pytest.raises(MaskcryptError, match="--adaptive-bounds"):
        AdaptivePlan(bounds="wilson")


def test_the_oracle_measures_winners_fully_and_stops_the_rest_at_the_first_clear_step():
    """The limit beside every reduction: by hand on two buckets, and never above the race it bounds."""
    correct = np.zeros((4, 200), bool)
    correct[0, :190] = True  # bucket 1: the winner (0.95)
    correct[1, ::2] = True  # bucket 1: 0.5, cleared of 0.95 + 0.02 after a few faces
    correct[2:, :] = True  # bucket 2: two perfect masks: the k-th plus the tolerance is past 1, one face each
    need = oracle_passes(correct, np.array([1, 1, 2, 2]), 1, AdaptivePlan())
    assert 200 + 200 + 1 < need < 200 + 200 + 1 + 40
    rates = np.random.default_rng(1).uniform(0.7, 0.95, 60)
    matrix = np.random.default_rng(2).random((60, 400)) < rates[:, None]
    buckets = np.repeat([1, 2, 3], 20)
    _, rounds = simulate_race(matrix, buckets, 2, AdaptivePlan())
    assert oracle_passes(matrix, buckets, 2, AdaptivePlan()) <= sum(r["images"] for r in rounds)


def test_the_race_releases_each_mask_once_and_never_measures_it_again():
    """``release`` (the open-set actors drop a mask's gallery centroids on it) comes after a mask's last round."""
    correct, buckets = _bunched(3, buckets=2, images=240)
    cum = np.concatenate([np.zeros((len(correct), 1), np.int64), np.cumsum(correct, axis=1)], axis=1)
    masks = pd.DataFrame({"mask_id": [f"m{i:03d}" for i in range(len(correct))], "bucket": buckets})
    released: dict[str, int] = {}
    measured: dict[str, list[int]] = {}
    rounds_seen = [0]

    def measure(todo: pd.DataFrame) -> pd.DataFrame:
        rounds_seen[0] += 1
        i = todo["mask_id"].str[1:].astype(int).to_numpy()
        for m in todo["mask_id"]:
            measured.setdefault(m, []).append(rounds_seen[0])
        start, stop = todo["start"].to_numpy(), todo["stop"].to_numpy()
        return pd.DataFrame({"mask_id": todo["mask_id"].to_numpy(), "n": stop - start,
                             "correct_E": cum[i, stop] - cum[i, start]})

    def release(ids: list[str]) -> None:
        for m in ids:
            assert m not in released, m
            released[m] = rounds_seen[0]

    _, rounds = run_race(masks, correct.shape[1], 3, AdaptivePlan(first=16), measure, release=release)
    assert len(rounds) > 2 and set(released) == set(masks["mask_id"])  # a finished race releases every mask
    assert all(max(measured[m]) <= r for m, r in released.items())
    assert any(r < len(rounds) for r in released.values())  # some are released early, not all at the end
