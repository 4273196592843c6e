"""The selection rules of the method (docs/method.md, "Determination"): tables in, tables out.

Nothing here touches Ray or a model: the evaluator produces *counts* (how many images
of a bucket or mask each model recognized), and these functions turn counts into the
method's tables and decisions, so every rule is tested in milliseconds on hand-made
tables. Accuracies are fractions in [0, 1]; so are thresholds.

* :func:`basic_selection` - the basic form: E accuracy > ``t_enc`` and O accuracy < ``t_orig``.
* :func:`table1` / :func:`target_buckets` - first (E) and second (O) accuracy per bucket,
  averaged over repetitions; target buckets have first - second > ``t_gap``.
* :func:`per_mask_table` / :func:`candidates` - third accuracy per mask; the top ``k``
  of each target bucket are the candidates; :func:`attack_list` names the top
  ``attack_top`` (>= k) to attack, so ``k`` can change without new model runs.
* :func:`table2` / :func:`target_masks` - fourth (E on masked) and fifth (E on inpainted)
  accuracy and the drop; target masks are candidates whose drop > ``t_drop`` that pass
  the basic form (and, with the optional ``t_attack``, whose worst attacker stays below
  it), best first.

Every accuracy carries a Wilson interval; every drop a paired (Newcombe) interval,
since the same images are recognized before and after inpainting. A column says
whether each decision is within its interval, i.e. could flip with other test images.
When a rule empties the set, :class:`Empty` says which rule and the closest values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config.thresholds import Thresholds
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import paired_difference_interval, wilson_interval


@dataclass(frozen=True)
class Empty:
    """Why a selection came out empty: the rule that emptied it and the closest values."""

    rule: str
    message: str
    closest: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MaskcryptError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")
    if (df["n"] < 0).any() if "n" in df.columns else False:
        raise MaskcryptError(f"{what}: negative image counts")


# -- Table 1 -------------------------------------------------------------------------------------------
def table1(counts: pd.DataFrame, th: Thresholds = Thresholds(), labels: dict[int, str] | None = None) -> pd.DataFrame:
    """First (E) and second (O) accuracy per bucket, over repetitions.

    ``counts`` has one row per (bucket, repeat) with ``n``, ``correct_E``, ``correct_O``
    (bucket 0 = no mask). ``first``/``second`` are the means of the repetitions'
    accuracies, with their standard deviations. ``n`` counts recognitions (repetitions x
    images) and ``n_images`` the distinct images of one repetition: the repetitions
    reuse the same test images (only the masks change), so they do not add evidence
    about other images. The intervals are Wilson intervals of the pooled proportion on
    ``n_images`` images: what another draw of test images could do to the figure.
    ``gap = first - second``; ``target`` marks gap > t_gap (never bucket 0);
    ``gap_uncertain`` says t_gap lies within the gap's interval (the difference of the
    two Wilson bounds, a conservative band).
    """
    _require(counts, ["bucket", "repeat", "n", "correct_E", "correct_O"], "table1 counts")
    df = counts.copy()
    if (df["n"] == 0).any():
        empty = sorted(df.loc[df["n"] == 0, "bucket"].unique().tolist())
        raise MaskcryptError(f"table1: bucket(s) {empty} were evaluated on no image (empty bucket or test set)")
    df["acc_E"] = df["correct_E"] / df["n"]
    df["acc_O"] = df["correct_O"] / df["n"]
    g = df.groupby("bucket", sort=True)
    out = pd.DataFrame({
        "repeats": g.size(),
        "n": g["n"].sum(),
        "n_images": g["n"].max(),
        "first": g["acc_E"].mean(),
        "first_std": g["acc_E"].std(ddof=1).fillna(0.0),
        "second": g["acc_O"].mean(),
        "second_std": g["acc_O"].std(ddof=1).fillna(0.0),
        "correct_E": g["correct_E"].sum(),
        "correct_O": g["correct_O"].sum(),
    }).reset_index()
    pooled_e, pooled_o = out["correct_E"] / out["n"], out["correct_O"] / out["n"]
    out["first_lo"], out["first_hi"] = wilson_interval(pooled_e * out["n_images"], out["n_images"], th.confidence)
    out["second_lo"], out["second_hi"] = wilson_interval(pooled_o * out["n_images"], out["n_images"], th.confidence)
    out["gap"] = out["first"] - out["second"]
    gap_lo, gap_hi = out["first_lo"] - out["second_hi"], out["first_hi"] - out["second_lo"]
    out["target"] = (out["bucket"] > 0) & (out["gap"] > th.t_gap)
    out["gap_uncertain"] = (out["bucket"] > 0) & (gap_lo <= th.t_gap) & (th.t_gap <= gap_hi)
    if labels:
        out.insert(1, "range", out["bucket"].map(lambda b: labels.get(int(b), str(b))))
    return out


def full_table1_counts(clean: pd.DataFrame, per_mask: pd.DataFrame) -> pd.DataFrame:
    """Table 1's ``full`` mode as :func:`table1` input: every mask x every image of a bucket.

    ``clean``: the no-mask counts (bucket 0, one or more repeats); ``per_mask``: one row
    per mask. Each mask plays a repetition, so ``first``/``second`` are the mean over the
    bucket's masks and the standard deviation is the spread between masks.
    """
    _require(per_mask, ["mask_id", "bucket", "n", "correct_E", "correct_O"], "per-mask counts")
    pm = per_mask.sort_values(["bucket", "mask_id"]).copy()
    pm["repeat"] = pm.groupby("bucket").cumcount()
    cols = ["bucket", "repeat", "n", "correct_E", "correct_O"]
    return pd.concat([clean[cols], pm[cols]], ignore_index=True)


def target_buckets(t1: pd.DataFrame, th: Thresholds = Thresholds()) -> tuple[list[int], Empty | None]:
    """Buckets with first - second > t_gap; when none, why, with the closest buckets.

    Decided from the ``gap`` column with ``th``, so a threshold search reuses one table.
    """
    chosen = t1.loc[(t1["bucket"] > 0) & (t1["gap"] > th.t_gap), "bucket"].astype(int).tolist()
    if chosen:
        return chosen, None
    real = t1[t1["bucket"] > 0].sort_values("gap", ascending=False).head(3)
    closest = [{"bucket": int(r.bucket), "first": float(r.first), "second": float(r.second), "gap": float(r.gap)}
               for r in real.itertuples()]
    best = closest[0]["gap"] if closest else float("nan")
    return [], Empty("t_gap", f"no bucket has first - second accuracy > {th.t_gap:.2f} "
                              f"(largest gap {best:.4f})", closest)


# -- per mask, candidates ---------------------------------------------------------------------------------
def per_mask_table(counts: pd.DataFrame, th: Thresholds = Thresholds()) -> pd.DataFrame:
    """Third accuracy (E) and O's accuracy per mask, with intervals and the basic rule's verdict.

    ``counts``: one row per mask with ``mask_id``, ``bucket``, ``n``, ``correct_E``, ``correct_O``.
    """
    _require(counts, ["mask_id", "bucket", "n", "correct_E", "correct_O"], "per-mask counts")
    if counts["mask_id"].duplicated().any():
        dup = counts.loc[counts["mask_id"].duplicated(), "mask_id"].iloc[0]
        raise MaskcryptError(f"per-mask counts: mask {dup!r} appears twice")
    if (counts["n"] == 0).any():
        raise MaskcryptError("per-mask counts: a mask was evaluated on no image (empty test set?)")
    out = counts.copy()
    out["third"] = out["correct_E"] / out["n"]
    out["acc_O"] = out["correct_O"] / out["n"]
    out["third_lo"], out["third_hi"] = wilson_interval(out["correct_E"], out["n"], th.confidence)
    out["acc_O_lo"], out["acc_O_hi"] = wilson_interval(out["correct_O"], out["n"], th.confidence)
    for name in ("E", "O"):
        if f"score_{name}" in out.columns:
            out[f"mean_score_{name}"] = out[f"score_{name}"] / out["n"]
    out["basic_pass"] = (out["third"] > th.t_enc) & (out["acc_O"] < th.t_orig)
    out["basic_uncertain"] = (((out["third_lo"] <= th.t_enc) & (th.t_enc <= out["third_hi"]))
                              | ((out["acc_O_lo"] <= th.t_orig) & (th.t_orig <= out["acc_O_hi"])))
    return out


def basic_selection(per_mask: pd.DataFrame, th: Thresholds = Thresholds()) -> tuple[pd.DataFrame, Empty | None]:
    """The basic form: masks whose E accuracy > t_enc and O accuracy < t_orig, best E first."""
    passed = (per_mask["third"] > th.t_enc) & (per_mask["acc_O"] < th.t_orig)
    order = per_mask.assign(_score=per_mask["mean_score_E"] if "mean_score_E" in per_mask.columns else 0.0)
    chosen = order[passed].sort_values(["third", "_score", "mask_id"], ascending=[False, False, True])
    chosen = chosen.drop(columns=["_score"])
    if len(chosen):
        return chosen.reset_index(drop=True), None
    by_e = per_mask.sort_values("third", ascending=False).head(3)
    closest = [{"mask_id": r.mask_id, "third": float(r.third), "acc_O": float(r.acc_O)} for r in by_e.itertuples()]
    above = per_mask[per_mask["third"] > th.t_enc]
    rule = "t_orig" if len(above) else "t_enc"
    msg = (f"{len(above)} mask(s) pass E accuracy > {th.t_enc:.2f}, none with O accuracy < {th.t_orig:.2f}"
           if len(above) else f"no mask has E accuracy > {th.t_enc:.2f}")
    return chosen, Empty(rule, msg, closest)


def rank_masks(per_mask: pd.DataFrame, buckets: list[int]) -> pd.DataFrame:
    """Rank within each bucket by third accuracy, ties by E's mean score on the same images, then mask id.

    On easy data many masks share the top accuracy (E recognizes every selection image);
    the mean score (``mean_score_E``: the true label's probability in closed set, the
    cosine to the true centroid in open set) still orders them by how sure E is. Masks
    an adaptive race measured on every image come first.
    """
    sub = per_mask[per_mask["bucket"].isin(buckets)].copy()
    sub["_complete"] = sub["n"] == sub.groupby("bucket")["n"].transform("max")
    sub["_score"] = sub["mean_score_E"] if "mean_score_E" in sub.columns else 0.0
    sub = sub.sort_values(["bucket", "_complete", "third", "_score", "mask_id"],
                          ascending=[True, False, False, False, True])
    sub = sub.drop(columns=["_complete", "_score"])
    sub["rank"] = sub.groupby("bucket").cumcount() + 1
    return sub


def ties_at_cutoff(per_mask: pd.DataFrame, buckets: list[int], k: int) -> dict[int, int]:
    """Per bucket, how many masks share the k-th ranked mask's third accuracy (the tie the score broke)."""
    ranked = rank_masks(per_mask, buckets)
    out = {}
    for b, g in ranked.groupby("bucket"):
        complete = g[g["n"] == g["n"].max()]
        if len(complete) >= k:
            out[int(b)] = int((complete["third"] == complete["third"].iloc[k - 1]).sum())
    return out


