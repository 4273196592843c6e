"""The adaptive race without models: its bounds and plans against each other and the oracle, on the same rates.

    python benchmarks/race_simulation.py                         # 2,000 masks x 2,000 images, built-in rates
    python benchmarks/race_simulation.py --quick                 # 600 masks x 400 images, one draw
    python benchmarks/race_simulation.py --masks 2000 --images 13233 --share 0.02   # LFW's size, another share
    python benchmarks/race_simulation.py --rates runs/default/results/per_mask.parquet
    python benchmarks/race_simulation.py --rates /tmp/full.parquet   # benchmarks/adaptive.py --full-cache

Each simulated mask answers each image right with a fixed rate, drawn per bucket from
``--rates`` (a per-mask table with ``bucket`` and ``third``: a run's
``results/per_mask.parquet`` or ``benchmarks/adaptive.py``'s full-mode cache) or, by
default, from the embedded default's per-bucket spread of E's per-mask accuracy (its
run of 2026-12-03, 600 masks x 240 images). Full mode is the whole matrix. The same
pure race the pipeline runs (:func:`maskcrypt.selection.race.simulate_race`) is run:

* **closed-form bounds**: the KL and Hoeffding-Serfling bounds the race had until
  2026-12-06 (``--adaptive-bounds kl-serfling``), at tolerance 0.02;
* **now**: exact hypergeometric bounds, the plan's defaults (or ``--share``, ``--growth``,
  ``--first``), at tolerance 0.02 and 0.01;
* **the oracle** (:func:`maskcrypt.selection.race.oracle_passes`): what a race that knew
  each bucket's k-th accuracy would spend with exact bounds, on the very same draws: the
  limit the reductions are read against.

Reported per race: masked images (= forward passes of E) against full mode's, where they
went (first round, boundary masks, completing the winners), rounds, and over
``--seeds`` draws how often the top k missed full mode's k-th by more than the
tolerance. Ends with ``RESULT race_sim_*`` lines and ``RESULT race_oracle_reduction``.
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
from maskcrypt.selection.race import oracle_passes, race_misses, simulate_race

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
    p.add_argument("--quick", action="store_true", help="600 masks x 400 images, one draw")
    p.add_argument("--masks", type=int, default=2000)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--keep", type=int, default=5, help="masks kept per bucket (the attack list)")
    p.add_argument("--delta", type=float, default=AdaptivePlan.delta)
    p.add_argument("--share", type=float, default=AdaptivePlan.share, help="the plan's share (now)")
    p.add_argument("--growth", type=float, default=AdaptivePlan.growth, help="the plan's growth (now)")
    p.add_argument("--first", type=int, default=0, help="the plan's first round (0: automatic)")
    p.add_argument("--rates", default="", help="a per-mask table (bucket, third) to draw the rates from")
    p.add_argument("--seeds", type=int, default=3, help="draws of the matrix per race")
    args = p.parse_args()
    if args.quick:
        args.masks, args.images, args.seeds = 600, 400, 1
    now = {"delta": args.delta, "share": args.share, "growth": args.growth, "first": args.first}
    races = {
        "closed-form bounds (KL + Hoeffding-Serfling), tolerance 0.02": AdaptivePlan(**now, bounds="kl-serfling"),
        "now (exact bounds), tolerance 0.02": AdaptivePlan(**now, tolerance=0.02),
        "now (exact bounds), tolerance 0.01": AdaptivePlan(**now, tolerance=0.01),
    }
    print(f"{args.masks} masks x {args.images} images, keep {args.keep} per bucket, rates "
          f"{'from ' + args.rates if args.rates else 'built in (the embedded default)'}, {args.seeds} draw(s); "
          f"error probability {args.delta:g}, share {args.share}, growth {args.growth}, first {args.first or 'auto'}")
    draws = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        rates, buckets = draw_rates(args, rng)
        draws.append((rng.random((len(rates), args.images)) < rates[:, None], buckets))
    full = sum(c.size for c, _ in draws)
    results = {}
    for name, plan in races.items():
        spent = rounds_n = missed = 0
        where = {"first": 0, "boundary": 0, "complete": 0}
        t0 = time.perf_counter()
        for correct, buckets in draws:
            counts, rounds = simulate_race(correct, buckets, args.keep, plan)
            spent += sum(r["images"] for r in rounds)
            rounds_n += len(rounds)
            missed += bool(race_misses(correct, buckets, counts, args.keep, plan.tolerance))
            for w in where:
                where[w] += sum(r[f"images_{w}"] for r in rounds)
        results[name] = full / spent
        print(f"{name}: {full / spent:.2f}x fewer masked images than full mode ({spent // args.seeds:,} against "
              f"{full // args.seeds:,}), {rounds_n / args.seeds:.0f} rounds; where they went: "
              + ", ".join(f"{w} {v / spent:.0%}" for w, v in where.items())
              + f"; top k off by more than the tolerance in {missed} of {args.seeds} draw(s); "
              f"{time.perf_counter() - t0:.0f} s")
    oracle = sum(oracle_passes(c, b, args.keep, AdaptivePlan(delta=args.delta)) for c, b in draws)
    print(f"oracle (knows each bucket's {args.keep}-th; exact bounds at delta / 2M; tolerance 0.02): "
          f"{full / oracle:.2f}x fewer ({oracle // args.seeds:,} against {full // args.seeds:,})")
    closed, now02, now01 = results.values()
    print(f"RESULT race_sim_closed_form_reduction {closed:.2f}")
    print(f"RESULT race_sim_now_reduction_tol002 {now02:.2f}")
    print(f"RESULT race_sim_now_reduction_tol001 {now01:.2f}")
    print(f"RESULT race_oracle_reduction {full / oracle:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
