"""Main job: ``python jobs/select.py`` locally, or ``ray job submit -- python jobs/select.py`` on a cluster.

Runs the method on a run directory (default ``runs/default/`` with the embedded
synthetic data). Today it prepares the run's inputs (selection mask library, E's
disjoint training pool, pictures, run.json); training, Table 1, candidates, the
inpainting attack and target masks are added by the next stages. Paths are resolved
to absolute ones because under ``ray job submit`` the working directory is a copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the stdlib module ``select``: replace its own folder on
# the import path by the repository root, or ``import select`` (via socket) finds it.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402

from maskcrypt.cli import format_mask_stats  # noqa: E402
from maskcrypt.errors import MaskcryptError  # noqa: E402
from maskcrypt.masks import MaskLibrary  # noqa: E402
from maskcrypt.run import PrepareConfig, RunPaths, prepare  # noqa: E402

DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = PrepareConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(DEFAULT_RUN), help="run directory (default runs/default/)")
    p.add_argument("--data", default=d.data, help="data spec for training and test images (default synthetic:)")
    p.add_argument("--size", type=int, default=d.size, help="image and mask size in pixels")
    p.add_argument("--masks", type=int, default=d.mask_count, help="masks in the selection library")
    p.add_argument("--mask-seed", type=int, default=d.mask_seed)
    p.add_argument("--train-masks", type=int, default=d.train_mask_count, help="masks in E's training pool")
    p.add_argument("--train-mask-seed", type=int, default=d.train_mask_seed)
    p.add_argument("--buckets", default=d.buckets, help="buckets to fill, e.g. 1-6")
    p.add_argument("--restart", action="store_true", help="rebuild a run prepared with other settings")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = PrepareConfig(data=args.data, size=args.size, mask_count=args.masks, mask_seed=args.mask_seed,
                               train_mask_count=args.train_masks, train_mask_seed=args.train_mask_seed,
                               buckets=args.buckets)
        paths = RunPaths.resolve(args.run)
        print(f"run {paths.root}")
        record = prepare(paths.root, config, restart=args.restart)
        print()
        print(format_mask_stats(MaskLibrary.open(str(paths.masks)).stats()))
        print()
        print(f"pictures: {paths.root}/masks.png, masks_train.png, data.png, encrypted.png")
        print(f"prepared in {record['stages']['prepare']['seconds']}s; run record: {paths.run_json}")
    except MaskcryptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
