"""The adaptive race, pure: one decision (:func:`race_step`) and the loop of rounds (:func:`run_race`).

The race ranks each bucket's masks by E's accuracy while measuring most masks on a
fraction of the selection images. Its promise, with ``plan.delta`` the error
probability: with probability at least ``1 - delta``, every mask it ranks in a bucket's
top ``keep`` is within ``plan.tolerance`` of full mode's ``keep``-th best accuracy on the
same images. Why it holds: every mask's accuracy is bounded after each step of images
(:func:`~maskcrypt.core.stats.sampling_bounds`, valid for a prefix of a random order),
the steps are fixed in advance (:meth:`AdaptivePlan.steps`), and a union bound over
every mask and every step (:meth:`AdaptivePlan.bound_error`) makes all bounds hold at
once with probability >= 1 - delta. When they all hold, a mask is eliminated only if
``keep`` others are surely better, and a bucket settles only when its chosen masks'
lower bounds are within ``tolerance`` of every remaining challenger's upper bound, so
each chosen mask is within ``tolerance`` of the true ``keep``-th.

The measuring is a callback (:func:`run_race`'s ``measure``): Ray actors in the
pipeline (:mod:`maskcrypt.determine.race`), prefix sums of a known matrix in the
simulation that tests the error probability. Nothing here touches Ray or a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import AdaptivePlan
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import sampling_bounds
from maskcrypt.selection.rules import require_columns

#: Bounds of a race: (correct, n, population) -> (lo, hi) arrays on the accuracy over the population.
Bounds = Callable[[Any, Any, int], tuple[np.ndarray, np.ndarray]]


def race_step(counts: pd.DataFrame, keep: int, population: int, error: float = 1e-4,
              tolerance: float = 0.02, share: float = 0.1, bounds: Bounds | None = None) -> pd.DataFrame:
    """One decision of the adaptive search (an LUCB-style race): which masks to measure next.

    ``counts``: one row per mask with ``mask_id``, ``bucket``, ``n`` (how many of the
    ``population`` selection images it has seen, always a prefix of one shared random
    order), ``correct_E`` and ``eliminated``. Bounds are :func:`sampling_bounds` on the
    accuracy over all N images (what full mode measures), each failing with probability
    at most ``error`` (the race divides its ``delta`` among all its bounds:
    :meth:`AdaptivePlan.bound_error`); ``bounds`` replaces them (the simulation compares
    the race before the guarantee, per-mask Wilson bounds, this way). Per bucket, among
    masks not eliminated:

    1. *Eliminate* masks whose upper bound is below the ``keep``-th best lower bound:
       they cannot be in the top ``keep``, now or later.
    2. Let S be the current top ``keep`` by accuracy so far (ties: E's mean score so far,
       as :func:`rank_masks` breaks them, then more images, then mask id), L the lowest
       lower bound in S and H the highest upper bound outside S. If ``L >= H - tolerance``,
       every mask of S is within ``tolerance`` of whatever the true ``keep``-th is: the
       bucket is *settled*, and S is measured on every image (``complete``); the others
       stop where they are.
    3. Otherwise only masks that can still change that verdict are measured further
       (``advance``: one more step of images): S's members whose lower bound is below
       ``H - tolerance``, and of the masks outside S whose upper bound is above
       ``L + tolerance``, those with the highest upper bounds (a ``share`` of them, at
       least ``keep``; ties: fewer images first). Sampling the boundary and not the
       whole bucket is what makes the race cheaper than halving every mask together.

    Returns ``counts`` with ``eliminated`` updated and ``action`` in {``advance``,
    ``complete``, ``""``}, plus ``settled`` (the bucket's verdict holds and S has seen
    every image) and the bounds ``lo``/``hi``. Pure: no Ray, no model.
    """
    require_columns(counts, ["mask_id", "bucket", "n", "correct_E", "eliminated"], "adaptive counts")
    if keep < 1:
        raise MaskcryptError(f"adaptive search: keep must be >= 1, got {keep}")
    if not 0.0 <= tolerance < 1.0:
        raise MaskcryptError(f"adaptive tolerance: expected a fraction in [0, 1), got {tolerance}")
    if not 0.0 < share <= 1.0:
        raise MaskcryptError(f"adaptive share: expected a fraction in (0, 1], got {share}")
    if population < 1 or (counts["n"] > population).any():
        raise MaskcryptError(f"adaptive counts: n must lie in [0, {population}] (the selection images)")
    n = counts["n"].to_numpy(np.int64)
    k = counts["correct_E"].to_numpy(np.int64)
    lo, hi = (bounds or (lambda c, m, big: sampling_bounds(c, m, big, error)))(k, n, population)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    acc = k / np.maximum(n, 1)
    score = (counts["score_E"].to_numpy(np.float64) / np.maximum(n, 1) if "score_E" in counts.columns
             else np.zeros(len(counts)))
    id_rank = np.argsort(np.argsort(counts["mask_id"].to_numpy().astype(str), kind="stable"), kind="stable")
    bucket = counts["bucket"].to_numpy()
    eliminated = counts["eliminated"].to_numpy(bool).copy()
    action = np.full(len(counts), "", dtype=object)
    settled = np.zeros(len(counts), bool)
    for b in np.unique(bucket):
        idx = np.flatnonzero(bucket == b)
        alive = idx[~eliminated[idx]]
        if len(alive) > keep:
            kth = np.sort(lo[alive])[::-1][keep - 1]
            eliminated[alive[hi[alive] < kth]] = True
        alive = idx[~eliminated[idx]]
        # Rank as the full ranking does: accuracy, then mean score, then more images, then mask id.
        order = alive[np.lexsort((id_rank[alive], -n[alive], -score[alive], -acc[alive]))]
        top, rest = order[:keep], order[keep:]
        low = float(lo[top].min())
        high = float(hi[rest].max()) if len(rest) else -np.inf
        incomplete = top[n[top] < population]
        if low >= high - tolerance:
            action[incomplete] = "complete"
            settled[idx] = len(incomplete) == 0
            continue
        action[top[(lo[top] < high - tolerance) & (n[top] < population)]] = "advance"
        open_rest = rest[(hi[rest] > low + tolerance) & (n[rest] < population)]
        picked = open_rest[np.lexsort((id_rank[open_rest], n[open_rest], -hi[open_rest]))]
        action[picked[:max(keep, int(np.ceil(share * len(open_rest))))]] = "advance"
        if not (action[idx] != "").any():  # cannot happen with exact bounds; never stall
            action[alive[n[alive] < population]] = "advance"
    return counts.assign(lo=lo, hi=hi, acc=acc, score=score, action=action, settled=settled, eliminated=eliminated)


def run_race(masks: pd.DataFrame, population: int, keep: int, plan: AdaptivePlan,
             measure: Callable[[pd.DataFrame], pd.DataFrame],
             on_round: Callable[[dict[str, Any], pd.DataFrame], None] | None = None,
             max_rounds: int | None = None, bound_error: float | None = None,
             bounds: Bounds | None = None,
             release: Callable[[list[str]], None] | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The race's rounds: measure what :func:`race_step` asks for, until every bucket is settled.

    ``masks``: ``mask_id`` and ``bucket``, one row per mask. ``measure(todo)`` gets rows
    ``mask_id``, ``bucket``, ``start``, ``stop`` (an image range of the shared order) and
    returns, per mask, the sums over those images: ``mask_id``, ``n``, ``correct_E`` and any
    other count columns (``score_E``, ``correct_O``...). Returns the final counts (one row
    per mask; ``rounds`` = how many times it was measured) and one record per round:
    ``masks``, ``images`` (masked images measured) split by why (``first``, ``boundary``:
    masks near the top k stepping on, ``complete``: chosen masks measured on every
    image), ``open`` and ``settled_buckets``. ``on_round`` sees each record with the state.
    ``release(ids)`` hears, after each round, of the masks the race will never measure
    again (eliminated, measured on every image, or in a settled bucket): what the
    measuring side kept for them (an open-set mask's gallery centroids) can go.
    """
    if keep < 1:
        raise MaskcryptError(f"adaptive search: keep must be >= 1, got {keep}")
    n_buckets = int(masks["bucket"].nunique())
    first = plan.first_for(len(masks), population, keep, n_buckets)
    steps = plan.steps(population, first)
    error = bound_error or plan.bound_error(len(masks), population, keep, n_buckets)
    state = masks[["mask_id", "bucket"]].assign(n=0, correct_E=0, rounds=0, eliminated=False).reset_index(drop=True)
    row = pd.Series(np.arange(len(state)), index=state["mask_id"].to_numpy())
    if not row.index.is_unique:
        raise MaskcryptError("adaptive search: a mask id appears twice")
    sums: dict[str, np.ndarray] = {}
    released = np.zeros(len(state), bool)
    todo = state[["mask_id", "bucket"]].assign(start=0, stop=int(steps[0]), why="first")
    rounds: list[dict[str, Any]] = []
    while len(todo):
        t0 = time.perf_counter()
        got = measure(todo[["mask_id", "bucket", "start", "stop"]])
        at = row[got["mask_id"].to_numpy()].to_numpy()
        for c in got.columns:
            if c in ("mask_id", "bucket", "split") or not np.issubdtype(got[c].dtype, np.number):
                continue
            integer = c.startswith("correct_") or c == "n"
            if c not in sums:
                sums[c] = np.zeros(len(state), np.int64 if integer else np.float64)
            np.add.at(sums[c], at, got[c].to_numpy())
        measured = np.zeros(len(state), np.int64)
        np.add.at(measured, np.unique(at), 1)
        state["rounds"] += measured
        for c, v in sums.items():
            state[c] = v
        spans = (todo["stop"] - todo["start"]).astype(int)
        decided = race_step(state, keep, population, error, plan.tolerance, plan.share, bounds)
        state["eliminated"] = decided["eliminated"].to_numpy()
        if release is not None:
            done = (decided["eliminated"].to_numpy(bool) | decided["settled"].to_numpy(bool)
                    | (state["n"].to_numpy() >= population))
            if (done & ~released).any():
                release(state["mask_id"][done & ~released].tolist())
            released |= done
        nxt = decided[decided["action"] != ""]
        if len(nxt):
            after = np.searchsorted(steps, nxt["n"].to_numpy(), side="right")
            stop = np.where(nxt["action"] == "complete", population, steps[np.minimum(after, len(steps) - 1)])
            nxt = nxt[["mask_id", "bucket"]].assign(start=nxt["n"].to_numpy(), stop=stop,
                                                    why=np.where(nxt["action"] == "complete", "complete", "boundary"))
        record = {"round": len(rounds) + 1, "masks": len(todo), "images": int(spans.sum()),
                  **{f"images_{w}": int(spans[todo["why"] == w].sum()) for w in ("first", "boundary", "complete")},
                  "open": len(nxt), "settled_buckets": int(decided.groupby("bucket")["settled"].all().sum()),
                  "seconds": round(time.perf_counter() - t0, 2)}
        rounds.append(record)
        if on_round:
            on_round(record, state)
        todo = nxt
        if max_rounds is not None and len(rounds) >= max_rounds:
            break
    return state.drop(columns=["eliminated"]).sort_values("mask_id").reset_index(drop=True), rounds


