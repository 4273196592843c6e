"""``maskcrypt capacity``: measure generation, library I/O and evaluation for a large library."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError


def cmd_capacity(args: argparse.Namespace) -> int:
    """The capacity measurement (maskcrypt.capacity) into OUT/capacity.json."""
    from maskcrypt.capacity import CapacityConfig, measure
    from maskcrypt.config import EvalSettings
    from maskcrypt.core.fileio import write_json
    from maskcrypt.pipeline import absolute_path
    from maskcrypt.runtime.cluster import init_ray

    if args.quick:
        args.count, args.size, args.images = 2_000, 32, 100
    try:
        devices = tuple(int(x) for x in args.project_devices.split(","))
    except ValueError:
        raise MaskcryptError(f"--project-devices: expected a comma list of counts, got {args.project_devices!r}") \
            from None
    cfg = CapacityConfig(count=args.count, size=args.size, masks=absolute_path(args.masks), arch=args.arch,
                         model=absolute_path(args.model), images=args.images, repeats=args.repeats,
                         keep=args.keep, max_rounds=args.max_rounds, first=args.first,
                         stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
                         project_images=args.project_images, project_devices=devices,
                         **({"width": args.width} if args.width else {}))
    settings = EvalSettings(actors=args.eval_actors, gpus_per_actor=args.eval_gpus, precision=args.precision)
    if set(cfg.stages) - {"read"}:
        init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(absolute_path(args.out) or tmp)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "capacity.json", measure(out, cfg, settings))
        if args.out:
            print(f"capacity report: {out / 'capacity.json'}")
    return 0


def add_parser(sub: Any) -> None:
    """The ``capacity`` command(s) on the top-level subparsers."""
    ca = sub.add_parser("capacity", help="measure generation, library I/O and evaluation for a large library")
    ca.add_argument("--quick", action="store_true", help="2,000 masks at 32 px, 100 images")
    ca.add_argument("--count", type=int, default=100_000, help="masks to generate")
    ca.add_argument("--size", type=int, default=112)
    ca.add_argument("--masks", default="", help="an existing library to copy in instead of generating")
    ca.add_argument("--out", default="", help="directory for the library and capacity.json (default: temporary)")
    ca.add_argument("--arch", default="compact")
    ca.add_argument("--width", type=int, default=0, help="compact recognizer width (default: the pipeline's)")
    ca.add_argument("--model", default="", help="a trained recognizer (folder) instead of untrained weights")
    ca.add_argument("--images", type=int, default=400, help="synthetic test faces")
    ca.add_argument("--repeats", type=int, default=5, help="Table 1 repetitions")
    ca.add_argument("--keep", type=int, default=5, help="adaptive: masks kept per bucket")
    ca.add_argument("--max-rounds", type=int, default=0, help="adaptive: stop after this many rounds (0 = finish)")
    ca.add_argument("--first", type=int, default=0,
                    help="adaptive: test images every mask sees in round 1 (0: fewer the larger the library)")
    ca.add_argument("--stages", default="read,table1,race",
                    help="what runs after the library is built: read (read it back), table1, race")
    ca.add_argument("--eval-actors", type=int, default=2)
    ca.add_argument("--eval-gpus", type=float, default=0.0)
    ca.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ca.add_argument("--project-images", type=int, default=13_233, help="test images of the projection (LFW)")
    ca.add_argument("--project-devices", default="1,8,64", help="device counts of the projection")
    ca.set_defaults(func=cmd_capacity)
