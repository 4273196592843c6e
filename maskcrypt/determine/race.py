"""Adaptive per-mask ranking: a race on confidence bounds over one pool of actors (the Ray side).

Ranking thousands of masks by E's accuracy needs every mask's accuracy only near the
top of its bucket. The race itself, its rule and its error probability are pure
(:mod:`maskcrypt.selection.race`); this module measures what it asks for on Ray actors.
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
from maskcrypt.core.stats import IDC, IDN, decode_counts, encode_counts
from maskcrypt.evaluation.crossproduct import check_gpus, check_library, check_models, scorer_kwargs
from maskcrypt.evaluation.scorer import CrossProductScorer
from maskcrypt.evaluation.testset import TestSet
from maskcrypt.runtime.cluster import require_ray
from maskcrypt.selection.race import run_race


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


def owners(mask_ids: Sequence[str], actors: int) -> dict[str, int]:
    """Open set: the actor that measures each mask in every round (round robin over the library's order).

    A mask's masked-gallery centroids are embedded once, in its first round, and kept by
    the actor that embedded them (:class:`~maskcrypt.evaluation.scorer.CentroidCache`), so
    every later round of that mask must reach the same actor.
    """
    return {m: i % actors for i, m in enumerate(mask_ids)}


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
    """Per-mask counts by an adaptive race (:func:`maskcrypt.selection.race.run_race`) on one pool of actors.

    The selection probes are revealed in one seeded random order; each mask has seen a
    prefix of it. ``models`` needs E (the race decides on E's counts alone); other models
    given are measured on the same images (the pipeline gives E only and measures O
    afterwards on the masks that need it). Winners end with counts on every selection
    image, as in full mode; other masks keep the counts of the images they saw (smaller
    ``n``). One pool of ``settings.actors`` Ray actors serves every round (rounds are small
    and many; starting a pool per round cost 10-15 s each). Returns the counts (one row
    per mask, ``split`` = selection, ``rounds`` = how many times it was measured) and one
    record per round: masks, masked images (and why: first round, boundary, completion),
    forward passes (every model on the probes, plus ``gallery_passes``), still open, seconds.
    In open set a mask's masked gallery is embedded once per race, not once per round: every
    round of a mask goes to the same actor (:func:`owners`), which keeps the centroids until
    the race releases the mask. ``max_rounds`` stops the race early (the capacity
    measurement samples a few rounds of a huge library); the last record's ``open`` then
    says how many masks were left.
    """
    import ray
    from ray.util import ActorPool

    require_ray("adaptive ranking")
    if "E" not in models:
        raise MaskcryptError("adaptive search: the race ranks by E's accuracy, give E among the models")
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
    masks = pd.DataFrame({"mask_id": ids, "bucket": table.column("bucket").to_numpy().astype(np.int64)})
    del table
    population = int(probes.size)
    gallery = int(test.gallery.sum()) if test.scoring == "open" else 0
    check_gpus(settings)
    scorer = ray.remote(CrossProductScorer).options(num_cpus=settings.cpus_per_actor,
                                                     num_gpus=settings.gpus_per_actor)
    constructor = scorer_kwargs(test.subset(reveal), resolved, ("selection",), settings, "masks",
                                gallery_cache_mb=settings.gallery_cache_mb)
    actors = [scorer.remote(**constructor) for _ in range(max(1, min(settings.actors, len(masks))))]
    pool = ActorPool(actors)
    owner = owners(ids, len(actors)) if gallery else {}
    full = len(masks) * population
    n_buckets = int(masks["bucket"].nunique())
    first = plan.first_for(len(masks), population, keep, n_buckets)
    if log:
        log(f"adaptive: racing {len(masks):,} masks of {n_buckets} bucket(s) on {population:,} selection images "
            f"(full mode: {full:,} masked images per model) with {', '.join(resolved)}; error probability "
            f"{plan.delta:g}, tolerance {plan.tolerance:g}; first round {len(masks):,} x {first:,} on "
            f"{len(actors)} actor(s)")
    t_start, t_logged, spent, embedded = time.perf_counter(), 0.0, 0, 0
    # Open set: each mask's per-identity counts, added up over its rounds (the race itself decides on the totals).
    people: dict[str, dict[str, np.ndarray]] = {}

    def keep_people(got: pd.DataFrame) -> pd.DataFrame:
        blobs = [c for c in got.columns if c == IDN or c.startswith(IDC)]
        for row in got[["mask_id", *blobs]].itertuples(index=False):
            mine = people.setdefault(str(row[0]), {})
            for col, blob in zip(blobs, row[1:]):
                counts = decode_counts(blob)
                mine[col] = counts if col not in mine else mine[col] + counts
        return got.drop(columns=blobs)

    def measure(todo: pd.DataFrame) -> pd.DataFrame:
        nonlocal embedded
        if owner:  # open set: each mask to the actor that holds its gallery centroids
            mine = todo["mask_id"].map(owner).to_numpy()
            refs = [actors[a].score.remote(t) for a in np.unique(mine)
                    for t in _range_tasks(todo[mine == a], bits, 1)]
            found = [pd.DataFrame(r) for r in ray.get(refs)]
        else:
            found = [pd.DataFrame(r) for r in pool.map_unordered(lambda a, t: a.score.remote(t),
                                                                   _range_tasks(todo, bits, len(actors)))]
        got = pd.concat(found, ignore_index=True)
        embedded = int(got["gallery_passes"].sum())
        return keep_people(got.drop(columns=["gallery_passes"]))

    def release(done: list[str]) -> None:
        """The race is through with these masks: their actors drop the galleries they keep for them."""
        for a in sorted({owner[m] for m in done}):
            actors[a].forget.remote([m for m in done if owner[m] == a])

    def on_round(record: dict[str, Any], state: pd.DataFrame) -> None:
        nonlocal t_logged, spent
        # Probes by every model, plus the gallery images the actors embedded this round (open set: each mask's
        # masked gallery once per race, and each actor's clean galleries once).
        record["gallery_passes"] = embedded
        record["forward_passes"] = record["images"] * len(resolved) + embedded
        spent += record["images"]
        elapsed = time.perf_counter() - t_start
        # Every round that ends 10 s after the last line (so a long race reports as it goes), and the last.
        if log and (elapsed - t_logged >= 10 or record["round"] == 1 or not record["open"]):
            t_logged = elapsed
            log(f"adaptive: round {record['round']}: {record['masks']} masks, {record['images']:,} masked images "
                f"in {record['seconds']:.1f}s; {spent:,} of full mode's {full:,} so far "
                f"({spent / max(elapsed, 1e-9):,.0f}/s); {record['open']} to measure next, "
                f"{record['settled_buckets']} of {n_buckets} buckets settled")

    try:
        state, rounds = run_race(masks, population, keep, plan, measure, on_round, max_rounds,
                                 release=release if owner else None)
    finally:
        for a in actors:
            ray.kill(a)
    state = state.assign(split="selection")
    if people:  # only masks measured on every selection probe: a partial sample's people are not the split's
        full_rows = state["n"].to_numpy() >= population
        for col in sorted({c for m in people.values() for c in m}):
            state[col] = [encode_counts(people[m][col]) if done and m in people else None
                          for m, done in zip(state["mask_id"], full_rows)]
    return state, rounds
