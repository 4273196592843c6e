"""The adaptive race, pure: one decision (:func:`race_step`) and the loop of rounds (:func:`run_race`).

The race ranks each bucket's masks by E's accuracy while measuring most masks on a
fraction of the selection images. Its promise, with ``plan.delta`` the error
probability: with probability at least ``1 - delta``, every mask it ranks in a bucket's
top ``keep`` is within ``plan.tolerance`` of full mode's ``keep``-th best accuracy on the
same images. Why it holds: every mask's accuracy is bounded after each step of images
(exactly: :func:`~maskcrypt.core.stats.hypergeometric_bounds`, for a prefix of a random
order, i.e. sampling without replacement), the steps are fixed in advance
(:meth:`AdaptivePlan.steps`), and a union bound over every mask and every step
(:meth:`AdaptivePlan.bound_error`) makes all bounds hold at once with probability
>= 1 - delta. When they all hold, a mask is eliminated only if ``keep`` others are
surely better, and a bucket settles only when its chosen masks' lower bounds are within
``tolerance`` of every remaining challenger's upper bound, so each chosen mask is within
``tolerance`` of the true ``keep``-th.

The measuring is a callback (:func:`run_race`'s ``measure``): Ray actors in the
pipeline (:mod:`maskcrypt.determine.race`), prefix sums of a known matrix in the
simulation that tests the error probability. :func:`oracle_passes` is the limit every
measured saving is read against. Nothing here touches Ray or a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import AdaptivePlan
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import hypergeometric_bounds, sampling_bounds
from maskcrypt.selection.rules import rank_masks, require_columns

#: Bounds of a race: (correct, n, population) -> (lo, hi) arrays on the accuracy over the population.
Bounds = Callable[[Any, Any, int], tuple[np.ndarray, np.ndarray]]


class CachedBounds:
    """A race's bounds at one per-bound error, each (n, correct) pair computed once.

    Every round re-bounds every mask of the library, while only the masks measured in
    that round have new counts, and many masks share a count; the exact bounds cost tens
    of microseconds a pair (scipy's hypergeometric tails), so they are kept by
    ``(n, correct)`` for the race's whole life (the population and the error are fixed).
    """

    def __init__(self, kind: str, error: float):
        self.compute = hypergeometric_bounds if kind == "hypergeometric" else sampling_bounds
        self.error = error
        self.known: dict[tuple[int, int], tuple[float, float]] = {}

    def __call__(self, correct: Any, n: Any, population: int) -> tuple[np.ndarray, np.ndarray]:
        k = np.asarray(correct, dtype=np.int64)
        m = np.asarray(n, dtype=np.int64)
        pairs = list(zip(m.tolist(), k.tolist()))
        missing = sorted(set(pairs) - self.known.keys())
        if missing:
            nm, km = np.asarray(missing, dtype=np.int64).T
            lo, hi = self.compute(km, nm, population, self.error)
            self.known.update(zip(missing, zip(lo.tolist(), hi.tolist())))
        got = np.asarray([self.known[p] for p in pairs], dtype=np.float64).reshape(-1, 2)
        return got[:, 0], got[:, 1]


def plan_bounds(plan: AdaptivePlan, error: float) -> Bounds:
    """The bounds ``plan.bounds`` names, each failing with probability at most ``error`` (cached per race)."""
    return CachedBounds(plan.bounds, error)


#: The race's rule, versioned: part of the key under which a determination keeps a finished race
#: (``results/cache/``), so a relaunch after the rule changed races again. Raise it whenever :func:`decide` or
#: :func:`run_race` would measure other masks or images for the same plan. 2: exact bounds, settling on the top
#: by lower bound too, the k-th highest upper bound as a cap on the k-th.
RACE_RULE = 2

#: :func:`decide`'s actions, as small integers (the race's arrays) and as the words race_step's table shows.
ADVANCE, COMPLETE = 1, 2
ACTIONS = np.asarray(["", "advance", "complete"], dtype=object)


def decide(bucket: np.ndarray, n: np.ndarray, acc: np.ndarray, score: np.ndarray, id_rank: np.ndarray,
           eliminated: np.ndarray, lo: np.ndarray, hi: np.ndarray, keep: int, population: int,
           tolerance: float, share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The race's rule on arrays (one entry per mask): :func:`race_step` without the table around it.

    Returns ``(action, settled, eliminated)``: ``action`` 0 (leave), :data:`ADVANCE` or
    :data:`COMPLETE`. The rule is :func:`race_step`'s; :func:`run_race` calls this
    directly, so a round costs numpy operations per bucket, not table copies.
    """
    eliminated = eliminated.copy()
    action = np.zeros(len(n), np.int8)
    settled = np.zeros(len(n), bool)
    for b in np.unique(bucket):
        idx = np.flatnonzero(bucket == b)
        alive = idx[~eliminated[idx]]
        if len(alive) > keep:
            kth = np.sort(lo[alive])[::-1][keep - 1]
            eliminated[alive[hi[alive] < kth]] = True
        alive = idx[~eliminated[idx]]
        # S: the top by accuracy so far, ranked as the full ranking ranks (accuracy, mean score, more images, mask
        # id). The bucket may also settle on the top by lower bound: any S whose lowest lower bound clears every
        # other upper bound less the tolerance is a valid verdict, and the surest S settles a near-tie (a bucket
        # whose masks all lie within the tolerance) long before the luckiest prefixes have been measured out.
        by_acc = alive[np.lexsort((id_rank[alive], -n[alive], -score[alive], -acc[alive]))]
        by_lower = alive[np.lexsort((id_rank[alive], -n[alive], -score[alive], -acc[alive], -lo[alive]))]
        # H: what the true keep-th can be at most. Above the highest upper bound outside S it cannot be (when S
        # misses one of the true top, that one is outside); above the keep-th highest upper bound of all it cannot
        # be either (the true top all have their upper bounds above it). The smaller one is used.
        ceiling = float(np.sort(hi[alive])[::-1][keep - 1]) if len(alive) >= keep else np.inf
        for order in (by_acc, by_lower):
            top, rest = order[:keep], order[keep:]
            low = float(lo[top].min())
            high = min(float(hi[rest].max()) if len(rest) else -np.inf, ceiling)
            if low >= high - tolerance:
                break
        else:
            top, rest = by_acc[:keep], by_acc[keep:]  # measure around the top by accuracy (LUCB)
            low = float(lo[top].min())
            high = min(float(hi[rest].max()) if len(rest) else -np.inf, ceiling)
        incomplete = top[n[top] < population]
        if low >= high - tolerance:
            action[incomplete] = COMPLETE
            settled[idx] = len(incomplete) == 0
            continue
        action[top[(lo[top] < high - tolerance) & (n[top] < population)]] = ADVANCE
        open_rest = rest[(hi[rest] > low + tolerance) & (n[rest] < population)]
        picked = open_rest[np.lexsort((id_rank[open_rest], n[open_rest], -hi[open_rest]))]
        action[picked[:max(keep, int(np.ceil(share * len(open_rest))))]] = ADVANCE
        if not action[idx].any():  # cannot happen with valid bounds; never stall
            action[alive[n[alive] < population]] = ADVANCE
    return action, settled, eliminated


def _check_rule(keep: int, tolerance: float, share: float) -> None:
    if keep < 1:
        raise MaskcryptError(f"adaptive search: keep must be >= 1, got {keep}")
    if not 0.0 <= tolerance < 1.0:
        raise MaskcryptError(f"adaptive tolerance: expected a fraction in [0, 1), got {tolerance}")
    if not 0.0 < share <= 1.0:
        raise MaskcryptError(f"adaptive share: expected a fraction in (0, 1], got {share}")


def _id_rank(mask_ids: np.ndarray) -> np.ndarray:
    """Each mask id's position in sorted order: the last tie-break, as :func:`rank_masks` breaks ties."""
    return np.argsort(np.argsort(mask_ids.astype(str), kind="stable"), kind="stable")


def race_step(counts: pd.DataFrame, keep: int, population: int, error: float = 1e-4,
              tolerance: float = AdaptivePlan.tolerance, share: float = AdaptivePlan.share,
              bounds: Bounds | None = None) -> pd.DataFrame:
    """One decision of the adaptive search (an LUCB-style race): which masks to measure next.

    ``counts``: one row per mask with ``mask_id``, ``bucket``, ``n`` (how many of the
    ``population`` selection images it has seen, always a prefix of one shared random
    order), ``correct_E`` and ``eliminated``. Bounds are on the accuracy over all N images
    (what full mode measures), each failing with probability at most ``error`` (the race
    divides its ``delta`` among all its bounds: :meth:`AdaptivePlan.bound_error`): exact
    hypergeometric bounds (:func:`~maskcrypt.core.stats.hypergeometric_bounds`) unless
    ``bounds`` gives others (the race's plan picks them, and the tests feed the rule
    intervals of their own this way). Per bucket, among masks not eliminated (:func:`decide`):

    1. *Eliminate* masks whose upper bound is below the ``keep``-th best lower bound:
       they cannot be in the top ``keep``, now or later.
    2. Let S be the current top ``keep`` by accuracy so far (ties: E's mean score so far,
       as :func:`rank_masks` breaks them, then more images, then mask id), L the lowest
       lower bound in S and H the highest upper bound outside S. If ``L >= H - tolerance``,
       every mask of S is within ``tolerance`` of whatever the true ``keep``-th is: the
       bucket is *settled*, and S is measured on every image (``complete``); the others
       stop where they are. The same test is also made with S the top ``keep`` by lower
       bound (valid for any S: when every bound holds, each member of S is at least L,
       and every mask outside at most H), which settles near-ties early. H is also capped
       by the ``keep``-th highest upper bound of the whole bucket, which the true
       ``keep``-th cannot exceed either: up to ``keep - 1`` strong challengers may stay
       unresolved when S is already within the tolerance of the ``keep``-th.
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
    _check_rule(keep, tolerance, share)
    if population < 1 or (counts["n"] > population).any():
        raise MaskcryptError(f"adaptive counts: n must lie in [0, {population}] (the selection images)")
    n = counts["n"].to_numpy(np.int64)
    k = counts["correct_E"].to_numpy(np.int64)
    lo, hi = (bounds or (lambda c, m, big: hypergeometric_bounds(c, m, big, error)))(k, n, population)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    acc = k / np.maximum(n, 1)
    score = (counts["score_E"].to_numpy(np.float64) / np.maximum(n, 1) if "score_E" in counts.columns
             else np.zeros(len(counts)))
    action, settled, eliminated = decide(counts["bucket"].to_numpy(), n, acc, score,
                                         _id_rank(counts["mask_id"].to_numpy()),
                                         counts["eliminated"].to_numpy(bool), lo, hi, keep, population, tolerance,
                                         share)
    return counts.assign(lo=lo, hi=hi, acc=acc, score=score, action=ACTIONS[action], settled=settled,
                         eliminated=eliminated)


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

    Every bound is looked at only after a step of :meth:`AdaptivePlan.steps`, the levels
    the union bound counts: a mask found between them (a ``measure`` that returned other
    counts than asked) stops the race with an error rather than void its guarantee.
    """
    _check_rule(keep, plan.tolerance, plan.share)
    n_buckets = int(masks["bucket"].nunique())
    first = plan.first_for(len(masks), population, keep, n_buckets)
    steps = plan.steps(population, first)
    error = bound_error or plan.bound_error(len(masks), population, keep, n_buckets)
    bounds = bounds or plan_bounds(plan, error)
    on_grid = np.zeros(population + 1, bool)
    on_grid[np.concatenate([[0], steps])] = True
    ids = masks["mask_id"].to_numpy().astype(str)
    bucket = masks["bucket"].to_numpy()
    row = pd.Series(np.arange(len(ids)), index=ids)
    if not row.index.is_unique:
        raise MaskcryptError("adaptive search: a mask id appears twice")
    id_rank = _id_rank(ids)
    sums: dict[str, np.ndarray] = {"n": np.zeros(len(ids), np.int64), "correct_E": np.zeros(len(ids), np.int64)}
    rounds_of = np.zeros(len(ids), np.int64)
    eliminated = np.zeros(len(ids), bool)
    released = np.zeros(len(ids), bool)
    todo_at, todo_start = np.arange(len(ids)), np.zeros(len(ids), np.int64)
    todo_stop, todo_why = np.full(len(ids), int(steps[0])), np.full(len(ids), "first", dtype=object)

    def table() -> pd.DataFrame:
        return pd.DataFrame({"mask_id": ids, "bucket": bucket, **sums, "rounds": rounds_of})

    rounds: list[dict[str, Any]] = []
    while len(todo_at):
        t0 = time.perf_counter()
        got = measure(pd.DataFrame({"mask_id": ids[todo_at], "bucket": bucket[todo_at], "start": todo_start,
                                    "stop": todo_stop}))
        at = row[got["mask_id"].to_numpy().astype(str)].to_numpy()
        for c in got.columns:
            if c in ("mask_id", "bucket", "split") or not np.issubdtype(got[c].dtype, np.number):
                continue
            integer = c.startswith("correct_") or c == "n"
            if c not in sums:
                sums[c] = np.zeros(len(ids), np.int64 if integer else np.float64)
            np.add.at(sums[c], at, got[c].to_numpy())
        rounds_of[np.unique(at)] += 1
        n, k = sums["n"], sums["correct_E"]
        if (n > population).any() or not on_grid[np.minimum(n, population)].all():
            bad = int(np.flatnonzero((n > population) | ~on_grid[np.minimum(n, population)])[0])
            raise MaskcryptError(f"adaptive race: mask {ids[bad]} has seen {int(n[bad])} images, off the plan's "
                                 f"steps {[int(x) for x in steps]} (the union bound covers those levels only)")
        spans = todo_stop - todo_start
        lo, hi = bounds(k, n, population)
        score = sums["score_E"] / np.maximum(n, 1) if "score_E" in sums else np.zeros(len(ids))
        action, settled, eliminated = decide(bucket, n, k / np.maximum(n, 1), score, id_rank, eliminated,
                                             np.asarray(lo, np.float64), np.asarray(hi, np.float64), keep,
                                             population, plan.tolerance, plan.share)
        if release is not None:
            done = eliminated | settled | (n >= population)
            if (done & ~released).any():
                release(ids[done & ~released].tolist())
            released |= done
        nxt = np.flatnonzero(action)
        after = np.searchsorted(steps, n[nxt], side="right")
        complete = action[nxt] == COMPLETE
        settled_buckets = len(np.unique(bucket)) - len(np.unique(bucket[~settled]))
        record = {"round": len(rounds) + 1, "masks": len(todo_at), "images": int(spans.sum()),
                  **{f"images_{w}": int(spans[todo_why == w].sum()) for w in ("first", "boundary", "complete")},
                  "open": len(nxt), "settled_buckets": int(settled_buckets),
                  "seconds": round(time.perf_counter() - t0, 2)}
        rounds.append(record)
        if on_round:
            on_round(record, table())
        todo_at, todo_start = nxt, n[nxt]
        todo_stop = np.where(complete, population, steps[np.minimum(after, len(steps) - 1)])
        todo_why = np.where(complete, "complete", "boundary").astype(object)
        if max_rounds is not None and len(rounds) >= max_rounds:
            break
    return table().sort_values("mask_id").reset_index(drop=True), rounds


def simulate_race(correct: np.ndarray, buckets: np.ndarray, keep: int, plan: AdaptivePlan,
                  bound_error: float | None = None,
                  bounds: Bounds | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The race on a known correctness matrix (masks x images, in reveal order): no model, no Ray.

    What :func:`run_race` decides when E's answers are ``correct``; ``bound_error``
    overrides the plan's per-bound error (the calibrated test takes the union bound away
    with it); ``bounds`` replaces the bounds themselves. Used by the simulation tests of
    the error probability and by ``benchmarks/race_simulation.py`` and ``adaptive.py``.
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
    ``keep`` is what the pipeline takes from its counts: :func:`~maskcrypt.selection.rules.rank_masks`
    (masks measured on every image first, then accuracy, mean score and mask id), so the
    check is of the ranking the determination uses, not of a ranking of its own.
    """
    full = np.asarray(correct, dtype=bool).mean(axis=1)
    ids = [f"m{i:06d}" for i in range(len(full))]
    table = counts.set_index("mask_id").loc[ids].reset_index()
    table = table.assign(bucket=np.asarray(buckets), third=table["correct_E"] / table["n"].clip(lower=1))
    if "score_E" in table.columns:
        table["mean_score_E"] = table["score_E"] / table["n"].clip(lower=1)
    truth = dict(zip(ids, full))
    chosen = rank_masks(table, [int(b) for b in np.unique(buckets)])
    chosen = chosen[chosen["rank"] <= keep]
    missed = []
    for b, picked in chosen.groupby("bucket"):
        members = full[np.asarray(buckets) == b]
        kth = np.sort(members)[::-1][min(keep, len(members)) - 1]
        if any(truth[m] < kth - tolerance - 1e-12 for m in picked["mask_id"]):
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


def oracle_passes(correct: np.ndarray, buckets: np.ndarray, keep: int, plan: AdaptivePlan,
                  grid_growth: float = 1.02) -> int:
    """Masked images a race would need if it knew each bucket's ``keep``-th accuracy: the limit beside every figure.

    ``correct``: masks x images, in the order the race reveals the images. Each bucket's
    ``keep`` best masks (full mode's top, by accuracy) are measured on every image, as the
    race measures its winners. Every other mask stops at the first ``n`` at which its exact
    hypergeometric upper bound, at error ``plan.delta / (2 M)`` for one side (a union over
    the M masks only, no step levels: the oracle looks once), is at most the ``keep``-th
    accuracy plus the tolerance, which is when the race's own rule could let it go. The
    ``n`` looked at lie on a fine grid (steps of ``grid_growth``, from 1), so the figure is
    a lower bound on any race with these bounds, to within that grid.
    """
    from scipy.stats import hypergeom

    correct = np.asarray(correct, dtype=bool)
    masks, big = correct.shape
    buckets = np.asarray(buckets)
    acc = correct.mean(axis=1)
    grid = [1]
    while grid[-1] < big:
        grid.append(min(big, max(grid[-1] + 1, int(np.ceil(grid[-1] * grid_growth)))))
    ns = np.asarray(grid, dtype=np.int64)
    seen = np.cumsum(correct, axis=1)[:, ns - 1]  # right answers among the first n, masks x grid
    tail = plan.delta / (2 * max(masks, 1))
    need = np.full(masks, big, dtype=np.int64)
    for b in np.unique(buckets):
        idx = np.flatnonzero(buckets == b)
        order = idx[np.argsort(-acc[idx], kind="stable")]
        kth = acc[order[min(keep, len(order)) - 1]]
        rest = order[keep:]
        if not len(rest):
            continue
        if kth + plan.tolerance >= 1.0:  # no mask can beat the k-th by more than the tolerance: one image each
            need[rest] = 1
            continue
        # Upper bound <= c  <=>  P(X <= k | K) <= tail at the smallest K above c N (the tail falls as K grows).
        ceiling = int(np.floor((kth + plan.tolerance) * big)) + 1
        clear = hypergeom.cdf(seen[rest], big, ceiling, ns[None, :]) <= tail
        first = np.where(clear.any(axis=1), ns[np.argmax(clear, axis=1)], big)
        need[rest] = first
    return int(need.sum())
