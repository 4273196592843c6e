"""The main job as ``make run`` runs it, on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from maskcrypt.masks import MaskLibrary

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic:identities=4,per_identity=6", "--size", "16", "--masks", "24", "--train-masks", "12"]


def job(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "select.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd="/")


def test_select_job_prepares_a_run_and_resumes_only_with_the_same_settings(tmp_path):
    run = tmp_path / "run"
    r = job("--run", str(run), *TINY)
    assert r.returncode == 0, r.stderr
    for name in ("masks.png", "masks_train.png", "data.png", "encrypted.png", "run.json"):
        assert (run / name).exists(), name
    lib, pool = MaskLibrary.open(str(run / "masks")), MaskLibrary.open(str(run / "masks_train"))
    assert len(lib) == 24 and len(pool) == 12
    assert set(lib.column("sha256")).isdisjoint(pool.column("sha256"))
    record = json.loads((run / "run.json").read_text())
    assert record["prepare"]["size"] == 16 and len(record["inputs"]["test_data_sha256"]) == 64
    # Same settings: idempotent.
    r = job("--run", str(run), *TINY)
    assert r.returncode == 0 and "(0 new)" in r.stdout
    # Other settings: refused by name, unless --restart.
    r = job("--run", str(run), *TINY[:-2], "--train-masks", "14")
    assert r.returncode == 2 and "train_mask_count: 12 -> 14" in r.stderr
    r = job("--run", str(run), *TINY[:-2], "--train-masks", "14", "--restart")
    assert r.returncode == 0, r.stderr
    assert len(MaskLibrary.open(str(run / "masks_train"))) == 14
