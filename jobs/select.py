"""Main job: ``python jobs/select.py`` locally, or ``ray job submit -- python jobs/select.py`` on a cluster.

Runs the method on a run directory (default ``runs/default/`` with the embedded
synthetic data), stage by stage, each stage resuming what is already complete:

1. ``prepare``: the selection mask library ``masks/``, E's disjoint training pool
   ``masks_train/``, pictures, ``run.json``;
2. ``train``: O, E and R on Ray Train into ``models/``, then a look at how they do
   on held-out images masked from each bucket (``results/train_quality.json``);
3. ``determine``: Table 1, target buckets, per-mask third accuracy, candidates, the
   inpainting attack, target masks (``results/``, ``targets.json``,
   ``targets.parquet``) and ``report.md``.

Paths are resolved to absolute ones because under ``ray job submit`` the working
directory is a temporary copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the stdlib module ``select``: replace its own folder on
# the import path by the repository root, or ``import select`` (via socket) finds it.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402

from maskcrypt.cli import add_train_arguments, format_mask_stats, train_from_args  # noqa: E402
from maskcrypt.data.spec import absolute_spec  # noqa: E402
from maskcrypt.errors import exit_status  # noqa: E402
from maskcrypt.masks import MaskLibrary  # noqa: E402
from maskcrypt.run import PrepareConfig, RunPaths, prepare, write_json_atomic  # noqa: E402
from maskcrypt.train import format_quality, training_quality  # noqa: E402

DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "default"
STAGES = ("prepare", "train", "determine")


def absolute_path(path: str) -> str:
    """Absolute local path (URIs and "" unchanged): under ray job submit the cwd is a temporary copy."""
    return path if not path or "://" in path else str(Path(path).expanduser().resolve())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = PrepareConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(DEFAULT_RUN), help="run directory (default runs/default/)")
    p.add_argument("--data", "--train-data", dest="data", default=d.data,
                   help="data spec of O's and E's training images; its test split is the default --test-data")
    p.add_argument("--size", type=int, default=d.size, help="image and mask size in pixels")
    p.add_argument("--mask-count", type=int, default=d.mask_count, help="masks in the selection library")
    p.add_argument("--selection-masks", default="", help="use this mask library (e.g. imported NVIDIA masks) as "
                   "the selection library instead of generating one; it is copied into RUN/masks")
    p.add_argument("--mask-seed", type=int, default=d.mask_seed)
    p.add_argument("--train-mask-count", type=int, default=d.train_mask_count, help="masks in E's training pool")
    p.add_argument("--train-mask-seed", type=int, default=d.train_mask_seed)
    p.add_argument("--buckets", default=d.buckets, help="buckets to fill, e.g. 1-6")
    p.add_argument("--restart", action="store_true", help="rebuild a run prepared with other settings")
    p.add_argument("--until", default=STAGES[-1], choices=STAGES, help="last stage to run")
    add_train_arguments(p, with_data=False)
    g = p.add_argument_group("determination")
    g.add_argument("--test-data", default="", help="test images (default: --data, test split)")
    g.add_argument("--table1-mode", default="sampled", choices=("sampled", "full"),
                   help="Table 1: one random mask of the bucket per image and repetition, or every mask x image")
    g.add_argument("--repeats", type=int, default=5, help="Table 1 repetitions (sampled mode)")
    g.add_argument("--rank-mode", default="auto", choices=("auto", "full", "adaptive"),
                   help="per-mask third accuracy: every mask x every selection image (full), or a race on "
                   "confidence bounds (adaptive); auto = adaptive above 1M masked images per model")
    g.add_argument("--adaptive-confidence", type=float, default=0.99, help="adaptive: level of the Wilson bounds")
    g.add_argument("--adaptive-first", type=int, default=50, help="adaptive: images every mask sees first")
    g.add_argument("--adaptive-share", type=float, default=0.1,
                   help="adaptive: share of the open challengers (highest upper bounds) measured further each round")
    g.add_argument("--adaptive-tolerance", type=float, default=0.01,
                   help="adaptive: stop racing masks provably within this accuracy of the top k (ties); 0 = exact")
    g.add_argument("--scoring", default="auto", choices=("auto", "closed", "open"),
                   help="closed set when the test identities are training classes (auto), else open set")
    g.add_argument("--enroll", type=int, default=2, help="open set: gallery images per identity")
    g.add_argument("--confirm-fraction", type=float, default=0.5,
                   help="share of each identity's test images held out for confirmation (0 = none)")
    g.add_argument("--thresholds", default="", help="JSON/YAML file of thresholds (t_enc, t_orig, t_gap, t_drop, "
                   "top_k, attack_top, confidence); fractions in [0, 1]")
    g.add_argument("--per-mask", default="targets", choices=("targets", "all"),
                   help="third accuracy for the target buckets' masks, or every bucket's")
    g.add_argument("--eval-actors", type=int, default=2, help="Ray Data actors of the evaluation pool")
    g.add_argument("--eval-gpus", type=float, default=0.0, help="GPUs per evaluation actor")
    g.add_argument("--per-image", action="store_true", help="also store per-image correctness (bit-packed)")
    g.add_argument("--require-targets", action="store_true", help="exit 3 when no target mask is found")
    g.add_argument("--redetermine", action="store_true",
                   help="discard per-mask results computed with other inputs instead of refusing")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """The stages up to ``--until``; 3 when ``--require-targets`` finds none."""
    config = PrepareConfig(data=args.data, size=args.size, mask_count=args.mask_count,
                           mask_seed=args.mask_seed, train_mask_count=args.train_mask_count,
                           train_mask_seed=args.train_mask_seed, buckets=args.buckets,
                           selection_masks=absolute_path(args.selection_masks))
    args.thresholds = absolute_path(args.thresholds)
    args.data, args.test_data = absolute_spec(args.data), absolute_spec(args.test_data)
    for name in ("inpaint_data", "val_data"):
        setattr(args, name, absolute_spec(getattr(args, name)))
    args.masks = absolute_path(args.masks)
    paths = RunPaths.resolve(args.run)
    print(f"run {paths.root}")
    record = prepare(paths.root, config, restart=args.restart)
    print()
    print(format_mask_stats(MaskLibrary.open(str(paths.masks)).stats()))
    print()
    print(f"pictures: {paths.root}/masks.png, masks_train.png, data.png, encrypted.png")
    print(f"prepared in {record['stages']['prepare']['seconds']}s")
    if STAGES.index(args.until) >= STAGES.index("train"):
        args.train_data = args.data
        print()
        metas = train_from_args(args, str(paths.root))
        print()
        for role, meta in metas.items():
            m = meta["metrics"]
            figure = (f"held-out accuracy {m['test_accuracy']:.1%}" if "test_accuracy" in m
                      else f"hole PSNR {m['hole_psnr']:.2f} dB (mean fill {m['mean_fill_psnr']:.2f} dB)")
            print(f"{role:>10}: {figure} after {meta['epoch']} epochs -> {paths.models / role}")
        if set(metas) == {"original", "encrypted", "inpainter"}:
            quality = training_quality(paths.root, args.data, args.size)
            write_json_atomic(paths.results / "train_quality.json", quality)
            print()
            print(format_quality(quality))
    if STAGES.index(args.until) >= STAGES.index("determine"):
        from maskcrypt.determine import determine, format_table1, format_target
        from maskcrypt.evaluate import AdaptivePlan, EvalSettings
        from maskcrypt.select import Thresholds

        th = Thresholds.from_file(args.thresholds) if args.thresholds else Thresholds()
        settings = EvalSettings(actors=args.eval_actors, gpus_per_actor=args.eval_gpus,
                                precision=args.precision, per_image=args.per_image)
        print()
        result = determine(paths.root, args.test_data or args.data, args.size, th, repeats=args.repeats,
                           seed=args.seed, per_mask=args.per_mask, table1_mode=args.table1_mode,
                           rank_mode=args.rank_mode,
                           adaptive=AdaptivePlan(first=args.adaptive_first, confidence=args.adaptive_confidence,
                                                 tolerance=args.adaptive_tolerance, share=args.adaptive_share,
                                                 seed=args.seed),
                           scoring=args.scoring, confirm_fraction=args.confirm_fraction, enroll=args.enroll,
                           settings=settings, redo=args.redetermine)
        import pandas as pd

        print()
        print("Table 1 (accuracy per bucket, mean ± std over repetitions):")
        print(format_table1(pd.read_parquet(paths.results / "table1.parquet")))
        print()
        if result["targets"]:
            for t in result["targets"]:
                print(format_target(t))
        else:
            print(f"no target mask: {result['reason']['message']}")
        print(f"targets: {paths.root / 'targets.json'}")
        print(f"report: {paths.root / 'report.md'}")
        if args.require_targets and not result["targets"]:
            return 3
    print(f"run record: {paths.run_json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
