"""What the embedded default costs per image on one CPU thread: layout, batch and width, measured side by side.

    python benchmarks/cpu_layout.py            # ~4 minutes
    python benchmarks/cpu_layout.py --quick    # ~1 minute, fewer repeats

One torch thread, as each Ray Train worker and evaluation actor has. Untrained weights
(speed does not depend on them), 32 x 32 inputs, 80 classes (the default's identities).
Each configuration is timed for ``--seconds`` after two warm-up calls, the whole set
``--repeats`` times interleaved (this machine drifts by ~15% from one minute to the next),
and the median is kept. Ends with ``RESULT`` lines, each a ratio against a baseline
measured in the same run:

* ``channels_last_forward_ratio`` / ``channels_last_train_ratio``: the compact recognizer
  in channels_last against NCHW (what ``maskcrypt.core.precision.channels_last`` decides);
* ``batch64_forward_ratio``: 64 images per forward pass against 256
  (``maskcrypt.core.precision.default_chunk``);
* ``width16_forward_ratio`` / ``width16_train_ratio``: width 16 against 32, both
  channels_last (the default's ``--width``);
* ``rfr_channels_last_forward_ratio`` / ``rfr_channels_last_train_ratio``: RFR-Net
  (width 16, 3 iterations) likewise;
* ``chunk16_112px_<arch>_<precision>_ratio``: at 112 x 112, the evaluator's
  :class:`~maskcrypt.models.predictor.Predictor` (auto precision: bf16 autocast where the
  CPU has it; and fp32) with 16 images per pass against 64, for the compact recognizer
  and ResNet-18 (``maskcrypt.core.precision.default_chunk`` scales the CPU chunk by pixels);
  the 8-image case is printed too;
* ``bf16_forward_ratio`` / ``bf16_train_ratio``: the compact recognizer (width 16,
  channels_last) under bf16 autocast against fp32, forced whatever ``--precision auto``
  would choose: the figure behind ``maskcrypt.core.precision.cpu_supports_bf16`` (oneDNN
  runs bf16 on plain AVX-512 by converting, and is slower there than fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(step: Callable[[], None], images: int, seconds: float) -> float:
    """Images per second of ``step`` (``images`` per call) after two warm-up calls."""
    step()
    step()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += images
    return n / (time.perf_counter() - t0)


def recognizer_cases(seconds: float) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from maskcrypt.models.recognizer import Recognizer, RecognizerConfig

    out = {}
    for width in (16, 32):
        for layout in ("nchw", "cl"):
            torch.manual_seed(0)
            model = Recognizer(RecognizerConfig(num_classes=80, width=width))
            fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
            model = model.to(memory_format=fmt)
            for batch in (64, 256):
                x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=fmt)
                model.eval()
                with torch.inference_mode():
                    out[f"w{width}_{layout}_fwd_b{batch}"] = rate(lambda m=model, x=x: m(x), batch, seconds)
            x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=fmt)
            y = torch.randint(0, 80, (128,))
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            model.train()

            def train_step(m=model, x=x, y=y, opt=opt) -> None:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()
                opt.step()

            out[f"w{width}_{layout}_train_b128"] = rate(train_step, 128, seconds)
    return out


def inpainter_cases(seconds: float) -> dict[str, float]:
    import torch

    from maskcrypt.models.inpainter import Inpainter, InpainterConfig
    from maskcrypt.models.losses import InpaintLossWeights, inpaint_loss

    out = {}
    weights = InpaintLossWeights()
    for layout in ("nchw", "cl"):
        torch.manual_seed(0)
        fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
        net = Inpainter(InpainterConfig()).to(memory_format=fmt)
        x = torch.rand(64, 3, 32, 32).contiguous(memory_format=fmt)
        m = (torch.rand(64, 1, 32, 32) > 0.3).float().contiguous(memory_format=fmt)
        net.eval()
        with torch.inference_mode():
            out[f"rfr_{layout}_fwd_b64"] = rate(lambda n=net, x=x, m=m: n(x * m, m), 64, seconds)
        opt = torch.optim.Adam(net.parameters(), lr=2e-4)
        net.train()
        xt, mt = x[:32], m[:32]

        def train_step(n=net, x=xt, m=mt, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            loss, _ = inpaint_loss(n(x * m, m), x, m, weights, None)
            loss.backward()
            opt.step()

        out[f"rfr_{layout}_train_b32"] = rate(train_step, 32, seconds)
    return out


def bf16_cases(seconds: float) -> dict[str, float]:
    """The default recognizer in bf16 autocast and in fp32, forward and training step."""
    import torch
    import torch.nn.functional as F

    from maskcrypt.models.recognizer import Recognizer, RecognizerConfig

    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Recognizer(RecognizerConfig(num_classes=80, width=16)).to(memory_format=torch.channels_last)
        x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 80, (128,))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def forward(m=model, x=x[:64], on=precision == "bf16") -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
                m(x)

        def train_step(m=model, x=x, y=y, opt=opt, on=precision == "bf16") -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()

        model.eval()
        out[f"{precision}_fwd_b64"] = rate(forward, 64, seconds)
        model.train()
        out[f"{precision}_train_b128"] = rate(train_step, 128, seconds)
    return out


def chunk_cases(seconds: float) -> dict[str, float]:
    """The Predictor at 112 px on 64 images, per architecture, precision and images per pass."""
    import torch

    from maskcrypt.models.predictor import Predictor
    from maskcrypt.models.recognizer import Recognizer, RecognizerConfig

    out = {}
    x = torch.randint(0, 256, (64, 3, 112, 112), dtype=torch.uint8)
    for arch in ("compact", "resnet18"):
        torch.manual_seed(0)
        model = Recognizer(RecognizerConfig(arch=arch, num_classes=80, width=16, image_size=112))
        for precision in ("auto", "fp32"):
            for chunk in (8, 16, 64):
                p = Predictor(model, precision=precision, chunk=chunk)
                xs = p.to_device(x)
                out[f"{arch}_112_{precision}_chunk{chunk}"] = rate(lambda p=p, xs=xs: p.outputs(xs), 64, seconds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 s per case, 2 repeats")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    seconds, repeats = (1.0, 2) if args.quick else (args.seconds, args.repeats)

    import torch

    torch.set_num_threads(1)
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        cases = {**recognizer_cases(seconds), **inpainter_cases(seconds), **bf16_cases(seconds),
                 **chunk_cases(seconds)}
        for name, value in cases.items():
            runs.setdefault(name, []).append(value)
    med = {name: statistics.median(values) for name, values in runs.items()}
    from maskcrypt.core.precision import cpu_supports_bf16

    print(f"one torch thread, {repeats} interleaved repeats of {seconds:g} s, median images/s; "
          f"bf16 instructions: {'yes' if cpu_supports_bf16() else 'no (auto = fp32)'}")
    for name, value in med.items():
        print(f"  {name:<24} {value:9,.0f}")
    ratios = {
        "channels_last_forward_ratio": med["w16_cl_fwd_b64"] / med["w16_nchw_fwd_b64"],
        "channels_last_train_ratio": med["w16_cl_train_b128"] / med["w16_nchw_train_b128"],
        "batch64_forward_ratio": med["w16_cl_fwd_b64"] / med["w16_cl_fwd_b256"],
        "width16_forward_ratio": med["w16_cl_fwd_b64"] / med["w32_cl_fwd_b64"],
        "width16_train_ratio": med["w16_cl_train_b128"] / med["w32_cl_train_b128"],
        "rfr_channels_last_forward_ratio": med["rfr_cl_fwd_b64"] / med["rfr_nchw_fwd_b64"],
        "rfr_channels_last_train_ratio": med["rfr_cl_train_b32"] / med["rfr_nchw_train_b32"],
        "bf16_forward_ratio": med["bf16_fwd_b64"] / med["fp32_fwd_b64"],
        "bf16_train_ratio": med["bf16_train_b128"] / med["fp32_train_b128"],
        **{f"chunk16_112px_{arch}_{precision}_ratio":
           med[f"{arch}_112_{precision}_chunk16"] / med[f"{arch}_112_{precision}_chunk64"]
           for arch in ("compact", "resnet18") for precision in ("auto", "fp32")},
    }
    for name, value in ratios.items():
        print(f"RESULT {name} {value:.3f}")


if __name__ == "__main__":
    main()
