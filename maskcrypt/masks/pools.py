"""A run's attacker pool: masks the attackers draw from, disjoint by sha256 from every other pool.

With generated selection masks the pool is generated too (the attacker knows the
generator). With an imported selection library (``--selection-masks``, e.g. the NVIDIA
irregular masks) the deployed masks come from *that* distribution, so an attacker who
"knows how masks are made" must train on it: a seeded held-out share of each bucket of the
library becomes the pool, taken before any mask is ranked, and the rest is the selection
library. A bucket too small to spare one keeps all its masks and its attacker masks are
generated (the run records which).

Its own module (not the generator's) because it writes a library, which needs pyarrow,
and the generator is imported by the predictor, which must not load it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskcrypt.config import PrepareConfig
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.rundir import RunPaths
from maskcrypt.masks.generate import generate_into, parse_buckets
from maskcrypt.masks.library import MaskLibrary


def per_bucket_share(count: int, buckets: Sequence[int]) -> int:
    """``--attacker-mask-count`` spread over the buckets: the attacker masks each bucket holds out."""
    return max(1, math.ceil(int(count) / max(1, len(buckets))))


def held_out_for_attackers(mask_ids: Sequence[str], buckets: Sequence[int], sha256: Sequence[str],
                           wanted: Sequence[int], share: int, seed: int) -> tuple[list[str], list[int], list[int]]:
    """Which imported masks the attackers get: (mask ids, buckets drawn from the library, buckets generated).

    Per bucket of ``wanted``: when it holds at least twice ``share`` masks, a seeded choice
    of ``share`` of them (seeded by bucket, so adding a bucket moves no other bucket's draw);
    else none (its attacker masks will be generated). A drawn mask whose sha256 is also a
    kept mask's (a duplicate under another id) is left out, so the pool stays disjoint.
    """
    ids, bks, shas = np.asarray(mask_ids, dtype=object), np.asarray(buckets), np.asarray(sha256, dtype=object)
    held: list[str] = []
    drawn, generated = [], []
    for b in wanted:
        mine = np.flatnonzero(bks == b)
        if mine.size < 2 * share:
            generated.append(int(b))
            continue
        rng = np.random.default_rng([int(seed), 0xA77AC, int(b)])
        held.extend(str(m) for m in ids[np.sort(rng.choice(mine, share, replace=False))])
        drawn.append(int(b))
    chosen = set(held)
    kept_sha = {str(h) for m, h in zip(ids, shas) if str(m) not in chosen}
    held = [m for m, h in zip(ids, shas) if str(m) in chosen and str(h) not in kept_sha]
    return [str(m) for m in held], drawn, generated


def attacker_pool(paths: RunPaths, config: PrepareConfig, log: Any = print, source: Any = None,
                  held: Sequence[str] = (), generated: Sequence[int] | None = None) -> Any:
    """``masks_attacker/``: the attackers' pool, sha256-disjoint from every other pool of the run.

    ``source`` and ``held``: the imported selection library and the ids it holds out for
    the attackers (:func:`held_out_for_attackers`); ``generated``: the buckets whose attacker
    masks are generated (None: every bucket, the generated-selection case). Called by
    :func:`prepare`, and by the attack stage for a run prepared before the pool existed
    (same settings: the run's recorded PrepareConfig, defaults for fields it lacks).
    """
    others = [MaskLibrary.open(str(p)) for p in (paths.masks, paths.masks_train, paths.masks_heldout) if p.exists()]
    taken = set().union(*(set(lib.column("sha256")) for lib in others)) if others else set()
    size = (config.size, config.size)
    pool = MaskLibrary.open_or_create(str(paths.masks_attacker), *size)
    buckets = parse_buckets(config.buckets, pool.edges)
    added = 0
    if source is not None and held:
        batch = source.get(list(held))
        added += pool.append([(batch.masks, batch.mask_ids,
                               batch.sources or [str(source.uri)] * len(batch))]).added
    todo = list(buckets) if generated is None else [b for b in buckets if b in set(generated)]
    if todo:
        count = config.attacker_mask_count if generated is None else per_bucket_share(
            config.attacker_mask_count, buckets) * len(todo)
        added += generate_into(pool, count, config.attacker_mask_seed, todo, exclude_sha256=taken).added
    overlap = taken & set(pool.column("sha256"))
    if overlap:
        raise MaskcryptError(f"run {paths.root}: {len(overlap)} mask(s) of masks_attacker/ are also in another pool")
    what = ("generated" if generated is None else
            f"{len(held)} held out of {source.uri if source is not None else 'the selection library'} for bucket(s) "
            f"{sorted(set(buckets) - set(todo))}" + (f", generated for bucket(s) {todo}" if todo else ""))
    log(f"masks_attacker/ {len(pool)} masks for the attackers ({what}), disjoint from every other pool "
        f"({added} new)")
    return pool
