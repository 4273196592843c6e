"""Numeric precision: the one place that decides bf16 or fp32 and opens the autocast region.

``--precision`` takes ``auto``, ``bf16`` or ``fp32`` everywhere (training, evaluation,
serving). ``auto`` means bf16 autocast where the hardware has native bf16 (CUDA GPUs that
report it, CPUs with AVX512-BF16 or AMX), fp32 elsewhere; ``bf16`` on hardware without it
is an error rather than a slow emulation. Convolutions run channels_last on every device
(oneDNN's and cuDNN's fast layout), whatever the precision.
Training, the predictor and every benchmark import this module downward, so a speed
figure and the code it describes always resolve precision the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError

PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(value: str, what: str = "--precision") -> str:
    """``value`` if it names a precision, else an error naming the setting."""
    if value not in PRECISIONS:
        raise MaskcryptError(f"{what}: expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def cpu_supports_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX).

    Not torch's ``mkldnn._is_mkldnn_bf16_supported()``: oneDNN also runs bf16 on plain
    AVX-512 by converting to fp32 and back, and reports it as supported there. On such a
    Xeon (AVX-512, no AVX512-BF16 or AMX) the compact recognizer ran in bf16 autocast at
    0.53x its fp32 training rate and 0.51x its inference rate (one thread, 2026-12-07;
    ``benchmarks/cpu_layout.py``'s ``bf16_*_ratio``), so ``auto`` must not choose it and
    ``bf16`` refuses it.
    """
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        return any(bool(p()) for p in probes)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device_type: str) -> bool:
    """Resolve ``auto|bf16|fp32`` for a device type (``cpu`` or ``cuda``)."""
    import torch

    check_precision(precision)
    if precision == "fp32":
        return False
    supported = torch.cuda.is_bf16_supported() if device_type == "cuda" else cpu_supports_bf16()
    if precision == "bf16" and not supported:
        raise MaskcryptError(f"--precision bf16: this {device_type} has no bf16 support; use auto or fp32")
    return supported


def channels_last(device_type: str, bf16: bool) -> bool:
    """Whether 4-d tensors and conv weights should be channels_last: on GPUs and CPUs, in bf16 and fp32.

    ``benchmarks/cpu_layout.py`` on a 2-vCPU AMD EPYC without bf16 (fp32, one thread, the
    default compact recognizer at 32 px): 1.21x the forward rate and 1.33x the training
    rate of NCHW; RFR-Net 1.25x and 1.18x. ``bf16`` stays in the signature so callers state
    the precision they resolved.
    """
    return device_type in ("cuda", "cpu")


def default_chunk(device_type: str, image_size: int = 32) -> int:
    """Images per forward pass when the caller does not say: 256 on GPUs; on CPUs 64 at 32 px, fewer above.

    A CPU pass is fastest when its activations stay in cache, so the CPU chunk holds about
    as many pixels as 64 images of 32 x 32 (16 at 64 px and above, 64 at 32 px and below).
    At 112 px, ``benchmarks/cpu_layout.py`` (one thread, 2-vCPU EPYC with bf16, 2 MiB L2 per
    core; two runs): 16 against 64 gave 1.30-1.58x (bf16) and 1.54-1.92x (fp32) for the
    default compact recognizer, whose first stage runs at full resolution, and 0.91-1.06x /
    1.08-1.17x for ResNet-18; 8 helps the compact one more and costs ResNet-18 up to 0.9x,
    hence the floor of 16. At 32 px 64 against 256 is a wash here, and 64 was the fastest on
    RAY_NOTES' bf16 Xeons. GPUs want large batches (BENCHMARKS: the H200 was fastest at 1,024).
    """
    if device_type == "cuda":
        return 256
    return max(16, min(64, 64 * 32 * 32 // max(1, image_size * image_size)))


def autocast(device_type: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """The autocast region for a forward pass (a no-op region in fp32)."""
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with ``threads`` intra-op threads (restored after): baselines match an actor's CPUs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
