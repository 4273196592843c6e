"""The main job as ``make run`` runs it, on tiny settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY_DATA, TINY_SIZE

from maskcrypt.masks import MaskLibrary

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic:identities=4,per_identity=6", "--size", "16", "--mask-count", "24",
        "--train-mask-count", "12"]


def job(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "select.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd="/")


def test_select_job_prepares_a_run_and_resumes_only_with_the_same_settings(tmp_path):
    run = tmp_path / "run"
    r = job("--run", str(run), *TINY, "--until", "prepare")
    assert r.returncode == 0, r.stderr
    for name in ("masks.png", "masks_train.png", "data.png", "encrypted.png", "run.json"):
        assert (run / name).exists(), name
    lib, pool = MaskLibrary.open(str(run / "masks")), MaskLibrary.open(str(run / "masks_train"))
    assert len(lib) == 24 and len(pool) == 12
    assert set(lib.column("sha256")).isdisjoint(pool.column("sha256"))
    record = json.loads((run / "run.json").read_text())
    assert record["prepare"]["size"] == 16 and len(record["inputs"]["test_data_sha256"]) == 64
    # Same settings: idempotent.
    r = job("--run", str(run), *TINY, "--until", "prepare")
    assert r.returncode == 0 and "(0 new)" in r.stdout
    # Other settings: refused by name, unless --restart.
    r = job("--run", str(run), *TINY[:-2], "--train-mask-count", "14", "--until", "prepare")
    assert r.returncode == 2 and "train_mask_count: 12 -> 14" in r.stderr
    r = job("--run", str(run), *TINY[:-2], "--train-mask-count", "14", "--restart", "--until", "prepare")
    assert r.returncode == 0, r.stderr
    assert len(MaskLibrary.open(str(run / "masks_train"))) == 14


def test_select_job_on_a_trained_run_retrains_nothing_and_determines(tiny_run, tmp_path):
    """``make run``'s path with its own local Ray, on the session's trained tiny run (training itself runs
    end to end in tests/test_jobs.py under ``ray job submit``, and in test_train.py)."""
    run = tmp_path / "run"
    # Without what earlier determination tests left in the shared run (parts made with other settings).
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("per_mask.parts", "targets.*"))
    same = ["--data", TINY_DATA, "--size", str(TINY_SIZE), "--mask-count", "24", "--train-mask-count", "12",
            "--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0.5", "--width", "8",
            "--inpaint-width", "4", "--iterations", "1", "--inpaint-epochs", "2", "--inpaint-batch-size", "16",
            "--repeats", "1"]
    r = job("--run", str(run), *same)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("not retrained") == 3, r.stdout[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert set(record["stages"]) == {"prepare", "train", "determine"}
    for table in ("table1", "per_mask", "candidates", "table2"):
        assert (run / "results" / f"{table}.parquet").exists() or "no target mask" in r.stdout, table
    assert "Table 1" in r.stdout and "targets" in json.loads((run / "targets.json").read_text())
    # Impossible thresholds + --require-targets exit 3, with the reason.
    (tmp_path / "th.json").write_text(json.dumps({"t_gap": 1.0}))
    r = job("--run", str(run), *same, "--thresholds", str(tmp_path / "th.json"), "--require-targets")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "no target mask: no bucket has first - second accuracy > 1.00" in r.stdout
    # Other training settings: refused by name before anything runs.
    r = job("--run", str(run), *same[:-4], "--inpaint-batch-size", "8", "--repeats", "1")
    assert r.returncode == 2 and "--retrain" in r.stderr


def test_an_existing_library_becomes_the_selection_library(tmp_path):
    from maskcrypt.masks.generate import generate_into

    own = MaskLibrary.create(str(tmp_path / "nvidia"), 16, 16)
    generate_into(own, 12, seed=5)
    r = job("--run", str(tmp_path / "run"), *TINY, "--selection-masks", str(tmp_path / "nvidia"),
            "--until", "prepare")
    assert r.returncode == 0, r.stderr
    lib, pool = MaskLibrary.open(str(tmp_path / "run" / "masks")), MaskLibrary.open(str(tmp_path / "run" /
                                                                                         "masks_train"))
    assert sorted(lib.column("sha256")) == sorted(own.column("sha256"))
    assert set(lib.column("sha256")).isdisjoint(pool.column("sha256"))
    big = MaskLibrary.create(str(tmp_path / "big"), 32, 32)
    generate_into(big, 2, seed=5)
    r = job("--run", str(tmp_path / "run2"), *TINY, "--selection-masks", str(tmp_path / "big"), "--until", "prepare")
    assert r.returncode == 2 and "masks are 32x32, the run is 16x16" in r.stderr
