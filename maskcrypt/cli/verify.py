"""``maskcrypt verify``: face verification of a run's target masks in the field's protocol."""

from __future__ import annotations

import argparse
from typing import Any

from maskcrypt.core.errors import MaskcryptError


def cmd_verify(args: argparse.Namespace) -> int:
    """Face verification of a run's target masks on a source's pairs, on this machine's (or RAY_ADDRESS's) Ray."""
    from maskcrypt.config import EvalSettings
    from maskcrypt.data.spec import absolute_spec
    from maskcrypt.pipeline import absolute_path
    from maskcrypt.runtime.cluster import init_ray
    from maskcrypt.verification.stage import verify

    gpus = args.eval_gpus if args.eval_gpus is not None else (1.0 if args.device == "cuda" else 0.0)
    if args.device == "cpu" and args.eval_gpus:
        raise MaskcryptError("verify: --device cpu and --eval-gpus contradict each other; give one")
    settings = EvalSettings(actors=args.eval_actors, gpus_per_actor=gpus, precision=args.precision,
                            images_per_chunk=args.chunk)
    init_ray()
    verify(absolute_path(args.run), absolute_spec(args.pairs), mask_ids=args.mask_ids, settings=settings, log=print)
    return 0


def add_parser(sub: Any) -> None:
    """The ``verify`` command(s) on the top-level subparsers."""
    ve = sub.add_parser("verify", help="face verification (10-fold accuracy, TAR@FAR, ROC) of a run's target masks",
                        description="E under each target mask, O clean, O masked and O inpainted on every pair of a "
                                    "source, in Ray evaluation actors (a local Ray starts unless RAY_ADDRESS names "
                                    "a cluster); writes RUN/results/verification.parquet and roc.png")
    ve.add_argument("run", nargs="?", default="runs/default", help="a determined run (default runs/default)")
    ve.add_argument("--pairs", default="", help="source with pairs: bin:lfw.bin, lfw:/data/lfw#split=all, or any "
                                                "labelled source with #pairs=generate (default: the run's test data, "
                                                "pairs generated when it has none)")
    ve.add_argument("--mask-ids", nargs="+", help="verify these library masks instead of the run's targets")
    ve.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ve.add_argument("--chunk", type=int, default=0, help="images per forward pass (0: the device's default)")
    ve.add_argument("--device", default="", choices=("", "cpu", "cuda"),
                    help="cuda: one GPU per evaluation actor (as --eval-gpus 1); cpu: none (the default)")
    ve.add_argument("--eval-actors", type=int, default=2, help="evaluation actors (one mask per task)")
    ve.add_argument("--eval-gpus", type=float, default=None, help="GPUs per evaluation actor")
    ve.set_defaults(func=cmd_verify)
