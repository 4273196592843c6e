"""GPU smoke and speed check of the three models' training and inference steps (no Ray).

    python benchmarks/gpu_models.py [--quick]

For each model: a few training steps (forward, loss, backward, SGD/Adam step) and
inference batches on the first CUDA device in bf16 autocast + channels_last (what
``--precision auto`` picks on GPUs) and in fp32, after warm-up; prints images/s and
checks every output is finite. Used to validate the GPU code path of the models and
to size GPU runs; Ray Train itself is not involved (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from maskcrypt.core.precision import autocast, use_bf16
from maskcrypt.masks.core import overlay
from maskcrypt.models import Inpainter, InpainterConfig, Recognizer, RecognizerConfig
from maskcrypt.models.losses import inpaint_loss


def timed(fn, steps: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def measure(name: str, module: torch.nn.Module, train_step, infer, batch: int, bf16: bool, steps: int) -> None:
    """Time training steps (train mode) and inference batches (eval mode); print both rates."""
    module.train()
    t_train = timed(train_step, steps)
    module.eval()
    t_inf = timed(infer, steps)
    tag = "bf16" if bf16 else "fp32"
    print(f"{name:28} {tag}  train {batch / t_train:9.0f} img/s   inference {batch / t_inf:9.0f} img/s")
    print(f"RESULT gpu_{name.replace(' ', '_')}_{tag}_train_img_s {batch / t_train:.0f}")
    print(f"RESULT gpu_{name.replace(' ', '_')}_{tag}_infer_img_s {batch / t_inf:.0f}")


def bench_recognizer(name: str, cfg: RecognizerConfig, batch: int, bf16: bool, steps: int) -> None:
    dev = torch.device("cuda")
    model = Recognizer(cfg).to(dev)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch, cfg.channels, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=dev)
    m = (torch.rand(batch, cfg.image_size, cfg.image_size, device=dev) > 0.5).to(torch.uint8)
    y = torch.randint(0, cfg.num_classes, (batch,), device=dev)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)

    def train_step():
        with autocast("cuda", bf16):
            loss = F.cross_entropy(model(overlay(x, m), y).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)

    def infer():
        with torch.inference_mode(), autocast("cuda", bf16):
            out = model(overlay(x, m))
        assert torch.isfinite(out).all()

    measure(name, model, train_step, infer, batch, bf16, steps)


def bench_inpainter(name: str, cfg: InpainterConfig, batch: int, bf16: bool, steps: int) -> None:
    dev = torch.device("cuda")
    net = Inpainter(cfg).to(dev)
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    s = cfg.image_size
    img = torch.rand(batch, 3, s, s, device=dev)
    mask = (torch.rand(batch, 1, s, s, device=dev) > 0.4).float()

    def train_step():
        with autocast("cuda", bf16):
            out = net(img * mask, mask)
            loss, _ = inpaint_loss(out, img, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)

    def infer():
        with torch.inference_mode(), autocast("cuda", bf16):
            out = net(img * mask, mask)
        assert torch.isfinite(out).all()

    measure(name, net, train_step, infer, batch, bf16, steps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 1
    steps = 5 if args.quick else 20
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"auto precision -> {'bf16' if use_bf16('auto', 'cuda') else 'fp32'}")
    for bf16 in (True, False):
        bench_recognizer("compact w32 32px", RecognizerConfig(num_classes=50, image_size=32), 256, bf16, steps)
        bench_recognizer("resnet50 112px", RecognizerConfig(arch="resnet50", num_classes=1000, image_size=112),
                         256, bf16, steps)
        bench_recognizer("iresnet50 arcface 112px", RecognizerConfig(arch="iresnet50", num_classes=1000,
                                                                     image_size=112, head="arcface"), 256, bf16, steps)
        bench_inpainter("rfr-net small 32px", InpainterConfig(), 64, bf16, steps)
        bench_inpainter("rfr-net published 256px", InpainterConfig(width=64, iterations=6, image_size=256), 6,
                        bf16, steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
