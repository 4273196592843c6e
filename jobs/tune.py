"""Threshold search: ``python jobs/tune.py`` or ``ray job submit --working-dir . -- python jobs/tune.py``.

Searches t_gap, t_enc, t_orig, t_drop and top_k on Ray Tune over the tables a select run
wrote (selection split only, no model run) and writes ``RUN/tune/best_thresholds.json``,
a file ``jobs/select.py --thresholds`` accepts, with the Pareto table and plot and the
tuned choice's figures on the held-out confirmation split (``RUN/tune/tune.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from maskcrypt.errors import exit_status  # noqa: E402

DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(DEFAULT_RUN),
                   help="a run with results/table1 and table2 (default runs/default/)")
    b = p.add_argument_group("objective: maximize E's accuracy subject to")
    b.add_argument("--max-o-masked", type=float, default=0.5,
                   help="privacy budget: O's accuracy on masked images, every chosen mask (default 0.5)")
    b.add_argument("--max-o-inpainted", type=float, default=0.5,
                   help="privacy budget: O's accuracy on inpainted images, every chosen mask (default 0.5)")
    b.add_argument("--min-drop", type=float, default=0.0, help="floor on every chosen mask's inpainting drop")
    b.add_argument("--utility", default="mean", choices=("mean", "best"),
                   help="E's accuracy averaged over the chosen masks, or the best one's (what mask=best serves)")
    s = p.add_argument_group("search")
    s.add_argument("--search", default="random", choices=("random", "grid"))
    s.add_argument("--samples", type=int, default=64, help="random search: trials")
    s.add_argument("--grid-points", type=int, default=4, help="grid search: values per threshold")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trial-cpus", type=float, default=0.25, help="CPUs per trial (trials are table look-ups)")
    args = p.parse_args(argv)
    args.run = str(Path(args.run).resolve())  # under ray job submit the working directory is a copy
    return args


def run(args: argparse.Namespace) -> int:
    import ray

    from maskcrypt.errors import MaskcryptError
    from maskcrypt.tune import Budget, search

    budget = Budget(o_masked=args.max_o_masked, o_inpainted=args.max_o_inpainted, min_drop=args.min_drop,
                    utility=args.utility)
    if args.samples < 1 or args.grid_points < 2:
        raise MaskcryptError(f"--samples must be >= 1 and --grid-points >= 2 (got {args.samples}, {args.grid_points})")
    ray.init()
    summary = search(args.run, budget, mode=args.search, samples=args.samples, grid_points=args.grid_points,
                     seed=args.seed, trial_cpus=args.trial_cpus)
    print(f"best thresholds: {summary['best_thresholds']}")
    if "note" in summary:
        print(summary["note"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
