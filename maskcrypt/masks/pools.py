"""A run's attacker pool: masks the attackers draw from, disjoint by sha256 from every other pool.

Its own module (not the generator's) because it writes a library, which needs pyarrow,
and the generator is imported by the predictor, which must not load it.
"""

from __future__ import annotations

from typing import Any

from maskcrypt.config import PrepareConfig
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.rundir import RunPaths
from maskcrypt.masks.generate import generate_into, parse_buckets
from maskcrypt.masks.library import MaskLibrary


def attacker_pool(paths: RunPaths, config: PrepareConfig, log: Any = print) -> Any:
    """``masks_attacker/``: the attackers' pool, generated sha256-disjoint from every other pool of the run.

    Called by :func:`prepare`, and by the attack stage for a run prepared before the pool
    existed (same settings: the run's recorded PrepareConfig, defaults for fields it lacks).
    """
    others = [MaskLibrary.open(str(p)) for p in (paths.masks, paths.masks_train, paths.masks_heldout) if p.exists()]
    taken = set().union(*(set(lib.column("sha256")) for lib in others)) if others else set()
    size = (config.size, config.size)
    pool = MaskLibrary.open_or_create(str(paths.masks_attacker), *size)
    buckets = parse_buckets(config.buckets, pool.edges)
    res = generate_into(pool, config.attacker_mask_count, config.attacker_mask_seed, buckets, exclude_sha256=taken)
    overlap = taken & set(pool.column("sha256"))
    if overlap:
        raise MaskcryptError(f"run {paths.root}: {len(overlap)} mask(s) of masks_attacker/ are also in another pool")
    log(f"masks_attacker/ {len(pool)} masks for the attackers, disjoint from every other pool ({res.added} new)")
    return pool
