"""The run directory: its layout, its recorded configuration, and the preparation stage.

A run directory (DESIGN.md) holds everything one determination produces. This module
owns its layout and ``run.json``; each stage of the method adds its outputs here.
Today the pipeline prepares the inputs: the selection mask library ``masks/``, the
disjoint pool ``masks_train/`` that E is trained with, and pictures of both and of
the data; training, evaluation and selection stages build on it.

A run refuses to be resumed with another configuration (``run.json`` records it),
unless the caller asks to start over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt import __version__
from maskcrypt.errors import MaskcryptError

RUN_JSON = "run.json"


@dataclass(frozen=True)
class PrepareConfig:
    """Inputs of a run. Defaults are the embedded laptop defaults (synthetic faces, 32 px)."""

    data: str = "synthetic:"
    size: int = 32
    mask_count: int = 600
    mask_seed: int = 0
    train_mask_count: int = 120
    train_mask_seed: int = 1
    buckets: str = "1-6"
    #: An existing library (e.g. imported NVIDIA masks) copied in as the selection library
    #: instead of generating ``mask_count`` masks; "" = generate.
    selection_masks: str = ""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise MaskcryptError(f"--size: expected at least 8 pixels, got {self.size}")
        if self.mask_count < 1 or self.train_mask_count < 2:
            raise MaskcryptError(
                "mask counts: expected at least 1 selection mask and 2 training masks, got "
                f"{self.mask_count} and {self.train_mask_count}"
            )
        if self.mask_seed == self.train_mask_seed:
            raise MaskcryptError("mask seeds: the selection library and E's training pool need different seeds")


@dataclass(frozen=True)
class RunPaths:
    """Where each artifact of a run lives (absolute, so jobs work from a temporary working dir)."""

    root: Path

    @classmethod
    def resolve(cls, run: str | os.PathLike[str]) -> RunPaths:
        if "://" in str(run):
            raise MaskcryptError(f"--run {run}: remote run directories are not supported by this stage yet")
        return cls(Path(run).expanduser().resolve())

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def masks_train(self) -> Path:
        return self.root / "masks_train"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON


def code_version() -> str:
    """The package version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def read_run_json(paths: RunPaths) -> dict[str, Any] | None:
    if not paths.run_json.exists():
        return None
    try:
        return json.loads(paths.run_json.read_text())
    except ValueError as exc:
        raise MaskcryptError(f"{paths.run_json}: not valid JSON ({exc}); start over with --restart") from None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON via a temporary file and rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def check_resumable(paths: RunPaths, config: PrepareConfig, restart: bool) -> None:
    """Refuse to add to a run prepared with another configuration, unless ``restart``."""
    recorded = read_run_json(paths)
    if restart and paths.root.exists():
        for sub in (paths.masks, paths.masks_train):
            shutil.rmtree(sub, ignore_errors=True)
        paths.run_json.unlink(missing_ok=True)
        return
    if recorded is None:
        if paths.masks.exists() or paths.masks_train.exists():
            raise MaskcryptError(
                f"run {paths.root}: holds mask libraries but no {RUN_JSON} (an interrupted or foreign run); "
                "pass --restart to rebuild it"
            )
        return
    before = recorded.get("prepare", {})
    now = dataclasses.asdict(config)
    defaults = dataclasses.asdict(PrepareConfig())  # a field added later counts as its default
    diff = {k: (before.get(k, defaults[k]), v) for k, v in now.items() if before.get(k, defaults[k]) != v}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise MaskcryptError(
            f"run {paths.root}: was prepared with other settings ({shown}); use another --run or pass --restart"
        )


def prepare(run: str | os.PathLike[str], config: PrepareConfig, restart: bool = False,
            log: Any = print) -> dict[str, Any]:
    """Build the run's mask libraries and pictures; return what ``run.json`` records.

    Idempotent: re-running with the same configuration finds the libraries complete
    (generation dedupes) and rewrites only pictures and ``run.json``.
    """
    from maskcrypt.data import load
    from maskcrypt.masks import MaskLibrary, overlay, parse_buckets
    from maskcrypt.masks.generate import generate_into
    from maskcrypt.masks.show import mask_grid
    from maskcrypt.report import auto_scale, grid_image, save_png

    paths = RunPaths.resolve(run)
    check_resumable(paths, config, restart)
    paths.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    size = (config.size, config.size)
    lib = MaskLibrary.open_or_create(str(paths.masks), *size)
    buckets = parse_buckets(config.buckets, lib.edges)
    if config.selection_masks:
        source = MaskLibrary.open(config.selection_masks)
        if (source.height, source.width) != size:
            raise MaskcryptError(f"--selection-masks {config.selection_masks}: masks are {source.height}x"
                                 f"{source.width}, the run is {size[0]}x{size[1]} (--size)")
        res = lib.append((b.masks, b.mask_ids, b.sources or [config.selection_masks] * len(b))
                         for b in source.iter_batches())
        log(f"masks/        {len(lib)} selection masks copied from {config.selection_masks} ({res.added} new)")
    else:
        res = generate_into(lib, config.mask_count, config.mask_seed, buckets)
        log(f"masks/        {len(lib)} selection masks ({res.added} new)")
    pool = MaskLibrary.open_or_create(str(paths.masks_train), *size)
    res_t = generate_into(pool, config.train_mask_count, config.train_mask_seed, buckets,
                          exclude_sha256=set(lib.column("sha256")))
    overlap = set(lib.column("sha256")) & set(pool.column("sha256"))
    if overlap:
        raise MaskcryptError(f"run {paths.root}: {len(overlap)} mask(s) are in both masks/ and masks_train/")
    log(f"masks_train/  {len(pool)} masks for training E, disjoint from masks/ ({res_t.added} new)")

    train = load(config.data, default_split="train", size=config.size)
    test = load(config.data, default_split="test", size=config.size)
    log(f"data          {config.data}: {len(train)} train / {len(test)} test images of "
        f"{len(train.class_names)} classes, {train.channels}x{config.size}x{config.size}")

    save_png(mask_grid(lib, per_bucket=8), paths.root / "masks.png")
    save_png(mask_grid(pool, per_bucket=8), paths.root / "masks_train.png")
    picks = [int(np.flatnonzero(test.labels == c)[0]) for c in np.unique(test.labels)[:8]]
    save_png(grid_image(test.images[picks], [test.class_names[test.labels[i]] for i in picks],
                        scale=auto_scale(config.size)), paths.root / "data.png")
    # One mask per bucket over the same faces: what "encryption" looks like, bucket by bucket.
    rows = [test.images[picks]]
    for b in buckets:
        batch = next(lib.iter_batches(1, buckets=[b]), None)
        if batch is not None and len(batch):
            rows.append(overlay(test.images[picks], batch.masks[0]))
    save_png(grid_image(np.concatenate(rows), ncol=len(picks), scale=auto_scale(config.size)),
             paths.root / "encrypted.png")

    record = {
        "code_version": code_version(),
        "python": platform.python_version(),
        "prepare": dataclasses.asdict(config),
        "inputs": {
            "train_data_sha256": train.content_hash(),
            "test_data_sha256": test.content_hash(),
            "masks": {"count": len(lib), "stats": lib.stats()["buckets"]},
            "masks_train": {"count": len(pool)},
        },
        "stages": {"prepare": {"seconds": round(time.perf_counter() - t0, 2),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}},
    }
    previous = read_run_json(paths) or {}
    record["stages"] = {**previous.get("stages", {}), **record["stages"]}
    write_json_atomic(paths.run_json, record)
    return record
