"""The command line as a user runs it: the installed ``maskcrypt`` script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from datasets import write_celeba, write_idx, write_imagefolder, write_lfw
from PIL import Image

SCRIPT = Path(sys.executable).parent / "maskcrypt"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "maskcrypt"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_generate_600_gives_100_per_bucket_then_show_and_export(tmp_path):
    lib = tmp_path / "L"
    r = run("masks", "generate", "--count", 600, "--size", 64, "--seed", 1, "--out", lib, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("masks", "stats", lib, "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert {b: v["count"] for b, v in stats["buckets"].items()} == {"-1": 0, **{str(b): 100 for b in range(1, 7)}}
    assert stats["height"] == stats["width"] == 64 and stats["uncommitted_parts"] == 0
    r = run("masks", "stats", lib)
    assert "(0.4,0.5]" in r.stdout and "out of range" in r.stdout
    r = run("masks", "show", lib, "--per-bucket", 4, "--out", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 64
    r = run("masks", "export", lib, "--out", tmp_path / "png", "--ids", "g1-0000000", "g1-0000001")
    assert r.returncode == 0 and sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "g1-0000000.png", "g1-0000001.png"]


def test_import_nvidia_style_directory(tmp_path):
    src = tmp_path / "testing_mask_dataset"
    src.mkdir()
    arr = np.zeros((512, 512), np.uint8)
    arr[:, :256] = 255  # white = hole: the left half
    Image.fromarray(arr).save(src / "00000.png")
    Image.fromarray(np.full((512, 512), 128, np.uint8)).save(src / "00001.png")  # grey: not a mask
    r = run("masks", "import", src, "--out", tmp_path / "lib", "--size", 64)
    assert r.returncode == 0, r.stderr
    assert "imported 1 masks" in r.stdout and "skipped 00001.png" in r.stderr
    r = run("masks", "export", tmp_path / "lib", "--out", tmp_path / "npy", "--format", "npy")
    mask = np.load(tmp_path / "npy" / "00000.npy")
    assert mask[:, :32].max() == 0 and mask[:, 32:].min() == 1  # the hole is 0
    r = run("masks", "import", src, "--out", tmp_path / "lib2", "--size", 64, "--strict")
    assert r.returncode == 2 and "00001.png" in r.stderr and "Traceback" not in r.stderr


def test_data_info_for_every_kind(tmp_path):
    write_imagefolder(tmp_path / "folder")
    write_lfw(tmp_path / "lfw")
    write_celeba(tmp_path / "celeba")
    write_idx(tmp_path / "mnist")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (8, 12, 12), dtype=np.uint8), labels=np.arange(8) % 2)
    specs = {
        "imagefolder": f"imagefolder:{tmp_path / 'folder'}",
        "lfw": f"lfw:{tmp_path / 'lfw'}",
        "celeba": f"celeba:{tmp_path / 'celeba'}",
        "idx": f"idx:{tmp_path / 'mnist'}",
        "npz": f"npz:{tmp_path / 'd.npz'}",
        "synthetic": "synthetic:identities=4,per_identity=5,size=16",
    }
    for kind, spec in specs.items():
        r = run("data", "info", spec, "--json")
        assert r.returncode == 0, (kind, r.stderr)
        info = json.loads(r.stdout)
        assert info["kind"] == kind and info["images"] > 0 and info["classes"] > 0
    r = run("data", "info", specs["lfw"])
    assert "pairs       4" in r.stdout and "classes     3" in r.stdout
    r = run("data", "show", specs["synthetic"], "--out", tmp_path / "faces.png")
    assert r.returncode == 0 and (tmp_path / "faces.png").exists()


def test_errors_are_one_line_without_traceback(tmp_path):
    for args, needle in [
        (("masks", "stats", tmp_path / "none"), "does not exist"),
        (("data", "info", "foo:bar"), "unknown kind 'foo'"),
        (("data", "info", f"imagefolder:{tmp_path}"), "no images under"),
        (("masks", "generate", "--count", 5, "--size", 2, "--out", tmp_path / "x"), "at least 4x4"),
        (("masks", "generate", "--count", 5, "--buckets", "9", "--out", tmp_path / "y"), "--buckets"),
    ]:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
