"""``maskcrypt masks ...``: generate, import, inspect and export mask libraries."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any


def _size(text: str) -> tuple[int, int]:
    from maskcrypt.data.spec import parse_size

    return parse_size(text, "--size")


def cmd_masks_generate(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary, StrokeStyle, parse_buckets
    from maskcrypt.masks.generate import generate_into

    h, w = _size(args.size)
    lib = MaskLibrary.open_or_create(args.out, h, w)
    style = StrokeStyle(box_probability=args.boxes)
    t0 = time.perf_counter()
    result = generate_into(lib, args.count, args.seed, parse_buckets(args.buckets, lib.edges), style,
                           chunk=args.chunk, progress=not args.quiet)
    dt = time.perf_counter() - t0
    print(f"generated {result.added} masks into {args.out} in {dt:.1f}s ({result.added / max(dt, 1e-9):.0f} masks/s)"
          + (f"; {result.duplicates} duplicate(s) skipped" if result.duplicates else ""))
    return 0


def cmd_masks_import(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary, import_masks

    h, w = _size(args.size)
    lib = MaskLibrary.open_or_create(args.out, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = import_masks(args.src, lib, hole_value=args.hole_value, strict=args.strict,
                              max_grey_fraction=args.max_grey)
    print(f"imported {report.added} masks into {args.out}; {report.duplicates} duplicate(s) skipped")
    for name, reason in report.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped ({len(report.not_masks)} not masks, "
              f"{len(report.unreadable)} unreadable); --strict makes that an error", file=sys.stderr)
    return 0


def cmd_masks_stats(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary

    lib = MaskLibrary.open(args.lib)
    stats = lib.stats()
    orphans = lib.orphans()
    stats["uncommitted_parts"] = len(orphans)
    stats["uncommitted_files"] = orphans
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        from maskcrypt.pipeline import format_mask_stats

        print(format_mask_stats(stats))
        if orphans:
            print(f"{len(orphans)} uncommitted file(s) from an interrupted write: maskcrypt ignores them, "
                  "outside readers (pandas, DuckDB, ...) read the .parquet ones; delete them:")
            for rel in orphans:
                print(f"  {args.lib.rstrip('/')}/{rel}")
    return 0


def cmd_masks_show(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.reporting.pictures import mask_grid, save_png

    lib = MaskLibrary.open(args.lib)
    picture = mask_grid(lib, ids=args.ids, per_bucket=args.per_bucket)
    save_png(picture, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_masks_export(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary, export_masks

    lib = MaskLibrary.open(args.lib)
    written = export_masks(lib, args.out, args.ids, args.format)
    print(f"wrote {len(written)} {args.format} file(s) to {args.out}"
          + (" (white = hole)" if args.format == "png" else " (uint8, 0 = occluded, 1 = kept)"))
    return 0


def add_parser(sub: Any) -> None:
    """The ``masks`` command(s) on the top-level subparsers."""
    masks = sub.add_parser("masks", help="build, inspect and export mask libraries")
    msub = masks.add_subparsers(dest="command", required=True)
    g = msub.add_parser("generate", help="generate free-form masks evenly over buckets")
    g.add_argument("--out", required=True, help="library directory (created or appended to)")
    g.add_argument("--count", type=int, required=True, metavar="N", help="masks to generate, spread over the buckets")
    g.add_argument("--size", default="112", help="N or HxW pixels (default 112)")
    g.add_argument("--seed", type=int, default=0, metavar="N",
                   help="generator seed: mask ids are g<seed>-<index> (default 0)")
    g.add_argument("--buckets", default="1-6", help="buckets to fill, e.g. 1-6 or 5,6 (default 1-6)")
    g.add_argument("--boxes", type=float, default=0.0, metavar="P",
                   help="probability that a drawing step adds a box instead of a stroke segment")
    g.add_argument("--chunk", type=int, default=10_000, metavar="N", help="masks per written part (default 10,000)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.set_defaults(func=cmd_masks_generate)

    i = msub.add_parser("import", help="import a directory of mask images (PNG/JPG/BMP)")
    i.add_argument("src", help="directory of mask images (searched recursively)")
    i.add_argument("--out", required=True)
    i.add_argument("--size", default="112")
    i.add_argument("--hole-value", type=int, default=255, choices=(0, 255),
                   help="pixel value of the hole in the files: 255 (white, NVIDIA) or 0")
    i.add_argument("--max-grey", type=float, default=0.05,
                   help="refuse files with more than this fraction of mid-grey pixels")
    i.add_argument("--strict", action="store_true", help="fail on the first unreadable or non-mask file")
    i.set_defaults(func=cmd_masks_import)

    s = msub.add_parser("stats", help="count and ratio range per bucket")
    s.add_argument("lib")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_masks_stats)

    sh = msub.add_parser("show", help="write a picture of masks")
    sh.add_argument("lib")
    sh.add_argument("--out", required=True, help="PNG file")
    sh.add_argument("--ids", nargs="+")
    sh.add_argument("--per-bucket", type=int, default=8)
    sh.set_defaults(func=cmd_masks_show)

    e = msub.add_parser("export", help="write masks as PNG (white = hole) or npy (0 = occluded)")
    e.add_argument("lib")
    e.add_argument("--out", required=True)
    e.add_argument("--ids", nargs="+")
    e.add_argument("--format", default="png", choices=("png", "npy"))
    e.set_defaults(func=cmd_masks_export)
