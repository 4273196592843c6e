"""The adaptive race without models: the race before its guarantee against the race now, on the same rates.

    python benchmarks/race_simulation.py                         # 2,000 masks x 2,000 images, built-in rates
    python benchmarks/race_simulation.py --masks 600 --images 400
    python benchmarks/race_simulation.py --rates runs/default/results/per_mask.parquet
    python benchmarks/race_simulation.py --rates /tmp/full.parquet   # benchmarks/adaptive.py --full-cache

Each simulated mask answers each image right with a fixed rate, drawn per bucket from
``--rates`` (a per-mask table with ``bucket`` and ``third``: a run's
``results/per_mask.parquet`` or ``benchmarks/adaptive.py``'s full-mode cache) or, by
default, from the embedded default's per-bucket spread of E's per-mask accuracy (its
run of 2026-12-03, 600 masks x 240 images). Full mode is the whole matrix. The same
pure race the pipeline runs (:func:`maskcrypt.selection.race.simulate_race`) is run:

* **before**: per-mask 99% Wilson bounds, first round 50, tolerance 0.01 (the race
  before it had an error probability: no overall guarantee);
* **now**: the simultaneous bounds with error probability ``--delta``, the plan's
  automatic first round, at tolerance 0.02 and 0.01.

Reported per race: masked images (= forward passes of E) against full mode's, where they
went (first round, boundary masks, completing the winners), rounds, and over
``--seeds`` draws how often the top k missed full mode's k-th by more than the
tolerance. Ends with ``RESULT race_sim_*`` lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from maskcrypt.config import AdaptivePlan
from maskcrypt.core.stats import wilson_interval
from maskcrypt.selection.race import race_misses, simulate_race

#: E's per-mask accuracy per bucket on the embedded default (mean, std, min, max over 100 masks each).
BUILT_IN = {1: (0.941, 0.022, 0.90, 0.992), 2: (0.934, 0.028, 0.84, 0.992), 3: (0.913, 0.038, 0.78, 0.983),
            4: (0.873, 0.054, 0.74, 0.971), 5: (0.832, 0.077, 0.60, 0.962), 6: (0.739, 0.103, 0.32, 0.921)}


def draw_rates(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    per_bucket = args.masks // 6
    rates, buckets = [], []
    if args.rates:
        table = pd.read_parquet(args.rates)
        groups = {int(b): g["third"].to_numpy() for b, g in table.groupby("bucket") if b > 0}
        for b, values in groups.items():
            size = args.masks // len(groups)
            rates.append(rng.choice(values, size) + rng.normal(0, 0.003, size))
            buckets += [b] * size
    else:
        for b, (mean, std, lo, hi) in BUILT_IN.items():
            rates.append(np.clip(rng.normal(mean, std, per_bucket), lo, hi))
            buckets += [b] * per_bucket
    return np.clip(np.concatenate(rates), 0.01, 0.995), np.asarray(buckets)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--masks", type=int, default=2000)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--keep", type=int, default=5, help="masks kept per bucket (the attack list)")
    p.add_argument("--delta", type=float, default=AdaptivePlan.delta)
    p.add_argument("--rates", default="", help="a per-mask table (bucket, third) to draw the rates from")
    p.add_argument("--seeds", type=int, default=3, help="draws of the matrix per race")
    args = p.parse_args()
    wilson = (lambda k, n, big: wilson_interval(k, n, 0.99, big))  # noqa: E731
    races = {
        "before (99% Wilson per mask, tolerance 0.01)": (AdaptivePlan(first=50, tolerance=0.01), wilson, 0.01),
        f"now (error probability {args.delta:g}, tolerance 0.02)": (AdaptivePlan(delta=args.delta, tolerance=0.02),
                                                                     None, 0.02),
        f"now (error probability {args.delta:g}, tolerance 0.01)": (AdaptivePlan(delta=args.delta, tolerance=0.01),
                                                                     None, 0.01),
    }
    print(f"{args.masks} masks x {args.images} images, keep {args.keep} per bucket, rates "
          f"{'from ' + args.rates if args.rates else 'built in (the embedded default)'}, {args.seeds} draw(s)")
    results = {}
    for name, (plan, bounds, tol) in races.items():
        spent = full = rounds_n = missed = 0
        where = {"first": 0, "boundary": 0, "complete": 0}
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            rates, buckets = draw_rates(args, rng)
            correct = rng.random((len(rates), args.images)) < rates[:, None]
            counts, rounds = simulate_race(correct, buckets, args.keep, plan, bounds=bounds)
            spent += sum(r["images"] for r in rounds)
            full += correct.size
            rounds_n += len(rounds)
            missed += bool(race_misses(correct, buckets, counts, args.keep, tol))
            for w in where:
                where[w] += sum(r[f"images_{w}"] for r in rounds)
        results[name] = full / spent
        print(f"{name}: {full / spent:.2f}x fewer masked images than full mode ({spent // args.seeds:,} against "
              f"{full // args.seeds:,}), {rounds_n / args.seeds:.0f} rounds; where they went: "
              + ", ".join(f"{w} {v / spent:.0%}" for w, v in where.items())
              + f"; top k off by more than the tolerance in {missed} of {args.seeds} draw(s); "
              f"{time.perf_counter() - t0:.0f} s")
    before, now02, now01 = results.values()
    print(f"RESULT race_sim_before_reduction {before:.2f}")
    print(f"RESULT race_sim_now_reduction_tol002 {now02:.2f}")
    print(f"RESULT race_sim_now_reduction_tol001 {now01:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
