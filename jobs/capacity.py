"""Capacity test for large mask libraries: the numbers a user needs to size a cluster.

    python jobs/capacity.py --quick                         # 2,000 masks at 32 px, a few minutes here
    ray job submit --working-dir . -- python jobs/capacity.py --count 100000 --size 112 \\
        --arch iresnet50 --eval-gpus 1 --eval-actors 8 --out /shared/capacity

Generates N masks (or copies an existing library with ``--masks``) into ``OUT/masks``,
then, with a recognizer of the configured architecture (untrained weights unless
``--model`` names a checkpoint: speed does not depend on them, the adaptive search's
pruning does) and ``--images`` synthetic test faces at the same size, runs

* Table 1 in ``sampled`` mode (cost independent of N), and
* the per-mask ranking in ``adaptive`` mode over every bucket,

and prints masks/s generated, library bytes per mask, forward passes and wall time of
each stage, peak driver and actor memory, the measured masked images/s per evaluation
device, and the projected wall time of ``full`` and ``adaptive`` ranking on clusters of
G devices for a test set of ``--project-images`` (default 13,233: LFW).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from maskcrypt.errors import exit_status  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 masks at 32 px, 100 images")
    p.add_argument("--count", type=int, default=100_000, help="masks to generate")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--masks", default="", help="an existing library to copy in instead of generating")
    p.add_argument("--out", default="", help="directory for the library and capacity.json (default: temporary)")
    p.add_argument("--arch", default="compact")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--model", default="", help="a trained recognizer checkpoint (folder) instead of untrained weights")
    p.add_argument("--images", type=int, default=400, help="synthetic test faces")
    p.add_argument("--repeats", type=int, default=5, help="Table 1 repetitions")
    p.add_argument("--keep", type=int, default=5, help="adaptive: masks kept per bucket")
    p.add_argument("--eval-actors", type=int, default=2)
    p.add_argument("--eval-gpus", type=float, default=0.0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--project-images", type=int, default=13_233, help="test images of the projection (LFW)")
    p.add_argument("--project-devices", default="1,8,64", help="device counts of the projection")
    args = p.parse_args(argv)
    if args.quick:
        args.count, args.size, args.images = 2_000, 32, 100
    return args


def _model(root: Path, args: argparse.Namespace, classes: list[str]) -> Path:
    """A checkpoint folder of the configured architecture (untrained), or the given one."""
    if args.model:
        return Path(args.model).resolve()
    import torch

    from maskcrypt.models import Recognizer
    from maskcrypt.models.checkpoint import save_checkpoint
    from maskcrypt.models.recognizer import RecognizerConfig

    torch.manual_seed(0)
    cfg = RecognizerConfig(arch=args.arch, width=args.width, num_classes=len(classes), image_size=args.size)
    meta = {"kind": "recognizer", "role": "capacity", "model_config": dataclasses.asdict(cfg),
            "class_names": classes, "image_size": args.size, "channels": 3, "epoch": 0}
    save_checkpoint(root / "model" / "checkpoint_epoch_0000", Recognizer(cfg).eval(), meta)
    return root / "model"


def run(args: argparse.Namespace, out: Path) -> dict:
    import ray

    from maskcrypt.data import load
    from maskcrypt.evaluate import AdaptivePlan, EvalSettings, evaluate_adaptive, evaluate_sampled, prepare_test
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into
    from maskcrypt.monitor import PeakRSS

    report: dict = {"count": args.count, "size": args.size, "arch": args.arch, "images": args.images}
    lib = MaskLibrary.open_or_create(str(out / "masks"), args.size, args.size)
    t0 = time.perf_counter()
    if args.masks:
        source = MaskLibrary.open(str(Path(args.masks).resolve()) if "://" not in args.masks else args.masks)
        lib.append((b.masks, b.mask_ids, b.sources or [args.masks] * len(b)) for b in source.iter_batches())
    else:
        generate_into(lib, args.count, seed=0)
    report["library_seconds"] = round(time.perf_counter() - t0, 1)
    report["masks"] = len(lib)
    report["masks_per_s_generated"] = round(len(lib) / max(report["library_seconds"], 1e-9), 1)
    disk = sum(p.stat().st_size for p in (out / "masks").rglob("*.parquet"))
    report["library_bytes_per_mask"] = round(disk / max(len(lib), 1), 1)
    print(f"library: {len(lib):,} masks at {args.size} px in {report['library_seconds']} s "
          f"({report['masks_per_s_generated']:,.0f} masks/s), {report['library_bytes_per_mask']} bytes/mask on disk")

    per_id = max(2, -(-args.images // 50))
    test = load(f"synthetic:identities=50,per_identity={per_id}#split=all,limit={args.images}", size=args.size)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
    models = {"E": _model(out, args, test.class_names)}
    if not ray.is_initialized():
        ray.init()
    settings = EvalSettings(actors=args.eval_actors, gpus_per_actor=args.eval_gpus, precision=args.precision)
    buckets = sorted({int(b) for b in lib.column("bucket")} - {-1})

    with PeakRSS(object_store=True) as peak:
        t0 = time.perf_counter()
        evaluate_sampled(lib, ts, models, repeats=args.repeats, buckets=buckets, settings=settings)
        sampled_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, rounds = evaluate_adaptive(lib, ts, models, buckets, keep=args.keep, settings=settings,
                                      plan=AdaptivePlan())
        adaptive_s = time.perf_counter() - t0
    sampled_passes = (len(buckets) + 1) * args.repeats * len(ts)
    adaptive_passes = sum(r["forward_passes"] for r in rounds)
    full_passes = len(lib) * len(ts)
    rate = adaptive_passes / adaptive_s / args.eval_actors  # per device, start-up of each round included
    report |= {
        "sampled": {"seconds": round(sampled_s, 1), "forward_passes": sampled_passes},
        "adaptive": {"seconds": round(adaptive_s, 1), "forward_passes": adaptive_passes, "rounds": rounds,
                     "full_forward_passes": full_passes, "reduction": round(full_passes / adaptive_passes, 2)},
        "masked_images_per_s_per_device": round(rate, 1),
        "peak_driver_mb": round(peak.driver_mb), "peak_actor_mb": round(peak.actor_mb),
        "peak_object_store_mb": None if peak.object_store_mb is None else round(peak.object_store_mb, 1),
    }
    print(f"Table 1 sampled: {sampled_passes:,} forward passes in {sampled_s:.1f} s")
    print(f"adaptive ranking: {adaptive_passes:,} forward passes in {adaptive_s:.1f} s over {len(rounds)} rounds; "
          f"full mode would need {full_passes:,} ({report['adaptive']['reduction']}x more)")
    print(f"throughput: {rate:,.0f} masked images/s per evaluation device ({args.eval_actors} actors, "
          f"{args.eval_gpus:g} GPU each); peak RSS driver {peak.driver_mb:.0f} MB, actor {peak.actor_mb:.0f} MB, "
          "object store " + ("not reported by Ray" if peak.object_store_mb is None
                             else f"{peak.object_store_mb:.1f} MB"))
    if not args.model:
        print("note: untrained weights score every mask alike, so the adaptive search cannot drop any; pass "
              "--model with a trained E for a realistic reduction")
    projection = []
    reduction = full_passes / adaptive_passes
    for g in (int(x) for x in args.project_devices.split(",")):
        full_h = len(lib) * args.project_images / (rate * g) / 3600
        projection.append({"devices": g, "full_seconds": round(full_h * 3600, 3),
                           "adaptive_seconds": round(full_h * 3600 / reduction, 3)})
        print(f"projection, {len(lib):,} masks x {args.project_images:,} images on {g} device(s): full "
              f"{full_h:.2f} h, adaptive ~{full_h / reduction:.2f} h (at this run's reduction)")
    report["projection"] = {"images": args.project_images, "rows": projection}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from maskcrypt.run import write_json_atomic

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out).resolve() if args.out else Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "capacity.json", run(args, out))
            if args.out:
                print(f"capacity report: {out / 'capacity.json'}")

    return exit_status(body)


if __name__ == "__main__":
    raise SystemExit(main())
