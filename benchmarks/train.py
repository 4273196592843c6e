"""Ray Train throughput against a plain single-process PyTorch loop, measured in the same run.

    python benchmarks/train.py --quick     # ~2 minutes
    python benchmarks/train.py             # more epochs

Both sides train the same recognizer (compact ResNet at the embedded default's width,
32 x 32 synthetic faces, 50 classes) on the same arrays with the same global batch, optimizer,
precision (auto: bf16 + channels_last where supported) and augmentation. The plain loop
is one process using every core (torch threads = cores); Ray Train is ``workers`` DDP
processes with one core each. Reported: steady-state images/s (epochs after the first)
for both, their ratio, and the end-to-end ratio including Ray start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskcrypt.config import ModelSettings, Resources, TrainConfig
from maskcrypt.core.precision import autocast, use_bf16
from maskcrypt.data import load
from maskcrypt.models.recognizer import RecognizerConfig
from maskcrypt.train.driver import TrainInputs, train_model
from maskcrypt.train.feed import augment_flip
from maskcrypt.train.loop import lr_lambda

SPEC = "synthetic:identities=50,per_identity=40,size=32"


def plain_loop(x: np.ndarray, y: np.ndarray, cfg: RecognizerConfig, tc: TrainConfig) -> list[float]:
    """images/s per epoch of a single-process loop doing what a Ray Train worker does."""
    import torch
    import torch.nn.functional as F

    from maskcrypt.models import Recognizer

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(tc.seed)
    bf16 = use_bf16(tc.precision, "cpu")
    model = Recognizer(cfg)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
                          nesterov=True)
    steps = len(y) // tc.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.to_dict(), steps))
    rates = []
    for epoch in range(1, tc.epochs + 1):
        rng = np.random.default_rng([tc.seed, epoch])
        perm = rng.permutation(len(y))
        t0 = time.perf_counter()
        model.train()
        for s in range(steps):
            idx = perm[s * tc.batch_size:(s + 1) * tc.batch_size]
            xb = torch.from_numpy(augment_flip(x[idx], True, rng))
            if bf16:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(y[idx])
            with autocast("cpu", bf16):
                loss = F.cross_entropy(model(xb, yb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        rates.append(steps * tc.batch_size / (time.perf_counter() - t0))
    return rates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    args = p.parse_args()
    epochs = args.epochs or (3 if args.quick else 6)
    train = load(SPEC, default_split="train")
    val = load(SPEC, default_split="test")
    cfg = RecognizerConfig(num_classes=50, image_size=32, width=ModelSettings().width)
    tc = TrainConfig(epochs=epochs, precision=args.precision)

    t0 = time.perf_counter()
    plain = plain_loop(train.images, train.labels, cfg, tc)
    plain_wall = time.perf_counter() - t0

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = TrainInputs.from_arrays(train.images, train.labels, val.images, val.labels, train.class_names,
                                         {"b": "x"})
        meta = train_model("original", tmp, inputs, cfg.to_dict(), tc, Resources(workers=args.workers),
                           log=lambda *_: None)
    ray_wall = time.perf_counter() - t0
    ray.shutdown()
    rates = [h["images_per_s"] for h in meta["history"]]

    steady_plain = statistics.median(plain[1:]) if len(plain) > 1 else plain[0]
    steady_ray = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    imgs = epochs * (len(train) // tc.batch_size) * tc.batch_size
    print(f"model compact w{cfg.width} at 32x32, {len(train)} images, batch {tc.batch_size}, {epochs} epochs, "
          f"precision {meta['precision_used']}, {os.cpu_count()} cores")
    print(f"{'':28}{'img/s per epoch':>40}{'steady':>9}{'wall s':>8}")
    print(f"{'plain loop (1 process)':28}{' '.join(f'{r:.0f}' for r in plain):>40}{steady_plain:>9.0f}"
          f"{plain_wall:>8.1f}")
    print(f"{f'Ray Train ({args.workers} workers)':28}{' '.join(f'{r:.0f}' for r in rates):>40}{steady_ray:>9.0f}"
          f"{ray_wall:>8.1f}")
    print(f"RESULT train_plain_images_per_s {steady_plain:.0f}")
    print(f"RESULT train_ray_images_per_s {steady_ray:.0f}")
    print(f"RESULT train_steady_ratio {steady_ray / steady_plain:.3f}")
    print(f"RESULT train_end_to_end_ratio {(imgs / ray_wall) / (imgs / plain_wall):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
