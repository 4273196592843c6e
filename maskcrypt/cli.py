"""``maskcrypt`` command line: thin wrappers that parse flags and call the library.

A :class:`~maskcrypt.errors.MaskcryptError` is printed as ``error: ...`` without a
traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskcrypt.errors import MaskcryptError, exit_status


def _size(text: str) -> tuple[int, int]:
    from maskcrypt.data.spec import parse_size

    return parse_size(text, "--size")


# -- masks ---------------------------------------------------------------------------------
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


def format_mask_stats(stats: dict) -> str:
    """A fixed-width table of per-bucket counts and ratios."""
    from maskcrypt.masks import bucket_label

    edges = stats["edges"]
    lines = [f"{stats['uri']}: {stats['count']} masks of {stats['height']}x{stats['width']}, "
             f"{stats['bytes_on_disk'] / 1e6:.2f} MB on disk"
             + (f" ({stats['bytes_per_mask']:.0f} B/mask)" if stats["bytes_per_mask"] else ""),
             f"{'bucket':>7} {'range':>12} {'count':>8} {'min':>7} {'mean':>7} {'max':>7}"]
    for b in [*range(1, len(edges)), -1]:
        row = stats["buckets"][str(b)]
        vals = ["" if row[k] is None else f"{row[k]:.4f}" for k in ("ratio_min", "ratio_mean", "ratio_max")]
        lines.append(f"{b:>7} {bucket_label(b, edges):>12} {row['count']:>8} {vals[0]:>7} {vals[1]:>7} {vals[2]:>7}")
    return "\n".join(lines)


def cmd_masks_stats(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary

    lib = MaskLibrary.open(args.lib)
    stats = lib.stats()
    orphans = lib.orphans()
    stats["uncommitted_parts"] = len(orphans)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print(format_mask_stats(stats))
        if orphans:
            print(f"{len(orphans)} uncommitted part file(s) from an interrupted write are ignored")
    return 0


def cmd_masks_show(args: argparse.Namespace) -> int:
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.show import mask_grid
    from maskcrypt.report import save_png

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


# -- data ----------------------------------------------------------------------------------
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
        print(f"  pairs       {info['pairs']} verification pairs")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from maskcrypt.data import load
    from maskcrypt.report import auto_scale, grid_image, save_png

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(args.spec, default_split="all")
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


# -- train -----------------------------------------------------------------------------------
def add_train_arguments(p: argparse.ArgumentParser, with_data: bool = True) -> None:
    """Flags of the training stage, shared by ``maskcrypt train``, jobs/train.py and jobs/select.py."""
    from maskcrypt.config import TrainConfig
    from maskcrypt.train import InpaintTrainConfig, MaskSampling, ModelSettings, Resources

    t, i, s, m, r = TrainConfig(), InpaintTrainConfig(), MaskSampling(), ModelSettings(), Resources()
    g = p.add_argument_group("training (one TrainConfig trains both O and E)")
    if with_data:
        g.add_argument("--train-data", default="synthetic:", help="data spec of O's and E's training images")
        g.add_argument("--size", type=int, default=32, help="image size in pixels")
    g.add_argument("--val-data", default="", help="held-out images of the training classes (default: the "
                   "training source's test split)")
    g.add_argument("--inpaint-data", default="", help="data spec of R's training images (default: --train-data)")
    g.add_argument("--masks", default="", help="E's and R's training mask pool (default RUN/masks_train)")
    g.add_argument("--epochs", type=int, default=t.epochs)
    g.add_argument("--batch-size", type=int, default=t.batch_size, help="global batch size")
    g.add_argument("--optimizer", default=t.optimizer, choices=("sgd", "adamw"))
    g.add_argument("--lr", type=float, default=t.lr)
    g.add_argument("--weight-decay", type=float, default=t.weight_decay)
    g.add_argument("--schedule", default=t.schedule, choices=("cosine", "step", "constant"))
    g.add_argument("--warmup-epochs", type=float, default=t.warmup_epochs)
    g.add_argument("--augment", default=t.augment, choices=("flip", "none"))
    g.add_argument("--precision", default=t.precision, choices=("auto", "bf16", "fp32"))
    g.add_argument("--seed", type=int, default=t.seed)
    g.add_argument("--arch", default=m.arch, help="compact, resnet18/34/50, iresnet18/34/50")
    g.add_argument("--width", type=int, default=m.width, help="compact: channels of the first stage")
    g.add_argument("--depth", default=",".join(map(str, m.depth)), help="compact: blocks per stage, e.g. 2,2,2,2")
    g.add_argument("--head", default=m.head, choices=("softmax", "arcface"))
    g.add_argument("--masks-per-image", type=int, default=s.k, help="K masks overlaid on every image for E")
    g.add_argument("--mask-mode", default=s.mode, choices=("fixed", "random"),
                   help="fixed: K masks x every image; random: a fresh pool mask per image per epoch")
    g.add_argument("--inpaint-epochs", type=int, default=i.epochs)
    g.add_argument("--inpaint-batch-size", type=int, default=i.batch_size)
    g.add_argument("--inpaint-lr", type=float, default=i.lr)
    g.add_argument("--finetune-epochs", type=int, default=i.finetune_epochs, help="R: BN-frozen fine-tune epochs")
    g.add_argument("--inpaint-width", type=int, default=m.inpaint_width, help="RFR-Net width (published: 64)")
    g.add_argument("--iterations", type=int, default=m.inpaint_iterations, help="RFR iterations (published: 6)")
    g.add_argument("--vgg-weights", default="", help="local torchvision vgg16 state dict for R's feature losses")
    g.add_argument("--init-original", default="", help="state dict initializing both recognizers")
    g.add_argument("--init-inpainter", default="", help="state dict initializing R")
    g.add_argument("--workers", type=int, default=r.workers, help="Ray Train workers per model")
    g.add_argument("--cpus-per-worker", type=float, default=r.cpus_per_worker)
    g.add_argument("--gpus-per-worker", type=float, default=r.gpus_per_worker)
    g.add_argument("--max-failures", type=int, default=r.max_failures)
    g.add_argument("--retrain", action="store_true", help="retrain models trained with other settings")
    g.add_argument("--models", default="original,encrypted,inpainter", help="which models to train")


def train_from_args(args: argparse.Namespace, run: str, log=print) -> dict:
    """Build the configs from parsed flags and train (see :func:`maskcrypt.train.train_run`)."""
    from maskcrypt.config import TrainConfig
    from maskcrypt.train import ROLES, InpaintTrainConfig, MaskSampling, ModelSettings, Resources, train_run

    try:
        depth = tuple(int(v) for v in str(args.depth).split(","))
    except ValueError:
        raise MaskcryptError(f"--depth: expected blocks per stage like 1,1,1,1, got {args.depth!r}") from None
    roles = tuple(r.strip() for r in args.models.split(",") if r.strip())
    if not roles or set(roles) - set(ROLES):
        raise MaskcryptError(f"--models: expected a comma list of {', '.join(ROLES)}, got {args.models!r}")
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                     weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                     augment=args.augment, precision=args.precision, seed=args.seed)
    ic = InpaintTrainConfig(epochs=args.inpaint_epochs, batch_size=args.inpaint_batch_size, lr=args.inpaint_lr,
                            finetune_epochs=args.finetune_epochs, precision=args.precision, seed=args.seed,
                            vgg_weights=args.vgg_weights)
    models = ModelSettings(arch=args.arch, width=args.width, depth=depth, head=args.head,
                           inpaint_width=args.inpaint_width, inpaint_iterations=args.iterations)
    return train_run(run, args.train_data, args.size, masks=args.masks, inpaint_data=args.inpaint_data,
                     val_data=args.val_data, models=models, train_config=tc, inpaint_config=ic,
                     sampling=MaskSampling(k=args.masks_per_image, mode=args.mask_mode, seed=args.seed),
                     resources=Resources(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.max_failures),
                     init_original=args.init_original, init_inpainter=args.init_inpainter, retrain=args.retrain,
                     roles=roles, log=log)


def cmd_train(args: argparse.Namespace) -> int:
    train_from_args(args, args.run)
    return 0


# -- parser --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a run on this machine's (or RAY_ADDRESS's) Ray until interrupted."""
    from ray import serve

    from maskcrypt.serving import ServiceConfig, build_app

    config = ServiceConfig(run=args.run, allow_candidates=args.allow_candidates,
                           api_key=os.environ.get("MASKCRYPT_API_KEY", ""), precision=args.precision,
                           scoring=args.scoring, share_masks=args.share_masks, min_score=args.min_score)

    def _stop(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown, however many signals follow
        raise KeyboardInterrupt  # SIGTERM (kill, systemd, a container stop) shuts down like Ctrl-C

    import ray

    if not ray.is_initialized():
        ray.init()  # before our handler: ray.init installs its own for SIGTERM
    signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(config, max_batch_size=args.max_batch_size, num_replicas=args.replicas),
                  name="maskcrypt", route_prefix="/")
        print(f"serving {config.run} on http://{args.host}:{args.port} (Ctrl-C or SIGTERM stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve.shutdown()
        ray.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskcrypt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)

    masks = sub.add_parser("masks", help="build, inspect and export mask libraries")
    msub = masks.add_subparsers(dest="command", required=True)
    g = msub.add_parser("generate", help="generate free-form masks evenly over buckets")
    g.add_argument("--out", required=True, help="library directory (created or appended to)")
    g.add_argument("--count", type=int, required=True)
    g.add_argument("--size", default="112", help="N or HxW pixels (default 112)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--buckets", default="1-6", help="buckets to fill, e.g. 1-6 or 5,6 (default 1-6)")
    g.add_argument("--boxes", type=float, default=0.0, metavar="P",
                   help="probability that a drawing step adds a box instead of a stroke segment")
    g.add_argument("--chunk", type=int, default=10_000, help="masks per written part")
    g.add_argument("--quiet", action="store_true")
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

    data = sub.add_parser("data", help="inspect image sources")
    dsub = data.add_subparsers(dest="command", required=True)
    di = dsub.add_parser("info", help="counts per split, classes, size, channels")
    di.add_argument("spec", help="e.g. synthetic:, imagefolder:/data/x, lfw:/data/lfw#split=all")
    di.add_argument("--json", action="store_true")
    di.set_defaults(func=cmd_data_info)
    ds = dsub.add_parser("show", help="write a picture of a few images per class")
    ds.add_argument("spec")
    ds.add_argument("--out", required=True)
    ds.add_argument("--classes", type=int, default=8)
    ds.add_argument("--per-class", type=int, default=6)
    ds.set_defaults(func=cmd_data_show)

    tr = sub.add_parser("train", help="train O, E and R on Ray Train into RUN/models/")
    tr.add_argument("--run", default="runs/default", help="run directory (needs masks_train/ unless --masks)")
    add_train_arguments(tr)
    tr.set_defaults(func=cmd_train)
    sv = sub.add_parser("serve", help="serve mask-then-recognize over HTTP on Ray Serve")
    sv.add_argument("run", nargs="?", default="runs/default", help="a run with target masks (default runs/default)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--allow-candidates", action="store_true", help="serve the best candidates when no target")
    sv.add_argument("--replicas", type=int, default=1)
    sv.add_argument("--max-batch-size", type=int, default=16)
    sv.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    sv.add_argument("--scoring", default="auto", choices=("auto", "closed", "open"),
                    help="closed: E's classes; open: an enrolled gallery (/v1/enroll); auto: as the run was scored")
    sv.add_argument("--share-masks", action="store_true", help="let clients fetch mask pixels (/v1/masks?pixels=true)")
    sv.add_argument("--min-score", type=float, default=-1.0,
                    help="open set: answer identity null below this cosine (default -1: always the best match)")
    sv.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
