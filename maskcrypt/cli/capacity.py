"""``maskcrypt capacity``: measure generation, library I/O and evaluation for a large library."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError

#: ``maskcrypt determine``'s test-set flags, shared (the same names, types and defaults): with ``--model``.
TEST_FIELDS = ("determine.test_data", "determine.scoring", "determine.enroll", "determine.confirm_fraction")


def _test_flags() -> list[tuple[tuple[str, ...], tuple[str, ...], dict[str, Any], str]]:
    """The rows of :data:`~maskcrypt.cli.flags.RUN_FLAGS` for :data:`TEST_FIELDS`; ``--test-data``'s help says
    what it means here (there is no ``--data`` to default to)."""
    from maskcrypt.cli.flags import RUN_FLAGS

    return [(names, fields, kwargs, "the test images E is scored on, a data spec (needs --model)"
             if fields == ("determine.test_data",) else text)
            for names, fields, kwargs, text in RUN_FLAGS if fields[0] in TEST_FIELDS]


def cmd_capacity(args: argparse.Namespace) -> int:
    """The capacity measurement (maskcrypt.capacity) into OUT/capacity.json."""
    from maskcrypt.capacity import CapacityConfig, measure
    from maskcrypt.cli.flags import given
    from maskcrypt.config import DetermineConfig, EvalSettings
    from maskcrypt.core.fileio import write_json
    from maskcrypt.data.spec import absolute_spec
    from maskcrypt.pipeline import absolute_path
    from maskcrypt.runtime.cluster import init_ray

    if args.quick:
        args.count, args.images = 2_000, 100
        args.size = args.size or (0 if args.run or args.model else 32)  # a run's or model's E sets its own
    try:
        devices = tuple(int(x) for x in args.project_devices.split(","))
    except ValueError:
        raise MaskcryptError(f"--project-devices: expected a comma list of counts, got {args.project_devices!r}") \
            from None
    test = {field.split(".", 1)[1]: value for field, value in given(args, _test_flags()).items()}
    if "test_data" in test:
        test["test_data"] = absolute_spec(test["test_data"])
    cfg = CapacityConfig(count=args.count, size=args.size, masks=absolute_path(args.masks), arch=args.arch,
                         model=absolute_path(args.model), run=absolute_path(args.run),
                         determine=DetermineConfig(**test) if test else None, images=args.images,
                         repeats=args.repeats, keep=args.keep, max_rounds=args.max_rounds, first=args.first,
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
    from maskcrypt.cli.flags import add_flags

    ca = sub.add_parser("capacity", help="measure generation, library I/O and evaluation for a large library")
    ca.add_argument("--quick", action="store_true", help="2,000 masks at 32 px (or E's size), 100 images")
    ca.add_argument("--count", type=int, default=0,
                    help="masks to generate (default 100,000; with --run and no --masks: the run's own library)")
    ca.add_argument("--size", type=int, default=0,
                    help="image and mask size (default: E's with --run or --model, else the --masks library's, "
                         "else 112)")
    ca.add_argument("--masks", default="", help="an existing library to copy in instead of generating")
    ca.add_argument("--out", default="", help="directory for the library and capacity.json (default: temporary)")
    ca.add_argument("--arch", default="compact")
    ca.add_argument("--width", type=int, default=0, help="compact recognizer width (default: the pipeline's)")
    ca.add_argument("--run", default="",
                    help="a trained run: its E, and its test split scored as its determination scores it (open or "
                         "closed set, gallery, selection split, seed); the race keeps its attack_top")
    ca.add_argument("--model", default="", help="a trained recognizer (folder) instead of untrained weights")
    ca.add_argument("--images", type=int, default=400,
                    help="synthetic test faces (with --run or --test-data: the faces of the bare-forward baseline)")
    ca.add_argument("--repeats", type=int, default=5, help="Table 1 repetitions")
    ca.add_argument("--keep", type=int, default=0,
                    help="adaptive: masks kept per bucket (default: the run's attack_top with --run, else 5)")
    ca.add_argument("--max-rounds", type=int, default=0, help="adaptive: stop after this many rounds (0 = finish)")
    ca.add_argument("--first", type=int, default=0,
                    help="adaptive: test images every mask sees in round 1 (0: fewer the larger the library)")
    ca.add_argument("--stages", default="read,table1,race",
                    help="what runs after the library is built: read (read it back), table1, race")
    ca.add_argument("--eval-actors", type=int, default=2)
    ca.add_argument("--eval-gpus", type=float, default=0.0)
    ca.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ca.add_argument("--project-images", type=int, default=13_233, metavar="N",
                    help="test images of the projection (default 13,233: LFW)")
    ca.add_argument("--project-devices", default="1,8,64", metavar="LIST",
                    help="device counts of the projection (default 1,8,64)")
    add_flags(ca, _test_flags(), "test set, with --model (default: synthetic faces; --run brings its own)")
    ca.set_defaults(func=cmd_capacity)
