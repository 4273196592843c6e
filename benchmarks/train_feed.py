"""Is the training loop fed? Its rate per epoch against its steady rate and against pure compute (no Ray).

    python benchmarks/train_feed.py                          # on a CUDA machine: ResNet-18 and -50 at 112 px
    python benchmarks/train_feed.py --device cpu --quick     # a smoke test here (~1 minute)

Needs only torch, torchvision and numpy: it runs the project's own training loop
(:func:`maskcrypt.train.loop.train_epoch` with :class:`~maskcrypt.train.loop.RecognizerSteps`)
on a bare GPU machine with a checkout on ``PYTHONPATH``, over synthetic uint8 images of
the 112 px run's size (1,920 training images, batch 256), three ways:

* **compute**: one batch already on the device, fed again every step: the model's
  forward, loss, backward and optimizer step and nothing else (what
  ``benchmarks/gpu_models.py`` times, here through the same loop);
* **host**: the set in host memory (numpy), each batch gathered there and copied over:
  how a replicated set was fed before it could live on the device;
* **device**: the set in GPU memory (``train.feed.resident``: what a replicated set and
  the attackers' trainers use on a GPU now), each batch gathered on the device.

For each: the epoch-average rate (every step of an epoch, the loop only: evaluation and
checkpointing are not in it, as in the workers' ``images_per_s``), the steady rate (after
the first 10% of the epoch: ``images_per_s_steady``), both as medians over the epochs after
the first, and GPU utilization sampled by ``nvidia-smi`` every 100 ms while it ran.
Reported ratios: epoch/steady per feed (goal on a GPU: >= 0.8 for ``device``) and each
feed's epoch rate against compute's.

What it does not include: Ray Train's worker start and Ray Data's decoding; the whole run's
figures (``run.json``'s ``images_per_s`` and ``images_per_s_steady`` per epoch) come from
``benchmarks/gpu_session.sh``'s run stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from maskcrypt.config import TrainConfig
from maskcrypt.core.precision import channels_last, use_bf16
from maskcrypt.models.recognizer import RecognizerConfig
from maskcrypt.train.feed import array_batches, pass_seed, resident
from maskcrypt.train.loop import RecognizerSteps, train_epoch


class Utilization:
    """GPU utilization (%) sampled by ``nvidia-smi`` in a background thread; empty where there is none."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Utilization:
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                           "-lms", "100", "-i", "0"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        return f"median {statistics.median(self.samples):.0f}% (max {max(self.samples):.0f}%)"


def run_feed(feed: str, arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``args.epochs`` epochs of one model under one feed; the per-epoch rates after the first, and utilization."""
    bf16 = use_bf16(args.precision, device.type)
    tc = dataclasses.asdict(TrainConfig(epochs=args.epochs, batch_size=args.batch, precision=args.precision))
    classes = max(2, args.images // 30)
    mc = dataclasses.asdict(RecognizerConfig(arch=arch, num_classes=classes, image_size=args.size))
    rng = np.random.default_rng(0)
    data = {"image": rng.integers(0, 256, (args.images, 3, args.size, args.size), dtype=np.uint8),
            "label": rng.integers(0, classes, args.images), "item": np.arange(args.images)}
    torch.manual_seed(0)
    steps = RecognizerSteps({"train_config": tc, "role": "original", "k": 1, "model_config": mc}, device, bf16)
    net = steps.model.to(device)
    if channels_last(device.type, bf16):
        net = net.to(memory_format=torch.channels_last)
    per_pass = args.images // args.batch
    steps.schedule(per_pass * args.epochs)
    arrays = resident(data, device) if feed == "device" else data
    fixed = {k: (v[: args.batch] if k != "image" else resident({"image": v[: args.batch]}, device)["image"])
             for k, v in data.items()}

    def batches(epoch: int, read: dict[str, int]) -> Iterator[dict[str, Any]]:
        if feed == "compute":
            for _ in range(per_pass):
                yield {k: (v.clone() if isinstance(v, torch.Tensor) else v.copy()) for k, v in fixed.items()}
            return
        yield from array_batches(arrays, pass_seed(tc["seed"], epoch, 0), args.batch, per_pass, read=read)

    epochs, steady = [], []
    with Utilization() as util:
        for epoch in range(1, args.epochs + 1):
            stats = train_epoch(steps, net, epoch, per_pass, lambda _p, read, e=epoch: batches(e, read))
            if epoch > 1:  # the first carries cuDNN's autotuning and allocator warm-up
                epochs.append(stats.seen / stats.seconds)
                steady.append(stats.steady_seen / stats.steady_seconds)
    return {"epoch": statistics.median(epochs), "steady": statistics.median(steady), "util": util.summary()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--images", type=int, default=1920, help="training images (the 112 px run: 1,920)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--quick", action="store_true", help="resnet18 at 32 px, 256 images, batch 32, 3 epochs")
    args = ap.parse_args()
    if args.quick:
        args.arch, args.size, args.images, args.batch, args.epochs = ["resnet18"], 32, 256, 32, 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (a smoke test) or on a GPU machine", file=sys.stderr)
        return 2
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{args.images} images at {args.size} px, batch {args.batch}, {args.epochs} epochs (medians over 2..)")
    print(f"{'model':10} {'feed':8} {'epoch img/s':>12} {'steady img/s':>13} {'epoch/steady':>13} "
          f"{'vs compute':>11}  GPU utilization")
    for arch in args.arch:
        rows = {feed: run_feed(feed, arch, args, device) for feed in ("compute", "host", "device")}
        for feed, r in rows.items():
            ratio, vs = r["epoch"] / r["steady"], r["epoch"] / rows["compute"]["epoch"]
            print(f"{arch:10} {feed:8} {r['epoch']:12,.0f} {r['steady']:13,.0f} {ratio:13.2f} {vs:11.2f}  {r['util']}")
            print(f"RESULT train_feed_{arch}_{feed}_epoch_img_s {r['epoch']:.0f}")
            print(f"RESULT train_feed_{arch}_{feed}_epoch_over_steady {ratio:.3f}")
            print(f"RESULT train_feed_{arch}_{feed}_over_compute {vs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
