"""The job shims in a Python without the project's packages: one line naming them and the fix, no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from maskcrypt.cli.environment import REQUIRED

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.py"))


def _job(script: Path, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    """Run a shim with ``python -S`` (no site-packages): only ``pythonpath`` provides packages."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-S", str(script), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_every_job_names_all_missing_packages_in_one_line():
    assert len(JOBS) == 4
    for script in JOBS:
        r = _job(script, "--help")
        assert r.returncode == 2 and r.stdout == "", (script, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(f"error: jobs/{script.name}: {sys.executable} cannot import ")
        assert all(dist in lines[0] for dist in REQUIRED.values()) and ".venv/bin/activate" in lines[0]
        assert len(script.read_text().splitlines()) < 40  # the shims stay thin


def test_a_python_that_lacks_only_pillow_is_told_so(tmp_path):
    """What a Ray head started outside .venv does to ``ray job submit -- python jobs/select.py``."""
    site = Path(sysconfig.get_paths()["purelib"])
    fake = tmp_path / "site-without-pil"
    fake.mkdir()
    for entry in site.iterdir():
        if entry.name == "PIL" or re.match(r"pillow-.*\.dist-info$", entry.name, re.I):
            continue
        (fake / entry.name).symlink_to(entry)
    r = _job(ROOT / "jobs" / "select.py", "--help", pythonpath=str(fake))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(r"cannot import pillow: run it with the project's environment", r.stderr), r.stderr
    r = _job(ROOT / "jobs" / "select.py", "--help", pythonpath=str(site))  # everything there: the real job
    assert r.returncode == 0 and "--run" in r.stdout, r.stderr


def test_required_packages_are_the_projects_dependencies():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=~ ]", d, maxsplit=1)[0].lower() for d in deps}
    # multipart: the service only; onnx*: `maskcrypt export` only. Neither is imported by a job.
    assert set(REQUIRED.values()) == names - {"python-multipart", "onnx", "onnxruntime", "onnxscript"}