def simulate_race(correct: np.ndarray, buckets: np.ndarray, keep: int, plan: AdaptivePlan,
                  bound_error: float | None = None,
                  bounds: Bounds | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The race on a known correctness matrix (masks x images, in reveal order): no model, no Ray.

    What :func:`run_race` decides when E's answers are ``correct``; ``bound_error``
    overrides the plan's per-bound error (the simulation test uses a wrong one to show
    that it can see a failure); ``bounds`` replaces the bounds themselves. Used by the
    simulation test of the error probability and by ``benchmarks/race_simulation.py``.
    """
    correct = np.asarray(correct, dtype=bool)
    cum = np.concatenate([np.zeros((len(correct), 1), np.int64), np.cumsum(correct, axis=1)], axis=1)
    masks = pd.DataFrame({"mask_id": [f"m{i:06d}" for i in range(len(correct))], "bucket": np.asarray(buckets)})
    row = {m: i for i, m in enumerate(masks["mask_id"])}

    def measure(todo: pd.DataFrame) -> pd.DataFrame:
        i = todo["mask_id"].map(row).to_numpy()
        start, stop = todo["start"].to_numpy(), todo["stop"].to_numpy()
        return pd.DataFrame({"mask_id": todo["mask_id"].to_numpy(), "n": stop - start,
                             "correct_E": cum[i, stop] - cum[i, start]})

    return run_race(masks, correct.shape[1], keep, plan, measure, bound_error=bound_error, bounds=bounds)


def race_misses(correct: np.ndarray, buckets: np.ndarray, counts: pd.DataFrame, keep: int,
                tolerance: float) -> list[int]:
    """Buckets where the race's top ``keep`` is not within ``tolerance`` of full mode's ``keep``-th (its failures).

    Full mode is the whole matrix: each mask's accuracy on every image. The race's top
    ``keep`` is ranked the way the pipeline ranks it (accuracy, then more images).
    """
    full = np.asarray(correct, dtype=bool).mean(axis=1)
    buckets = np.asarray(buckets)
    by_id = dict(zip(counts["mask_id"], range(len(counts))))
    acc = (counts["correct_E"] / counts["n"].clip(lower=1)).to_numpy()
    missed = []
    for b in np.unique(buckets):
        members = np.flatnonzero(buckets == b)
        kth = np.sort(full[members])[::-1][min(keep, len(members)) - 1]
        mine = counts.iloc[[by_id[f"m{i:06d}"] for i in members]]
        order = np.lexsort((-mine["n"].to_numpy(), -acc[[by_id[f"m{i:06d}"] for i in members]]))
        chosen = members[order[:keep]]
        if (full[chosen] < kth - tolerance - 1e-12).any():
            missed.append(int(b))
    return missed


def full_mode_passes(masks: int, probes: int, gallery: int, masked_models: int, clean_models: int,
                     actors: int) -> int:
    """Recognizer forward passes of full mode: every mask on every probe, what the race is compared with.

    Every model sees each mask's ``probes``. In open set (``gallery`` > 0) a model judged
    against a masked gallery (E) embeds the gallery again under every mask, while one judged
    against a clean gallery (O) embeds it once per actor, whatever the number of masks.
    """
    return masks * (probes * (masked_models + clean_models) + gallery * masked_models) + gallery * clean_models * actors


def versus_full(full: int, spent: int) -> str:
    """``"2.4x fewer"`` or, when the race cost more than full mode, ``"1.8x more"``: a saving never reads as a loss."""
    if spent <= full:
        return f"{full / max(spent, 1):.1f}x fewer"
    return f"{spent / max(full, 1):.1f}x more"
