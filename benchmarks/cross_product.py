"""The evaluator's images x masks throughput against the bare model forward, measured in the same run.

    python benchmarks/cross_product.py --quick     # 10k masked images per model, ~1-2 minutes
    python benchmarks/cross_product.py             # 100k

Model: the embedded default recognizer (compact ResNet at the run's default width, 32 x 32, 50 classes)
with *untrained* weights: speed does not depend on them. Images: the synthetic test
split (400 faces). Masks: generated into a temporary library.

* **bare**: the same model's forward on pre-built, pre-masked uint8 tensors, in
  ``actors`` Ray tasks of one CPU each (the evaluator's actors get one CPU each too),
  same chunk, precision and memory layout, after a warm-up pass; the sum of their
  rates. Measured before and after the evaluator; the median is the baseline.
* **evaluator**: ``evaluate_masks`` with one model, end to end (from the call, actor
  start-up included) and steady state (from the first result block to the last).

Ends with ``RESULT`` lines: steady and end-to-end ratios against the bare forward,
images/s, and the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEC = "synthetic:identities=50,per_identity=40,size=32"


def make_checkpoint(root: Path, classes: list[str]) -> Path:
    import torch

    from maskcrypt.models import Recognizer
    from maskcrypt.models.checkpoint import save_checkpoint
    from maskcrypt.models.recognizer import RecognizerConfig

    torch.manual_seed(0)
    from maskcrypt.config import ModelSettings

    cfg = RecognizerConfig(num_classes=len(classes), image_size=32, width=ModelSettings().width)
    meta = {"kind": "recognizer", "role": "benchmark", "model_config": dataclasses.asdict(cfg),
            "class_names": classes, "image_size": 32, "channels": 3, "epoch": 0}
    return save_checkpoint(root / "model" / "checkpoint_epoch_0000", Recognizer(cfg).eval(), meta)


def bare_rate(ckpt: str, images: np.ndarray, mask: np.ndarray, chunk: int, precision: str, passes: int) -> float:
    """Images/s of the bare forward on one CPU: the evaluator's Predictor on pre-masked tensors, no overlay."""
    import torch

    from maskcrypt.capacity import forward_rate
    from maskcrypt.masks import overlay
    from maskcrypt.models.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.from_checkpoint(ckpt, precision=precision, chunk=chunk)
    masked = predictor.to_device(overlay(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(mask)))
    return forward_rate(predictor, masked, seconds=passes * 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k masked images instead of 100k")
    p.add_argument("--images", type=int, default=0, help="masked images per model (default 10k quick, 100k)")
    p.add_argument("--actors", type=int, default=os.cpu_count() or 1)
    p.add_argument("--chunk", type=int, default=0, help="images per forward pass (0: the device's default)")
    p.add_argument("--masks-per-batch", type=int, default=4)
    p.add_argument("--masks-per-block", type=int, default=8)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    total = args.images or (10_000 if args.quick else 100_000)

    import ray

    from maskcrypt.config import EvalSettings
    from maskcrypt.data import load
    from maskcrypt.evaluation.crossproduct import evaluate_masks
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into

    test = load(SPEC, default_split="test")
    n_masks = max(1, round(total / len(test)))
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root, test.class_names)
        lib = MaskLibrary.create(str(root / "masks"), 32, 32)
        generate_into(lib, n_masks, seed=0)
        ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
        one_mask = lib.load().masks[0]
        passes = max(1, n_masks // (args.actors * 4))
        task = ray.remote(num_cpus=1)(bare_rate)

        def bare() -> float:
            return sum(ray.get([task.remote(str(ckpt), ts.images, one_mask, args.chunk, args.precision, passes)
                                for _ in range(args.actors)]))

        baselines = [bare()]
        settings = EvalSettings(actors=args.actors, masks_per_batch=args.masks_per_batch,
                                masks_per_block=args.masks_per_block, timing=True,
                                images_per_chunk=args.chunk, precision=args.precision)
        stamps: list[tuple[float, int]] = []
        t0 = time.perf_counter()
        counts = evaluate_masks(lib, ts, {"E": root / "model"}, settings=settings,
                                on_block=lambda b: stamps.append((time.perf_counter(), len(b))))
        wall = time.perf_counter() - t0
        baselines.append(bare())
    images = int(counts["n"].sum())
    end_to_end = images / wall
    # Steady state, from the actors' own clocks (the driver sees blocks in bursts): once every actor has
    # finished its first mask (all warm), the images of the masks finished after, per second.
    done = counts.sort_values("t_done")
    warm_t = done.groupby("worker")["t_done"].min().max()
    later = done[done["t_done"] > warm_t]
    span = later["t_done"].max() - warm_t if len(later) else 0.0
    steady = later["n"].sum() / span if span > 0 else float("nan")
    base = statistics.median(baselines)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n_masks} masks x {len(ts)} images = {images:,} masked images, {args.actors} actors, chunk {args.chunk}, "
          f"precision {args.precision}, untrained default recognizer")
    print(f"bare forward: {', '.join(f'{b:,.0f}' for b in baselines)} img/s (median {base:,.0f})")
    print(f"evaluator: end to end {end_to_end:,.0f} img/s ({wall:.1f} s, start-up included); steady state "
          f"{steady:,.0f} img/s over the {len(later)} masks finished after every actor's first "
          f"({len(stamps)} result blocks)")
    print(f"driver peak RSS {rss_mb:.0f} MB")
    print(f"RESULT cross_product_steady_ratio {steady / base:.3f}")
    print(f"RESULT cross_product_end_to_end_ratio {end_to_end / base:.3f}")
    print(f"RESULT cross_product_steady_images_per_s {steady:.0f}")
    print(f"RESULT bare_forward_images_per_s {base:.0f}")
    print(f"RESULT driver_peak_rss_mb {rss_mb:.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
