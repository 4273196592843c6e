"""Adaptive per-mask ranking: a race on confidence bounds over one pool of actors (the Ray side).

Ranking thousands of masks by E's accuracy needs every mask's accuracy only near the
top of its bucket. The selection probes are revealed in one seeded random order; each
mask has seen a prefix of it. Round 1 measures every mask on ``plan.first`` images;
after each round the pure rule :func:`maskcrypt.selection.rules.race_step` eliminates, settles
buckets or picks the masks near the boundary that see their next step of images.
Winners end measured on every image, exactly as in full mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import AdaptivePlan, EvalSettings
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.evaluation.crossproduct import check_gpus, check_library, check_models, scorer_kwargs
from maskcrypt.evaluation.scorer import CrossProductScorer
from maskcrypt.evaluation.testset import TestSet
from maskcrypt.runtime.cluster import require_ray
from maskcrypt.selection.rules import race_step


def _range_tasks(todo: pd.DataFrame, bits: dict[str, bytes], actors: int) -> list[dict[str, np.ndarray]]:
    """Actor calls for one round: masks grouped by image range, cut so the pool stays busy and balanced."""
    tasks = []
    for (start, stop), g in todo.groupby(["start", "stop"], sort=True):
        # ~8k masked images a call, but at least two calls per actor when the group allows.
        per = max(1, min(int(np.ceil(8192 / (stop - start))), int(np.ceil(len(g) / (2 * actors)))))
        for i in range(0, len(g), per):
            part = g.iloc[i:i + per]
            tasks.append({"mask_id": part["mask_id"].to_numpy(), "bucket": part["bucket"].to_numpy(),
                          "bits": np.asarray([bits[m] for m in part["mask_id"]], dtype=object),
                          "start": np.full(len(part), start), "stop": np.full(len(part), stop)})
    return tasks


def evaluate_adaptive(
    library: Any,
    test: TestSet,
    models: dict[str, str | Path],
    buckets: Sequence[int],
    keep: int,
    plan: AdaptivePlan = AdaptivePlan(),
    settings: EvalSettings = EvalSettings(),
    log: Callable[[str], None] | None = None,
    max_rounds: int | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Per-mask counts by an adaptive race: the top ``keep`` of each bucket at a fraction of the cost.

    The selection probes are revealed in one seeded random order; each mask has seen a
    prefix of it. Round 1 measures every mask of ``buckets`` on ``plan.first`` images;
    after each round :func:`maskcrypt.selection.rules.race_step` decides, from confidence bounds,
    which masks are eliminated, which buckets are settled (their top ``keep`` provably
    within ``plan.tolerance`` of the rest: they are then measured on every image) and
    which masks near the boundary see their next step of images (``plan.steps``). It
    ends when every bucket is settled. Winners end with counts on every selection image,
    as in full mode; other masks keep the counts of the images they saw (smaller ``n``).

    One pool of ``settings.actors`` Ray actors serves every round (rounds are small and
    many; starting a pool per round cost 10-15 s each). Returns the counts (one row per
    mask, ``split`` = selection, ``rounds`` = how many times it was measured) and one
    record per round: masks, masked images, forward passes, still open, seconds.
    ``max_rounds`` stops the race early (the capacity measurement samples a few rounds
    of a huge library); the last record's ``open`` then says how many masks were left.
    """
    import ray
    from ray.util import ActorPool

    require_ray("adaptive ranking")

    if keep < 1:
        raise MaskcryptError(f"adaptive search: keep must be >= 1, got {keep}")
    check_library(library, test)
    probes = np.flatnonzero(~test.gallery & (test.split == 0))
    if probes.size == 0:
        raise MaskcryptError("adaptive search: the selection split has no probe image")
    resolved = check_models(models, test)
    reveal = probes[np.random.default_rng([plan.seed, 0xADA]).permutation(probes.size)]
    table = library.table(buckets, columns=["mask_id", "bucket", "bits"])
    if table.num_rows == 0:
        raise MaskcryptError(f"mask library {library.uri}: no mask in buckets {list(buckets)}")
    ids = [str(m) for m in table.column("mask_id").to_pylist()]
    bits = dict(zip(ids, table.column("bits").to_pylist()))
    state = pd.DataFrame({"mask_id": ids, "bucket": table.column("bucket").to_numpy().astype(np.int64), "n": 0,
                          "rounds": 0, "eliminated": False})
    del table
    population = int(probes.size)
    steps = plan.steps(population)
    gallery = int(test.gallery.sum()) if test.scoring == "open" else 0
    check_gpus(settings)
    scorer = ray.remote(CrossProductScorer).options(num_cpus=settings.cpus_per_actor,
                                                     num_gpus=settings.gpus_per_actor)
    constructor = scorer_kwargs(test.subset(reveal), resolved, ("selection",), settings, "masks")
    actors = [scorer.remote(**constructor) for _ in range(max(1, min(settings.actors, len(state))))]
    pool = ActorPool(actors)
    rounds: list[dict[str, Any]] = []
    todo = state.assign(start=0, stop=int(steps[0]))
    full = len(state) * population
    if log:
        log(f"adaptive: racing {len(state):,} masks of {state['bucket'].nunique()} bucket(s) on {population:,} "
            f"selection images (full mode: {full:,} masked images per model); first round {len(todo):,} x "
            f"{int(steps[0]):,} on {len(actors)} actor(s)")
    t_start, t_logged, spent = time.perf_counter(), 0.0, 0
    try:
        while len(todo):
            t0 = time.perf_counter()
            found = [pd.DataFrame(r) for r in pool.map_unordered(lambda a, t: a.score.remote(t),
                                                                   _range_tasks(todo, bits, len(actors)))]
            got = pd.concat(found, ignore_index=True).groupby("mask_id").sum(numeric_only=True)
            got = got.drop(columns=[c for c in ("bucket",) if c in got.columns])
            state = state.set_index("mask_id")
            for c in got.columns:
                if c not in state.columns:
                    state[c] = 0 if c.startswith("correct_") or c == "n" else 0.0
                state.loc[got.index, c] += got[c]
            state.loc[got.index, "rounds"] += 1
            state = state.reset_index()
            images = int((todo["stop"] - todo["start"]).sum())
            decided = race_step(state, keep, population, plan.confidence, plan.tolerance, plan.share)
            state["eliminated"] = decided["eliminated"].to_numpy()
            nxt = decided[decided["action"] != ""]
            if len(nxt):
                after = np.searchsorted(steps, nxt["n"].to_numpy(), side="right")
                stop = np.where(nxt["action"] == "complete", population, steps[np.minimum(after, len(steps) - 1)])
                nxt = nxt[["mask_id", "bucket"]].assign(start=nxt["n"].to_numpy(), stop=stop)
            rounds.append({"round": len(rounds) + 1, "masks": len(todo), "images": images,
                           "forward_passes": (images + len(todo) * gallery) * len(resolved),
                           "open": len(nxt), "settled_buckets": int(decided.groupby("bucket")["settled"].all()
                                                                          .sum()),
                           "seconds": round(time.perf_counter() - t0, 2)})
            spent += images
            elapsed = time.perf_counter() - t_start
            # Every round that ends 10 s after the last line (so a long race reports as it goes), and the last.
            if log and (elapsed - t_logged >= 10 or len(rounds) == 1 or not len(nxt)):
                t_logged = elapsed
                log(f"adaptive: round {len(rounds)}: {len(todo)} masks, {images:,} masked images in "
                    f"{rounds[-1]['seconds']:.1f}s; {spent:,} of full mode's {full:,} so far "
                    f"({spent / max(elapsed, 1e-9):,.0f}/s); {len(nxt)} to measure next, "
                    f"{rounds[-1]['settled_buckets']} of {state['bucket'].nunique()} buckets settled")
            todo = nxt
            if max_rounds is not None and len(rounds) >= max_rounds:
                break
    finally:
        for a in actors:
            ray.kill(a)
    out = state.drop(columns=["eliminated"]).assign(split="selection")
    return out.sort_values("mask_id").reset_index(drop=True), rounds
