"""Stage 1, prepare: the run's mask libraries and pictures (docs/method.md, "Inputs").

* ``masks/``: the selection library (generated with the mask seed, or a library the
  user brings, e.g. imported NVIDIA masks, copied in);
* ``masks_train/``: the disjoint pool E and R train with (another seed; sha256-disjoint
  from ``masks/``);
* ``masks_heldout/``: a small pool for training-time figures on masks E never trained
  with (a third seed; sha256-disjoint from both);
* ``masks_attacker/``: the attackers' own pool (a fourth seed; sha256-disjoint from all
  three): the adaptive-family attacker trains with fresh masks of the target buckets
  from it, as E trains with ``masks_train/``;
* pictures of both and of the data, and ``run.json`` with the configuration and the
  data's hashes.

Idempotent: re-running with the same configuration finds the libraries complete
(generation dedupes) and rewrites only pictures and ``run.json``; other settings are
refused unless ``restart``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
from typing import Any

import numpy as np

from maskcrypt.config import PrepareConfig
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import write_json
from maskcrypt.core.rundir import Run, RunPaths, check_resumable, code_version
from maskcrypt.data import labelled, source_split
from maskcrypt.masks import MaskLibrary, overlay, parse_buckets
from maskcrypt.masks.generate import generate_into
from maskcrypt.masks.pools import attacker_pool, held_out_for_attackers, per_bucket_share
from maskcrypt.reporting.pictures import auto_scale, grid_image, mask_grid, save_png


def prepare(run: str | os.PathLike[str] | Run, config: PrepareConfig, restart: bool = False,
            log: Any = print) -> dict[str, Any]:
    """Build the run's mask libraries and pictures; return what ``run.json`` records.

    Idempotent: re-running with the same configuration finds the libraries complete
    (generation dedupes) and rewrites only pictures and ``run.json``. A first preparation
    that fails (a bad data spec, a library of another size) removes what it created, so
    the next attempt starts clean instead of finding libraries without a ``run.json``.
    """
    run = Run.open(run)
    paths = run.paths
    fresh = not paths.run_json.exists() and not any(p.exists() for p in _libraries(paths))
    try:
        return _prepare(paths, config, restart, log)
    except BaseException:
        if fresh:
            for lib in _libraries(paths):
                shutil.rmtree(lib, ignore_errors=True)
        raise


def _libraries(paths: RunPaths) -> list[Any]:
    return [paths.masks, paths.masks_train, paths.masks_heldout]


def _prepare(paths: RunPaths, config: PrepareConfig, restart: bool, log: Any) -> dict[str, Any]:
    check_resumable(paths, config, restart)
    paths.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    size = (config.size, config.size)
    lib = MaskLibrary.open_or_create(str(paths.masks), *size)
    buckets = parse_buckets(config.buckets, lib.edges)
    source, spared, drawn, generated = None, [], [], None
    if config.selection_masks:
        source = MaskLibrary.open(config.selection_masks)
        if (source.height, source.width) != size:
            raise MaskcryptError(f"--selection-masks {config.selection_masks}: masks are {source.height}x"
                                 f"{source.width}, the run is {size[0]}x{size[1]} (--size)")
        # The attackers' share of the deployed distribution, held out before any mask is ranked.
        index = source.table(columns=["mask_id", "bucket", "sha256"], edges=lib.edges)
        spared, drawn, generated = held_out_for_attackers(
            index.column("mask_id").to_pylist(), index.column("bucket").to_numpy(), index.column("sha256").to_pylist(),
            buckets, per_bucket_share(config.attacker_mask_count, buckets), config.attacker_mask_seed)
        out = set(spared)

        def kept(b: Any) -> tuple[Any, list[str], list[str]]:
            keep = [i for i, m in enumerate(b.mask_ids) if m not in out]
            sources = b.sources or [config.selection_masks] * len(b)
            return b.masks[keep], [b.mask_ids[i] for i in keep], [sources[i] for i in keep]

        res = lib.append(kept(b) for b in source.iter_batches())
        log(f"masks/        {len(lib)} selection masks copied from {config.selection_masks} ({res.added} new; "
            f"{len(spared)} held out for the attackers)")
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
    held = MaskLibrary.open_or_create(str(paths.masks_heldout), *size)
    res_h = generate_into(held, config.heldout_mask_count, config.heldout_mask_seed, buckets,
                          exclude_sha256=set(lib.column("sha256")) | set(pool.column("sha256")))
    log(f"masks_heldout/ {len(held)} masks for figures on unseen masks during training, disjoint from both "
        f"({res_h.added} new)")
    attacker = attacker_pool(paths, config, log, source=source, held=spared, generated=generated)

    # The splits' indexes only: the training set is decoded by Ray Data during training, never here.
    train = source_split(config.data, default_split="train", size=config.size)
    test = source_split(config.data, default_split="test", size=config.size)
    log(f"data          {labelled(config.data)} {len(train)} train / {len(test)} test images of "
        f"{len(train.class_names)} classes, {train.channels}x{config.size}x{config.size}")

    save_png(mask_grid(lib, per_bucket=8), paths.root / "masks.png")
    save_png(mask_grid(pool, per_bucket=8), paths.root / "masks_train.png")
    picks = [int(np.flatnonzero(test.labels == c)[0]) for c in np.unique(test.labels)[:8]]
    faces = test.read(np.asarray(picks))
    save_png(grid_image(faces, [test.class_names[test.labels[i]] for i in picks],
                        scale=auto_scale(config.size)), paths.root / "data.png")
    # One mask per bucket over the same faces: what "encryption" looks like, bucket by bucket.
    rows = [faces]
    for b in buckets:
        batch = next(lib.iter_batches(1, buckets=[b]), None)
        if batch is not None and len(batch):
            rows.append(overlay(faces, batch.masks[0]))
    save_png(grid_image(np.concatenate(rows), ncol=len(picks), scale=auto_scale(config.size)),
             paths.root / "encrypted.png")

    record = {
        "code_version": code_version(),
        "python": platform.python_version(),
        "prepare": dataclasses.asdict(config),
        "inputs": {
            # Fingerprints of the splits (files by content, items or pixels; labels; options): no pixel decoded.
            "train_data_sha256": train.fingerprint(paths.file_digests),
            "test_data_sha256": test.fingerprint(paths.file_digests),
            "masks": {"count": len(lib), "stats": lib.stats()["buckets"]},
            "masks_train": {"count": len(pool)},
            "masks_heldout": {"count": len(held)},
            # Where the attackers' masks come from, per bucket: the imported library's own held-out share, or the
            # generator (every bucket when the selection masks are generated too).
            "masks_attacker": {"count": len(attacker), "from_library": drawn,
                               "generated": parse_buckets(config.buckets, lib.edges) if generated is None
                               else generated},
        },
        "stages": {"prepare": {"seconds": round(time.perf_counter() - t0, 2),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}},
    }
    previous = Run(paths).record
    record["stages"] = {**previous.get("stages", {}), **record["stages"]}
    write_json(paths.run_json, record)
    return record