def candidates(per_mask: pd.DataFrame, buckets: list[int], th: Thresholds = Thresholds()) -> pd.DataFrame:
    """The top ``k`` masks of each target bucket (:func:`rank_masks`)."""
    ranked = rank_masks(per_mask, buckets)
    return ranked[ranked["rank"] <= th.top_k].reset_index(drop=True)


def attack_list(per_mask: pd.DataFrame, buckets: list[int], th: Thresholds = Thresholds()) -> pd.DataFrame:
    """The top ``attack_top`` masks of each target bucket: what the inpainting attack measures."""
    ranked = rank_masks(per_mask, buckets)
    return ranked[ranked["rank"] <= th.attack_top].reset_index(drop=True)


def race_step(counts: pd.DataFrame, keep: int, population: int, confidence: float = 0.99,
              tolerance: float = 0.01, share: float = 0.1) -> pd.DataFrame:
    """One decision of the adaptive search (an LUCB-style race): which masks to measure next.

    ``counts``: one row per mask with ``mask_id``, ``bucket``, ``n`` (how many of the
    ``population`` selection images it has seen, always a prefix of one shared random
    order), ``correct_E`` and ``eliminated``. Bounds are Wilson bounds at ``confidence``
    with the finite-population correction (full mode's accuracy on the same N images is
    what they bound). Per bucket, among masks not eliminated:

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
    _require(counts, ["mask_id", "bucket", "n", "correct_E", "eliminated"], "adaptive counts")
    if keep < 1:
        raise MaskcryptError(f"adaptive search: keep must be >= 1, got {keep}")
    if not 0.0 <= tolerance < 1.0:
        raise MaskcryptError(f"adaptive tolerance: expected a fraction in [0, 1), got {tolerance}")
    if not 0.0 < share <= 1.0:
        raise MaskcryptError(f"adaptive share: expected a fraction in (0, 1], got {share}")
    if population < 1 or (counts["n"] > population).any():
        raise MaskcryptError(f"adaptive counts: n must lie in [0, {population}] (the selection images)")
    lo, hi = wilson_interval(counts["correct_E"], counts["n"], confidence, population)
    score = counts["score_E"] / counts["n"].clip(lower=1) if "score_E" in counts.columns else 0.0
    out = counts.assign(lo=lo, hi=hi, acc=counts["correct_E"] / counts["n"].clip(lower=1), score=score, action="",
                        settled=False, eliminated=counts["eliminated"].astype(bool))
    for _, g in out.groupby("bucket", sort=False):
        alive = g[~g["eliminated"]]
        if len(alive) > keep:
            kth = np.sort(alive["lo"].to_numpy())[::-1][keep - 1]
            out.loc[alive.index[alive["hi"].to_numpy() < kth], "eliminated"] = True
        alive = out.loc[g.index][~out.loc[g.index, "eliminated"]]
        order = alive.sort_values(["acc", "score", "n", "mask_id"], ascending=[False, False, False, True])
        top, rest = order.iloc[:keep], order.iloc[keep:]
        low = float(top["lo"].min())
        high = float(rest["hi"].max()) if len(rest) else -np.inf
        incomplete = top.index[top["n"].to_numpy() < population]
        if low >= high - tolerance:
            out.loc[incomplete, "action"] = "complete"
            out.loc[g.index, "settled"] = len(incomplete) == 0
            continue
        out.loc[top.index[(top["lo"].to_numpy() < high - tolerance) & (top["n"].to_numpy() < population)],
                "action"] = "advance"
        open_rest = rest[(rest["hi"] > low + tolerance) & (rest["n"] < population)]
        picked = open_rest.sort_values(["hi", "n", "mask_id"], ascending=[False, True, True]).head(
            max(keep, int(np.ceil(share * len(open_rest)))))
        out.loc[picked.index, "action"] = "advance"
        if not (out.loc[g.index, "action"] != "").any():  # cannot happen with exact bounds; never stall
            out.loc[alive.index[alive["n"].to_numpy() < population], "action"] = "advance"
    return out


# -- Table 2 ------------------------------------------------------------------------------------------------
def table2(attack: pd.DataFrame, ranks: pd.DataFrame, th: Thresholds = Thresholds()) -> pd.DataFrame:
    """Fourth (E on masked) and fifth (E on inpainted) accuracy, the drop and its paired interval.

    ``attack``: one row per attacked mask with ``mask_id``, ``n`` and the paired counts
    of E's correctness before/after inpainting: ``both``, ``before_only``, ``after_only``,
    ``neither``; optionally ``correct_O_inpainted`` (O on the inpainted images) and
    ``correct_O_masked``. ``ranks``: the attack list (``mask_id``, ``bucket``, ``rank``).
    Figures and ``*_uncertain`` flags only: which masks are targets is decided once, by
    :func:`decide`, and marked on the table by :func:`mark_decision`.
    """
    _require(attack, ["mask_id", "n", "both", "before_only", "after_only", "neither"], "attack counts")
    total = attack[["both", "before_only", "after_only", "neither"]].sum(axis=1)
    if (total != attack["n"]).any():
        bad = attack.loc[total != attack["n"], "mask_id"].iloc[0]
        raise MaskcryptError(f"attack counts: mask {bad!r}: both + before_only + after_only + neither != n")
    out = attack.merge(ranks[["mask_id", "bucket", "rank"]], on="mask_id", how="left", validate="one_to_one")
    if out["rank"].isna().any():
        raise MaskcryptError(f"attack counts: mask(s) {out.loc[out['rank'].isna(), 'mask_id'].tolist()[:5]} "
                             "are not in the attack list")
    n = out["n"]
    out["fourth"] = (out["both"] + out["before_only"]) / n
    out["fifth"] = (out["both"] + out["after_only"]) / n
    out["fourth_lo"], out["fourth_hi"] = wilson_interval(out["both"] + out["before_only"], n, th.confidence)
    out["fifth_lo"], out["fifth_hi"] = wilson_interval(out["both"] + out["after_only"], n, th.confidence)
    out["drop"], out["drop_lo"], out["drop_hi"] = paired_difference_interval(
        out["both"], out["before_only"], out["after_only"], out["neither"], th.confidence)
    if "correct_O_inpainted" in out.columns:
        out["O_inpainted"] = out["correct_O_inpainted"] / n
    if "correct_O_masked" in out.columns:
        out["O_masked"] = out["correct_O_masked"] / n
    out["drop_uncertain"] = (out["drop_lo"] <= th.t_drop) & (th.t_drop <= out["drop_hi"])
    out["rank"] = out["rank"].astype(int)
    out["bucket"] = out["bucket"].astype(int)
    return out.sort_values(["bucket", "rank"]).reset_index(drop=True)


def target_masks(t2: pd.DataFrame, th: Thresholds = Thresholds()) -> tuple[pd.DataFrame, Empty | None]:
    """Candidates with drop > t_drop that also pass the basic form, best first (fourth accuracy, then id).

    The basic form (E accuracy > t_enc, O accuracy < t_orig) is the method's first
    definition of a target mask; the bucketed refinement keeps it as a floor, so a
    candidate of a target bucket that O still recognizes too well, or E too poorly, is
    not a target. It is judged on the attack's own masked figures (``fourth``, and
    ``O_masked`` when O was measured). The optional ``t_attack`` (off by default) also
    needs ``worst_accuracy`` below it: the strongest measured attacker's accuracy on the
    selection split (:mod:`maskcrypt.determine.attackers`). Decided from ``rank``, ``drop`` and those
    columns with ``th``, so a threshold search reuses one table.
    """
    is_cand = t2["rank"] <= th.top_k
    dropped = is_cand & (t2["drop"] > th.t_drop)
    basic = t2["fourth"] > th.t_enc
    if "O_masked" in t2.columns:
        basic &= t2["O_masked"] < th.t_orig
    hidden = pd.Series(True, index=t2.index)
    if th.t_attack is not None:  # the optional rule: what the strongest measured attacker gets stays below it
        _require(t2, ["worst_accuracy"], "t_attack: Table 2")
        hidden = t2["worst_accuracy"] < th.t_attack
    chosen = t2[dropped & basic & hidden]
    chosen = chosen.sort_values(["fourth", "mask_id"], ascending=[False, True]).reset_index(drop=True)
    if len(chosen):
        return chosen, None
    if (dropped & basic).any():
        failed = t2[dropped & basic].sort_values("worst_accuracy").head(3)
        closest = [{"mask_id": r.mask_id, "bucket": int(r.bucket), "worst_attacker": r.worst_attacker,
                    "worst_accuracy": float(r.worst_accuracy)} for r in failed.itertuples()]
        return chosen, Empty("t_attack", f"{int((dropped & basic).sum())} candidate(s) pass every other rule, none "
                                         f"with its worst attacker's accuracy < {th.t_attack:.2f}", closest)
    if dropped.any():
        failed = t2[dropped].sort_values("fourth", ascending=False).head(3)
        closest = [{"mask_id": r.mask_id, "bucket": int(r.bucket), "fourth": float(r.fourth),
                    **({"O_masked": float(r.O_masked)} if "O_masked" in t2.columns else {}), "drop": float(r.drop)}
                   for r in failed.itertuples()]
        rule = "t_enc" if not (dropped & (t2["fourth"] > th.t_enc)).any() else "t_orig"
        return chosen, Empty(rule, f"{int(dropped.sum())} candidate(s) lose more than {th.t_drop:.2f} to "
                                   f"inpainting, none with E accuracy > {th.t_enc:.2f} and O accuracy < "
                                   f"{th.t_orig:.2f} (the basic form)", closest)
    cands = t2[is_cand].sort_values("drop", ascending=False).head(3)
    closest = [{"mask_id": r.mask_id, "bucket": int(r.bucket), "fourth": float(r.fourth), "fifth": float(r.fifth),
                "drop": float(r.drop)} for r in cands.itertuples()]
    best = closest[0]["drop"] if closest else float("nan")
    return chosen, Empty("t_drop", f"no candidate loses more than {th.t_drop:.2f} accuracy to inpainting "
                                   f"(largest drop {best:.4f})", closest)


# -- the one target decision ---------------------------------------------------------------------------------
@dataclass
class Decision:
    """What the thresholds pick from Table 1 and Table 2: target buckets, target masks best first, or why none."""

    buckets: list[int]
    targets: pd.DataFrame
    reason: Empty | None

    @property
    def ids(self) -> list[str]:
        return [str(m) for m in self.targets["mask_id"]] if len(self.targets) else []


RULES = ("bucketed", "basic")


def decide(t1: pd.DataFrame, t2: pd.DataFrame | None, th: Thresholds = Thresholds(), rule: str = "bucketed",
           per_mask: pd.DataFrame | None = None) -> Decision:
    """The method's decision, in one place.

    ``bucketed`` (the method's refinement): target buckets by t_gap, then
    :func:`target_masks` within them (top k, drop > t_drop, the basic form); ``t2`` is
    Table 2 of the attacked masks (None when no bucket was a target). ``basic`` (the
    method's basic form as a complete selection): every mask of ``per_mask`` with E >
    t_enc and O < t_orig, no buckets and no attack rule. The determination, the
    threshold search and every artifact (both Table 2 files, ``targets.json``, the
    report, the plots) take their target flags from here.
    """
    if rule not in RULES:
        raise MaskcryptError(f"--rule: expected one of {', '.join(RULES)}, got {rule!r}")
    if rule == "basic" and th.t_attack is not None:
        raise MaskcryptError("t_attack: judges the attacked masks of the bucketed rule; --rule basic chooses masks "
                             "the attack did not measure (leave t_attack out)")
    if rule == "basic":
        if per_mask is None or per_mask.empty:
            raise MaskcryptError("--rule basic: needs the per-mask table of every mask")
        chosen, why = basic_selection(per_mask, th)
        return Decision(sorted(int(b) for b in per_mask["bucket"].unique()), chosen.reset_index(drop=True), why)
    buckets, why = target_buckets(t1, th)
    empty = pd.DataFrame(columns=["mask_id"])
    if why is not None:
        return Decision([], empty, why)
    if t2 is None or t2.empty:
        return Decision(buckets, empty, Empty("t_gap", "no mask of the target buckets was attacked", []))
    chosen, why = target_masks(t2[t2["bucket"].isin(buckets)], th)
    return Decision(buckets, chosen, why)


def mark_decision(t2: pd.DataFrame, decision: Decision, th: Thresholds = Thresholds()) -> pd.DataFrame:
    """Table 2 with ``candidate`` (rank <= top_k) and ``target`` (chosen by :func:`decide`) columns."""
    out = t2.copy()
    out["candidate"] = out["rank"] <= th.top_k
    out["target"] = out["mask_id"].isin(decision.ids)
    return out
