"""The adaptive race's error probability, by simulation: known correctness, full mode = the whole matrix.

No model and no Ray: each simulated mask answers each image right with a known rate,
full mode's accuracy is the realized accuracy on all images, and the race
(:func:`maskcrypt.selection.race.run_race`, the pipeline's own loop and rule) sees
prefixes of the same matrix. Its promise: every mask it ranks in a bucket's top k is
within the tolerance of full mode's k-th, except with probability at most ``delta``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskcrypt.config import AdaptivePlan
from maskcrypt.core.stats import sampling_bounds
from maskcrypt.selection.race import race_misses, simulate_race

KEEP = 3
SEEDS = 24


def _matrix(seed: int, per_bucket: int = 20, buckets: int = 2, images: int = 240):
    """Rates bunched at the top of each bucket (the hard case: many masks near the k-th), one draw per seed."""
    rng = np.random.default_rng(seed)
    rates = np.concatenate([0.92 - 0.03 * b - rng.gamma(1.0, 0.04, per_bucket) for b in range(buckets)])
    correct = rng.random((len(rates), images)) < np.clip(rates, 0.05, 0.99)[:, None]
    return correct, np.repeat(np.arange(1, buckets + 1), per_bucket)


def _failures(plan: AdaptivePlan, bound_error: float | None = None) -> tuple[int, float]:
    missed, spent, full = 0, 0, 0
    for seed in range(SEEDS):
        correct, buckets = _matrix(seed)
        counts, rounds = simulate_race(correct, buckets, KEEP, plan, bound_error=bound_error)
        missed += bool(race_misses(correct, buckets, counts, KEEP, plan.tolerance))
        spent += sum(r["images"] for r in rounds)
        full += correct.size
    return missed, full / spent


def test_the_race_fails_at_most_delta_of_the_time_and_the_check_can_see_failures():
    plan = AdaptivePlan(delta=0.05, tolerance=0.02)
    missed, saving = _failures(plan)
    assert missed / SEEDS <= plan.delta, missed
    assert saving > 1.0  # it did race: fewer masked images than full mode
    # The same check on a race whose bounds ignore the union (each bound wrong 90% of the time, no tolerance)
    # finds failures: a broken guarantee would not pass unnoticed.
    broken, _ = _failures(AdaptivePlan(delta=0.05, tolerance=0.0, first=16), bound_error=0.9)
    assert broken >= 2, broken


def test_sampling_bounds_cover_the_population_accuracy_and_close_at_the_end():
    # Every prefix of one random order of 500 images, 95% right: the bounds at error 0.01 hold (they must, at
    # each n, with probability >= 0.99; across 2,000 draws the rate of any miss stays near that or below).
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


def test_the_race_releases_each_mask_once_and_never_measures_it_again():
    """``release`` (the open-set actors drop a mask's gallery centroids on it) comes after a mask's last round."""
    from maskcrypt.selection.race import run_race

    correct, buckets = _matrix(3)
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

    _, rounds = run_race(masks, correct.shape[1], KEEP, AdaptivePlan(first=16), measure, release=release)
    assert len(rounds) > 2 and set(released) == set(masks["mask_id"])  # a finished race releases every mask
    assert all(max(measured[m]) <= r for m, r in released.items())
    assert any(r < len(rounds) for r in released.values())  # some are released early, not all at the end
