"""The evaluator's step on one device, without Ray: mask-then-recognize (E and O) and the inpainting attack.

    python benchmarks/gpu_step.py                          # on a CUDA machine: the full table
    python benchmarks/gpu_step.py --device cpu --quick     # resnet18, batch 8, two steps: a smoke test

Needs only torch and numpy (and torchvision for the ResNets): it imports the
:class:`~maskcrypt.models.predictor.Predictor` that the Ray scorer, the service and the
benchmarks use, which loads neither Ray nor pyarrow nor pandas, so it runs on a bare
GPU machine with ``PYTHONPATH`` pointing at a checkout.

For each architecture, precision and batch size, with untrained weights (speed does not
depend on them) at ``--size`` px:

* **bare**: ``Predictor.outputs`` of E and O on pre-masked uint8 images already on the
  device (no overlay): the models' own forward;
* **masked**: the same call with a different mask per image (the overlay on the device,
  as the scorer does): masked images/s per model, and the ratio to bare;
* **agreement**: the largest difference between the masked and the bare outputs (the
  same images, masked on the device or beforehand): 0 up to rounding;
* **attack**: R (RFR-Net, ``--inpaint-width``/``--iterations``) fills the holes, then E
  and O recognize: images/s.

Ends with ``RESULT`` lines. Targets on an H200-class GPU (docs/benchmarks.md, "Adaptive ranking"): masked >= 0.9x
bare and >= 10,000 masked images/s for ResNet-50 at 112 px in bf16.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from maskcrypt.models import Inpainter, InpainterConfig, Recognizer, RecognizerConfig
from maskcrypt.models.predictor import Predictor


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, n_images: int, steps: int, device: torch.device, warm: int = 1) -> float:
    """Images per second of ``fn`` (which processes ``n_images``), after ``warm`` untimed calls."""
    for _ in range(warm):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return n_images * steps / (time.perf_counter() - t0)


def bench(arch: str, precision: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = RecognizerConfig(arch=arch, num_classes=1000, image_size=args.size, width=args.width)
    models = {"E": Recognizer(cfg), "O": Recognizer(cfg)}
    r = Inpainter(InpainterConfig(width=args.inpaint_width, iterations=args.iterations, image_size=args.size))
    p = Predictor(models, device, precision, chunk=batch, inpainter=r)
    x = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    masks = (torch.rand(batch, args.size, args.size, device=device) > 0.5).to(torch.uint8)
    premasked = p.to_device(x * masks[:, None])
    x = p.to_device(x)
    out = {
        "bare": rate(lambda: p.outputs(premasked), batch, args.steps, device),
        "masked": rate(lambda: p.outputs(x, masks), batch, args.steps, device),
        "attack": rate(lambda: p.outputs(x, masks, fill=True), batch, max(1, args.steps // 2), device),
    }
    masked_out, bare_out = p.outputs(x, masks), p.outputs(premasked)
    if not all(torch.isfinite(v).all() for v in masked_out.values()):
        raise SystemExit(f"{arch} {precision} batch {batch}: non-finite outputs")
    # The overlay on the device must be the same computation as masking beforehand: the speed
    # figures compare two paths only if they give the same outputs.
    out["max_abs_diff"] = max(float((masked_out[k].float() - bare_out[k].float()).abs().max()) for k in masked_out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="resnet18, batch 8, two steps, fp32 (a smoke test)")
    p.add_argument("--archs", default="resnet18,resnet50,iresnet50")
    p.add_argument("--batches", default="64,256,1024")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--width", type=int, default=32, help="compact only")
    p.add_argument("--steps", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--inpaint-width", type=int, default=64, help="RFR-Net width (published: 64)")
    p.add_argument("--iterations", type=int, default=6, help="RFR iterations (published: 6)")
    args = p.parse_args()
    if args.quick:
        args.archs, args.batches, args.precisions, args.steps = "resnet18", "8", "fp32", 2
        args.inpaint_width, args.iterations = 8, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --device cpu (a smoke test) or on a GPU machine", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.size} px, untrained weights, E and O per call")
    print(f"{'arch':>10} {'prec':>5} {'batch':>6} {'bare img/s':>12} {'masked img/s':>13} {'ratio':>6} "
          f"{'attack img/s':>13}")
    for arch in args.archs.split(","):
        for precision in args.precisions.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                try:
                    got = bench(arch, precision, batch, args, device)
                except torch.OutOfMemoryError:
                    print(f"{arch:>10} {precision:>5} {batch:>6} out of memory")
                    continue
                # Per model: outputs() runs E and O on every image.
                bare, masked, attack = (2 * got[k] for k in ("bare", "masked", "attack"))
                print(f"{arch:>10} {precision:>5} {batch:>6} {bare:12,.0f} {masked:13,.0f} {masked / bare:6.2f} "
                      f"{attack:13,.0f}")
                tag = f"{arch}_{precision}_b{batch}"
                print(f"RESULT gpu_step_{tag}_masked_images_per_s {masked:.0f}")
                print(f"RESULT gpu_step_{tag}_masked_vs_bare {masked / bare:.3f}")
                print(f"RESULT gpu_step_{tag}_attack_images_per_s {attack:.0f}")
                print(f"RESULT gpu_step_{tag}_masked_bare_max_abs_diff {got['max_abs_diff']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
