"""The Ray-free GPU harness runs on CPU too (the same Predictor step), and prints its RESULT lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_step_quick_on_cpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--quick"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    results = dict(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("RESULT "))
    tag = "gpu_step_resnet18_fp32_b8_"
    assert set(results) == {tag + k for k in ("masked_images_per_s", "masked_vs_bare", "attack_images_per_s",
                                              "masked_bare_max_abs_diff")}
    assert all(float(results[tag + k]) > 0 for k in ("masked_images_per_s", "masked_vs_bare", "attack_images_per_s"))
    # The two timed paths compute the same thing: E's and O's outputs on the device-masked images equal those on
    # images masked beforehand (fp32, same device), so the masked/bare ratio compares like with like.
    assert float(results[tag + "masked_bare_max_abs_diff"]) <= 1e-4
