"""``maskcrypt`` command line: thin wrappers that parse flags and call the library.

A :class:`~maskcrypt.core.errors.MaskcryptError` is printed as ``error: ...`` without a
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

from maskcrypt.core.errors import MaskcryptError, exit_status


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


# -- the method's stages --------------------------------------------------------------------
#: Subcommands over the pipeline: (first stage, last stage or None = --until, help).
STAGE_COMMANDS = {
    "run": ("prepare", None, "the whole method: prepare -> train -> determine (-> tune with --until tune)"),
    "prepare": ("prepare", "prepare", "build the run's mask libraries and pictures"),
    "train": ("prepare", "train", "prepare if needed, then train O, E and R on Ray Train into RUN/models/"),
    "determine": ("determine", "determine", "determine the target masks of a trained run (Ray Data)"),
}


def cmd_stages(args: argparse.Namespace) -> int:
    """``run``/``prepare``/``train``/``determine``: a RunConfig from --config and flags, then the pipeline."""
    from maskcrypt.cli.flags import RUN_FLAGS, build_config
    from maskcrypt.pipeline import run_pipeline
    from maskcrypt.runtime.cluster import init_ray

    start, until, _ = STAGE_COMMANDS[args.command]
    config = build_config(args, RUN_FLAGS, {"until": until} if until else None)
    if config.until != "prepare":
        init_ray()
    out = run_pipeline(config, start=start, restart=args.restart, retrain=args.retrain,
                       redetermine=args.redetermine, log=print)
    if "determine" in out and config.determine.require_targets and not out["determine"]["targets"]:
        return 3
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """The threshold search over a determined run's tables (Ray Tune)."""
    from maskcrypt.cli.flags import TUNE_FLAGS, build_config
    from maskcrypt.pipeline import resolve, tune_stage
    from maskcrypt.runtime.cluster import init_ray

    config = resolve(build_config(args, TUNE_FLAGS))
    init_ray()
    summary = tune_stage(config, log=print)
    print(f"best thresholds: {summary['best_thresholds']}")
    if "note" in summary:
        print(summary["note"])
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    """The capacity measurement (maskcrypt.capacity) into OUT/capacity.json."""
    import tempfile
    from pathlib import Path

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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a run on this machine's (or RAY_ADDRESS's) Ray until interrupted."""
    from ray import serve

    from maskcrypt.serving.deployment import build_app
    from maskcrypt.serving.requests import ServiceConfig

    config = ServiceConfig(run=args.run, allow_candidates=args.allow_candidates,
                           api_key=os.environ.get("MASKCRYPT_API_KEY", ""), precision=args.precision,
                           scoring=args.scoring, share_masks=args.share_masks, min_score=args.min_score)

    def _stop(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown, however many signals follow
        raise KeyboardInterrupt  # SIGTERM (kill, systemd, a container stop) shuts down like Ctrl-C

    import ray

    from maskcrypt.runtime.cluster import init_ray

    init_ray()  # before our handler: ray.init installs its own for SIGTERM
    # Checked before anything starts (the run's targets, the GPUs asked for): a refusal stops nothing.
    app = build_app(config, max_batch_size=args.max_batch_size, num_replicas=args.replicas, num_gpus=args.gpus)
    signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="maskcrypt", route_prefix="/")
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


def cmd_export(args: argparse.Namespace) -> int:
    """A run's recognizer as ONNX, checked against torch with onnxruntime."""
    from maskcrypt.export import export_onnx
    from maskcrypt.pipeline import absolute_path

    s = export_onnx(absolute_path(args.run), absolute_path(args.out), model=args.model, input_type=args.input,
                    opset=args.opset, check=not args.no_check, exporter=args.exporter)
    print(f"wrote {s['out']} ({s['bytes'] / 1e6:.1f} MB, {s['model']} model, {s['input']} input N x C x H x W, "
          f"dynamic batch, opset {s['opset']}, {s['exporter']} exporter) in {s['seconds']}s")
    if "max_abs_diff_logits" in s:
        print(f"onnxruntime vs torch: max |diff| logits {s['max_abs_diff_logits']:.2e}, "
              f"embeddings {s['max_abs_diff_embedding']:.2e}")
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
    ex = dsub.add_parser("export", help="write a source's images as an image folder (imagefolder: layout)")
    ex.add_argument("spec", help="e.g. 'synthetic:identities=100,per_identity=80,size=112' (default split: all)")
    ex.add_argument("--out", required=True, help="a new folder: OUT/<class>/<n>.jpg")
    ex.add_argument("--format", default="jpg", choices=("jpg", "png"))
    ex.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ex.set_defaults(func=cmd_data_export)
    eb = dsub.add_parser("export-bin", help="write a source's verification pairs as an insightface .bin")
    eb.add_argument("spec", help="a source with pairs, e.g. 'synthetic:#split=test,pairs=generate' or "
                                 "lfw:/data/lfw#split=all (default split: test)")
    eb.add_argument("--out", required=True, help=".bin file")
    eb.add_argument("--format", default="png", choices=("png", "jpg"), help="image encoding (png: lossless)")
    eb.set_defaults(func=cmd_data_export_bin)

    from maskcrypt.cli.flags import RUN_FLAGS, TUNE_FLAGS, add_flags

    for name, (_, until, text) in STAGE_COMMANDS.items():
        st = sub.add_parser(name, help=text, description=text)
        st.add_argument("--config", default="", help="YAML run configuration (RunConfig keys); flags override it")
        add_flags(st, [f for f in RUN_FLAGS if not (until and f[1] == ("until",))])
        act = st.add_argument_group("actions")
        act.add_argument("--restart", action="store_true", help="rebuild a run prepared with other settings")
        act.add_argument("--retrain", action="store_true", help="retrain models trained with other settings")
        act.add_argument("--redetermine", action="store_true",
                         help="discard per-mask results computed with other inputs instead of refusing")
        st.set_defaults(func=cmd_stages, command=name)
    tu = sub.add_parser("tune", help="search the selection thresholds on Ray Tune over a determined run's tables")
    tu.add_argument("--config", default="", help="YAML run configuration (its tune: section)")
    add_flags(tu, TUNE_FLAGS, "search")
    tu.set_defaults(func=cmd_tune)
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
    ca.add_argument("--first", type=int, default=50, help="adaptive: test images every mask sees in round 1")
    ca.add_argument("--stages", default="read,table1,race",
                    help="what runs after the library is built: read (read it back), table1, race")
    ca.add_argument("--eval-actors", type=int, default=2)
    ca.add_argument("--eval-gpus", type=float, default=0.0)
    ca.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ca.add_argument("--project-images", type=int, default=13_233, help="test images of the projection (LFW)")
    ca.add_argument("--project-devices", default="1,8,64", help="device counts of the projection")
    ca.set_defaults(func=cmd_capacity)
    sv = sub.add_parser("serve", help="serve mask-then-recognize over HTTP on Ray Serve")
    sv.add_argument("run", nargs="?", default="runs/default", help="a run with target masks (default runs/default)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--allow-candidates", action="store_true", help="serve the best candidates when no target")
    sv.add_argument("--replicas", type=int, default=1)
    sv.add_argument("--max-batch-size", type=int, default=0, help="images per forward (default: 16 on CPU, 128 "
                    "with --gpus)")
    sv.add_argument("--gpus", type=float, default=0.0, help="GPUs per replica (a cluster without them is refused)")
    sv.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    sv.add_argument("--scoring", default="auto", choices=("auto", "closed", "open"),
                    help="closed: E's classes; open: an enrolled gallery (/v1/enroll); auto: as the run was scored")
    sv.add_argument("--share-masks", action="store_true", help="let clients fetch mask pixels (/v1/masks?pixels=true)")
    sv.add_argument("--min-score", type=float, default=-1.0,
                    help="open set: answer identity null below this cosine (default -1: always the best match)")
    sv.set_defaults(func=cmd_serve)
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
    ex = sub.add_parser("export", help="export a run's recognizer (ONNX), checked with onnxruntime")
    ex.add_argument("run", nargs="?", default="runs/default", help="a trained run (default runs/default)")
    ex.add_argument("--model", default="encrypted", choices=("encrypted", "original"))
    ex.add_argument("--format", default="onnx", choices=("onnx",))
    ex.add_argument("--out", required=True, help="the .onnx file to write")
    ex.add_argument("--input", default="uint8", choices=("uint8", "float"),
                    help="input type: uint8 pixels, or float32 pixels in 0..255 (normalization is inside)")
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                    help="torch's exporter: dynamo (default) or the legacy torchscript tracer (faster, deprecated)")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with torch")
    ex.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))


def job_main(command: str, argv: Sequence[str] | None = None) -> int:
    """``jobs/<x>.py``: the ``maskcrypt <command>`` subcommand with the script's arguments."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
