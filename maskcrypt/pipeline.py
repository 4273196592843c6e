"""The method end to end: prepare -> train -> determine (-> tune), from one :class:`RunConfig`.

This is the one place the stages are chained. The ``maskcrypt`` command (``run``,
``prepare``, ``train``, ``determine``, ``tune``) and ``jobs/select.py`` build a
:class:`~maskcrypt.config.runconfig.RunConfig` from flags and/or a YAML file and call
:func:`run_pipeline`; every stage resumes what is already complete. The run directory
is resolved once into a :class:`~maskcrypt.core.rundir.Run`, which every stage receives
and records its summary through. The resolved configuration is recorded in
``run.json`` (``config``). Ray must be running (entry
points start it); paths are made absolute first, because under ``ray job submit`` the
working directory is a temporary copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskcrypt.config import STAGES
from maskcrypt.config.runconfig import RunConfig
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.rundir import Run
from maskcrypt.data.spec import absolute_spec, closed_held_out
from maskcrypt.determine.stage import determine, format_table1, format_target
from maskcrypt.masks import MaskLibrary, bucket_label
from maskcrypt.prepare import prepare
from maskcrypt.train.driver import train_run
from maskcrypt.train.report import cached_training_quality, format_quality
from maskcrypt.tune import search

#: Fields holding local paths (made absolute) and data specs (their path made absolute).
PATH_FIELDS = ("run", "prepare.selection_masks", "sources.masks", "sources.init_original", "sources.init_inpainter",
               "inpaint.vgg_weights", "sources.init_encrypted")
SPEC_FIELDS = ("prepare.data", "sources.val_data", "sources.inpaint_data", "determine.test_data", "attack.data")


def absolute_path(path: str) -> str:
    """Absolute local path (URIs and "" unchanged)."""
    return path if not path or "://" in path else str(Path(path).expanduser().resolve())


def _get(config: RunConfig, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def resolve(config: RunConfig) -> RunConfig:
    """The config with every local path and data-spec path absolute."""
    values = {f: absolute_path(_get(config, f)) for f in PATH_FIELDS}
    values |= {f: absolute_spec(_get(config, f)) for f in SPEC_FIELDS}
    return config.with_values(values)


def record_config(run: Run, config: RunConfig) -> None:
    """``run.json``'s ``config``: the resolved RunConfig of the latest invocation that prepared the run."""
    run.set_section("config", config.to_dict())


