"""``maskcrypt data ...``: inspect image sources and export them as folders or insightface ``.bin``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError


def cmd_data_info(args: argparse.Namespace) -> int:
    from maskcrypt.data import describe

    info = describe(args.spec)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['spec']}")
    print(f"  kind        {info['kind']}")
    print(f"  images      {info['images']}  (" + ", ".join(f"{k} {v}" for k, v in info["splits"].items())
          + f"; split {info['split_source']})")
    ipc = info["images_per_class"]
    print(f"  classes     {info['classes']}  (images per class min {ipc['min']}, mean {ipc['mean']:.1f}, "
          f"max {ipc['max']}; first: {', '.join(info['first_classes'])})")
    print(f"  native      {info['native']}")
    print(f"  loaded as   {info['size'][0]}x{info['size'][1]}, {info['channels']} channel(s), uint8")
    if "pairs" in info:
        print(f"  pairs       {info['pairs']}" + (" verification pairs" if isinstance(info["pairs"], int) else ""))
    if info.get("verification_only"):
        print("  labels      none: a verification set (maskcrypt verify RUN --pairs SPEC only)")
    return 0


def cmd_data_export_bin(args: argparse.Namespace) -> int:
    """A source's pairs (its own, or #pairs=generate) as an insightface verification .bin."""
    from maskcrypt.data import load
    from maskcrypt.data.binfile import write_bin
    from maskcrypt.pipeline import absolute_path

    ds = load(args.spec, default_split="test", verification=True)
    if ds.pairs is None or not len(ds.pairs):
        raise MaskcryptError(f"data spec {args.spec!r}: has no verification pairs; add #pairs=generate (or "
                             ",pairs=generate) to generate 10 folds from its labels")
    out = write_bin(absolute_path(args.out), ds.images, ds.pairs, args.format)
    same = int(ds.pairs[:, 2].sum())
    print(f"wrote {out}: {len(ds.pairs)} pairs ({same} same, {len(ds.pairs) - same} different) in "
          f"{len(set(ds.pairs[:, 3].tolist()))} folds, {2 * len(ds.pairs)} {args.format.upper()} images of "
          f"{ds.size[0]}x{ds.size[1]}")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    """A source's images as an image folder (``imagefolder:`` layout), e.g. synthetic faces as JPEG files."""
    from maskcrypt.data import source_split
    from maskcrypt.data.folder import write_imagefolder
    from maskcrypt.pipeline import absolute_path

    split = source_split(args.spec, default_split="all")
    t0 = time.perf_counter()
    n = write_imagefolder(split, absolute_path(args.out), args.format, args.quality)
    print(f"wrote {n} {args.format.upper()} images of {split.size[0]}x{split.size[1]} in "
          f"{len(set(split.labels.tolist()))} class folders to {args.out} in {time.perf_counter() - t0:.1f}s "
          f"(read it as imagefolder:{absolute_path(args.out)})")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from maskcrypt.data import load
    from maskcrypt.reporting.pictures import auto_scale, grid_image, save_png

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(args.spec, default_split="all", verification=True)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    picks: list[int] = []
    for cls in np.unique(ds.labels)[: args.classes]:
        picks.extend(np.flatnonzero(ds.labels == cls)[: args.per_class].tolist())
    images = ds.images[picks]
    captions = [ds.class_names[ds.labels[i]] for i in picks]
    save_png(grid_image(images, captions, ncol=args.per_class, scale=auto_scale(ds.size[0])), args.out)
    print(f"wrote {args.out} ({len(picks)} images of {min(args.classes, len(ds.class_names))} classes)")
    return 0


def add_parser(sub: Any) -> None:
    """The ``data`` command(s) on the top-level subparsers."""
    data = sub.add_parser("data", help="inspect image sources")
    dsub = data.add_subparsers(dest="command", required=True)
    di = dsub.add_parser("info", help="counts per split, classes, size, channels")
    di.add_argument("spec", help="e.g. synthetic:, imagefolder:/data/x, lfw:/data/lfw#split=all")
    di.add_argument("--json", action="store_true")
    di.set_defaults(func=cmd_data_info)
    ds = dsub.add_parser("show", help="write a picture of a few images per class")
    ds.add_argument("spec")
    ds.add_argument("--out", required=True, metavar="PNG", help="the contact sheet to write")
    ds.add_argument("--classes", type=int, default=8, metavar="N", help="identities shown (default 8)")
    ds.add_argument("--per-class", type=int, default=6, metavar="N", help="images per identity (default 6)")
    ds.set_defaults(func=cmd_data_show)
    ex = dsub.add_parser("export", help="write a source's images as an image folder (imagefolder: layout)")
    ex.add_argument("spec", help="e.g. 'synthetic:identities=100,per_identity=80,size=112' (default split: all)")
    ex.add_argument("--out", required=True, help="a new folder: OUT/<class>/<n>.jpg")
    ex.add_argument("--format", default="jpg", choices=("jpg", "png"))
    ex.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality (default 95)")
    ex.set_defaults(func=cmd_data_export)
    eb = dsub.add_parser("export-bin", help="write a source's verification pairs as an insightface .bin")
    eb.add_argument("spec", help="a source with pairs, e.g. 'synthetic:#split=test,pairs=generate' or "
                                 "lfw:/data/lfw#split=all (default split: test)")
    eb.add_argument("--out", required=True, help=".bin file")
    eb.add_argument("--format", default="png", choices=("png", "jpg"), help="image encoding (png: lossless)")
    eb.set_defaults(func=cmd_data_export_bin)
