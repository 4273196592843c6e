"""The Ray-free GPU harness runs on CPU too (the same Predictor step), and prints its RESULT lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_quick_on_cpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--quick"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    results = dict(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("RESULT "))
    assert set(results) == {f"gpu_step_resnet18_fp32_b8_{k}" for k in
                            ("masked_images_per_s", "masked_vs_bare", "attack_images_per_s")}
    assert all(float(v) > 0 for v in results.values())