def run_pipeline(config: RunConfig, start: str = "prepare", restart: bool = False, retrain: bool = False,
                 redetermine: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stages from ``start`` to ``config.until``; returns each stage's summary by name."""
    if start not in STAGES or STAGES.index(start) > STAGES.index(config.until):
        raise MaskcryptError(f"stages: cannot run from {start!r} to {config.until!r} (order: {', '.join(STAGES)})")
    config = resolve(config)
    stages = STAGES[STAGES.index(start): STAGES.index(config.until) + 1]
    run = Run.open(config.run)
    log(f"run {run.root}: {' -> '.join(stages)}")
    out: dict[str, Any] = {}
    started = time.perf_counter()
    walls: dict[str, float] = {}
    if "prepare" in stages:
        out["prepare"] = prepare_stage(config, run, restart, log)
        record_config(run, config)  # a run started from later stages keeps its record; those stages record theirs
        walls["prepare"] = time.perf_counter() - started
    elif not run.root.is_dir():
        raise MaskcryptError(f"run {run.root}: does not exist (prepare and train it first: maskcrypt run)")
    for name, stage in (("train", lambda: train_stage(config, run, retrain, log)),
                        ("determine", lambda: determine_stage(config, run, redetermine, log)),
                        ("tune", lambda: tune_stage(config, run, log))):
        if name in stages:
            t0 = time.perf_counter()
            out[name] = stage()
            walls[name] = time.perf_counter() - t0
    determined = (out.get("determine") or {}).get("seconds") or {}
    log(time_line(time.perf_counter() - started, walls, determined))
    return out


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"


def time_line(total: float, stages: dict[str, float], determine: dict[str, float]) -> str:
    """The run's last line: its wall time, each stage's, and the determination's own stages (``seconds`` of
    targets.json), so a change that slows one stage shows where."""
    parts = []
    for name, seconds in stages.items():
        inner = [f"{k} {v:.0f} s" for k, v in determine.items() if k != "total"] if name == "determine" else []
        parts.append(f"{name} {_duration(seconds)}" + (f" [{', '.join(inner)}]" if inner else ""))
    return f"time: {_duration(total)} wall; " + "; ".join(parts)


def prepare_stage(config: RunConfig, run: Run, restart: bool, log: Callable[[str], None]) -> dict[str, Any]:
    record = prepare(run, config.prepare, restart=restart, log=log)
    paths = run.paths
    log(format_mask_stats(MaskLibrary.open(str(paths.masks)).stats()))
    log(f"pictures: {paths.root}/masks.png, masks_train.png, data.png, encrypted.png; prepared in "
        f"{record['stages']['prepare']['seconds']}s")
    return record


def train_stage(config: RunConfig, run: Run, retrain: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Train the models, then (when all three exist) the held-out quality report."""
    metas = train_run(run, config.prepare.data, config.prepare.size, sources=config.sources,
                      models=config.model, train_config=config.train, inpaint_config=config.inpaint,
                      sampling=config.sampling, resources=config.resources, retrain=retrain, log=log)
    paths = run.paths
    for role, meta in metas.items():
        m = meta["metrics"]
        figure = (f"held-out accuracy {m['test_accuracy']:.1%}" if "test_accuracy" in m
                  else f"hole PSNR {m['hole_psnr']:.2f} dB (mean fill {m['mean_fill_psnr']:.2f} dB)")
        log(f"{role:>10}: {figure} after {meta['epoch']} epochs -> {paths.models / role}")
    out: dict[str, Any] = {"models": metas}
    if set(metas) == {"original", "encrypted", "inpainter"}:
        # closed set: E's and O's accuracy on unseen images of the training identities (val under split_by=identity)
        quality = cached_training_quality(run, closed_held_out(config.prepare.data), seed=config.train.seed,
                                          settings=config.evaluation, log=log)
        log(format_quality(quality))
        out["quality"] = quality
    return out


def determine_stage(config: RunConfig, run: Run, redetermine: bool, log: Callable[[str], None]) -> dict[str, Any]:
    import pandas as pd

    result = determine(run, config.determine, config.thresholds, config.evaluation, config.adaptive,
                       redo=redetermine, log=log, attackers=config.attack)
    paths = run.paths
    log("Table 1 (accuracy per bucket, mean ± std over repetitions):\n"
        + format_table1(pd.read_parquet(paths.results / "table1.parquet")))
    for t in result["targets"]:
        log(format_target(t))
    log(f"targets: {paths.root / 'targets.json'}; report: {paths.root / 'report.md'}")
    return result


def tune_stage(config: RunConfig, run: Run, log: Callable[[str], None]) -> dict[str, Any]:
    t = config.tune
    return search(run, t.budget, mode=t.search, samples=t.samples, grid_points=t.grid_points, seed=t.seed,
                  trial_cpus=t.trial_cpus, log=log)


def format_mask_stats(stats: dict[str, Any]) -> str:
    """A fixed-width table of per-bucket counts and ratios."""
    edges = stats["edges"]
    lines = [f"{stats['uri']}: {stats['count']} masks of {stats['height']}x{stats['width']}, "
             f"{stats['bytes_on_disk'] / 1e6:.2f} MB on disk"
             + (f" ({stats['bytes_per_mask']:.0f} B/mask)" if stats["bytes_per_mask"] else ""),
             f"{'bucket':>7} {'range':>12} {'count':>8} {'min':>7} {'mean':>7} {'max':>7}"]
    for b in [*range(1, len(edges)), -1]:
        row = stats["buckets"][str(b)]
        vals = ["" if row[k] is None else f"{row[k]:.4f}" for k in ("ratio_min", "ratio_mean", "ratio_max")]
        lines.append(f"{b:>7} {bucket_label(b, edges):>12} {row['count']:>8} {vals[0]:>7} {vals[1]:>7} {vals[2]:>7}")
    return "\n".join(lines)
