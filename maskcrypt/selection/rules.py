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
  it; with the optional ``t_link``, whose worst linkage stays below it), best first.

Every accuracy carries a Wilson interval; every drop a paired (Newcombe) interval,
since the same images are recognized before and after inpainting. A column says
whether each decision is within its interval, i.e. could flip with other test images.
In open set (``by_identity``) the figures are claims about people the recognizer never
trained on, so the intervals are over people: the design-effect versions
(:func:`maskcrypt.core.stats.clustered_wilson`) from the per-identity counts; closed-set
Table 1 and Table 2 are about the enrolled people's own images and keep per-image ones.
When a rule empties the set, :class:`Empty` says which rule and the closest values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config.thresholds import Thresholds
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import (
    IDC,
    IDN,
    clustered_wilson,
    decode_counts,
    design_effect,
    paired_difference_interval,
    wilson_interval,
)


@dataclass(frozen=True)
class Empty:
    """Why a selection came out empty: the rule that emptied it and the closest values."""

    rule: str
    message: str
    closest: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MaskcryptError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")
    if (df["n"] < 0).any() if "n" in df.columns else False:
        raise MaskcryptError(f"{what}: negative image counts")


# -- intervals over people --------------------------------------------------------------------------------
def people_design_effect(df: pd.DataFrame, columns: list[str], paired: bool = False) -> tuple[Any, Any] | None:
    """Per row: the design effect and the identities of the count ``sum(df[columns])``, from its per-identity blobs.

    ``paired``: ``columns`` are (first only, second only) of a paired difference. None when
    the table has no per-identity counts for these columns; a row whose blobs are missing
    (a mask the race did not measure on every probe) gets deff 1 and no identity count
    (NaN): its interval stays per image.
    """
    blobs = [IDC + c for c in columns]
    if IDN not in df.columns or any(b not in df.columns for b in blobs):
        return None
    deff, ids = np.ones(len(df)), np.full(len(df), np.nan)
    for i, (m, *cs) in enumerate(df[[IDN, *blobs]].itertuples(index=False)):
        if not all(isinstance(v, (bytes, bytearray, memoryview)) for v in (m, *cs)):
            continue  # missing (None, NaN or NA after a merge): a partial mask, per image
        m = decode_counts(m)
        arrays = [decode_counts(c) for c in cs]
        if paired:
            diff = arrays[0] - arrays[1]
            deff[i] = design_effect(diff, arrays[0] + arrays[1], m)
        else:
            total = np.sum(arrays, axis=0)
            deff[i] = design_effect(total, total, m)
        ids[i] = int((m > 0).sum())
    return deff, ids


def accuracy_interval(df: pd.DataFrame, columns: list[str], th: Thresholds,
                      by_identity: bool) -> tuple[Any, Any, Any]:
    """``sum(df[columns]) / df["n"]``'s interval: over people where asked and counted (else per image), and deff.

    Returns (lo, hi, deff); deff is NaN on per-image rows.
    """
    correct = df[columns].sum(axis=1).astype(float)
    lo, hi = wilson_interval(correct, df["n"], th.confidence)
    found = people_design_effect(df, columns) if by_identity else None
    if found is None:
        return lo, hi, np.full(len(df), np.nan)
    deff, ids = found
    known = ~np.isnan(ids)
    clo, chi = clustered_wilson(correct, df["n"], deff, np.where(known, ids, 2), th.confidence)
    return np.where(known, clo, lo), np.where(known, chi, hi), np.where(known, deff, np.nan)


# -- Table 1 -------------------------------------------------------------------------------------------
def table1(counts: pd.DataFrame, th: Thresholds = Thresholds(), labels: dict[int, str] | None = None,
           by_identity: bool = False) -> pd.DataFrame:
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
    two Wilson bounds, a conservative band). ``by_identity`` (open set): the intervals are
    over people, each repetition's design effect from its per-identity counts and the
    bucket's the mean over repetitions (``first_deff``, ``second_deff``).
    """
    require_columns(counts, ["bucket", "repeat", "n", "correct_E", "correct_O"], "table1 counts")
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
    for key, name, pooled in (("first", "E", pooled_e), ("second", "O", pooled_o)):
        found = people_design_effect(df, [f"correct_{name}"]) if by_identity else None
        if found is None:
            out[f"{key}_lo"], out[f"{key}_hi"] = wilson_interval(pooled * out["n_images"], out["n_images"],
                                                                 th.confidence)
            continue
        per = pd.DataFrame({"bucket": df["bucket"], "deff": found[0], "ids": found[1]}).groupby("bucket", sort=True)
        deff, ids = per["deff"].mean().to_numpy(), per["ids"].max().to_numpy()
        out[f"{key}_lo"], out[f"{key}_hi"] = clustered_wilson(pooled * out["n_images"], out["n_images"], deff, ids,
                                                              th.confidence)
        out[f"{key}_deff"] = deff
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
    require_columns(per_mask, ["mask_id", "bucket", "n", "correct_E", "correct_O"], "per-mask counts")
    pm = per_mask.sort_values(["bucket", "mask_id"]).copy()
    pm["repeat"] = pm.groupby("bucket").cumcount()
    cols = ["bucket", "repeat", "n", "correct_E", "correct_O"]
    people = [c for c in (IDN, IDC + "correct_E", IDC + "correct_O") if c in clean.columns and c in pm.columns]
    return pd.concat([clean[cols + people], pm[cols + people]], ignore_index=True)


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
def per_mask_table(counts: pd.DataFrame, th: Thresholds = Thresholds(), by_identity: bool = False) -> pd.DataFrame:
    """Third accuracy (E) and O's accuracy per mask, with intervals and the basic rule's verdict.

    ``counts``: one row per mask with ``mask_id``, ``bucket``, ``n``, ``correct_E``, ``correct_O``
    (missing for masks the adaptive race measured on E alone: ``has_O`` is false there and
    the O figures are NaN; the basic rule never passes such a mask). ``by_identity`` (open
    set): intervals over people where the counts carry per-identity blobs (``third_deff``,
    ``acc_O_deff``; NaN where the interval is per image, e.g. a mask the race left on part
    of the probes). The blobs are dropped from the table.
    """
    require_columns(counts, ["mask_id", "bucket", "n", "correct_E", "correct_O"], "per-mask counts")
    if counts["mask_id"].duplicated().any():
        dup = counts.loc[counts["mask_id"].duplicated(), "mask_id"].iloc[0]
        raise MaskcryptError(f"per-mask counts: mask {dup!r} appears twice")
    if (counts["n"] == 0).any():
        raise MaskcryptError("per-mask counts: a mask was evaluated on no image (empty test set?)")
    out = counts.copy()
    out["third"] = out["correct_E"] / out["n"]
    # The race measures O only on the masks it measured on every image: the others have no O figures.
    out["has_O"] = out["correct_O"].notna()
    out["acc_O"] = out["correct_O"] / out["n"]
    out["third_lo"], out["third_hi"], out["third_deff"] = accuracy_interval(out, ["correct_E"], th, by_identity)
    has_o = out["has_O"].to_numpy()
    lo, hi, deff = accuracy_interval(out.fillna({"correct_O": 0}), ["correct_O"], th, by_identity)
    out["acc_O_lo"], out["acc_O_hi"] = np.where(has_o, lo, np.nan), np.where(has_o, hi, np.nan)
    out["acc_O_deff"] = np.where(has_o, deff, np.nan)
    out = out.drop(columns=[c for c in out.columns if c == IDN or c.startswith(IDC)])
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


# -- Table 2 ------------------------------------------------------------------------------------------------
def table2(attack: pd.DataFrame, ranks: pd.DataFrame, th: Thresholds = Thresholds(),
           by_identity: bool = False) -> pd.DataFrame:
    """Fourth (E on masked) and fifth (E on inpainted) accuracy, the drop and its paired interval.

    ``attack``: one row per attacked mask with ``mask_id``, ``n`` and the paired counts
    of E's correctness before/after inpainting: ``both``, ``before_only``, ``after_only``,
    ``neither``; optionally ``correct_O_inpainted`` (O on the inpainted images) and
    ``correct_O_masked``. ``ranks``: the attack list (``mask_id``, ``bucket``, ``rank``).
    Figures and ``*_uncertain`` flags only: which masks are targets is decided once, by
    :func:`decide`, and marked on the table by :func:`mark_decision`. ``by_identity``
    (open set): intervals over people from the per-identity blobs (the drop's from the
    per-identity paired difference); ``deff`` is the fourth accuracy's design effect.
    """
    require_columns(attack, ["mask_id", "n", "both", "before_only", "after_only", "neither"], "attack counts")
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
    out["fourth_lo"], out["fourth_hi"], out["deff"] = accuracy_interval(out, ["both", "before_only"], th,
                                                                        by_identity)
    out["fifth_lo"], out["fifth_hi"], _ = accuracy_interval(out, ["both", "after_only"], th, by_identity)
    paired = people_design_effect(out, ["before_only", "after_only"], paired=True) if by_identity else None
    deff, dof = (None, None) if paired is None else (paired[0], np.nan_to_num(paired[1] - 1.0, nan=np.inf))
    out["drop"], out["drop_lo"], out["drop_hi"] = paired_difference_interval(
        out["both"], out["before_only"], out["after_only"], out["neither"], th.confidence, deff=deff, dof=dof)
    out = out.drop(columns=[c for c in out.columns if c == IDN or c.startswith(IDC)])
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
    selection split (:mod:`maskcrypt.determine.attackers`); the optional ``t_link`` needs
    ``worst_linkage`` below it (a mask without a linkage figure fails it). Decided from ``rank``, ``drop`` and those
    columns with ``th``, so a threshold search reuses one table.
    """
    is_cand = t2["rank"] <= th.top_k
    dropped = is_cand & (t2["drop"] > th.t_drop)
    basic = t2["fourth"] > th.t_enc
    if "O_masked" in t2.columns:
        basic &= t2["O_masked"] < th.t_orig
    hidden = pd.Series(True, index=t2.index)
    if th.t_attack is not None:  # the optional rule: what the strongest measured attacker gets stays below it
        require_columns(t2, ["worst_accuracy"], "t_attack: Table 2")
        hidden = t2["worst_accuracy"] < th.t_attack
    unlinked = pd.Series(True, index=t2.index)
    if th.t_link is not None:  # the optional rule: what the outsider links stays below it (no figure: fails)
        require_columns(t2, ["worst_linkage"], "t_link: Table 2")
        unlinked = t2["worst_linkage"].fillna(1.0) < th.t_link
    chosen = t2[dropped & basic & hidden & unlinked]
    chosen = chosen.sort_values(["fourth", "mask_id"], ascending=[False, True]).reset_index(drop=True)
    if len(chosen):
        return chosen, None
    if (dropped & basic).any() and th.t_attack is not None and not (dropped & basic & hidden).any():
        failed = t2[dropped & basic].sort_values("worst_accuracy").head(3)
        closest = [{"mask_id": r.mask_id, "bucket": int(r.bucket), "worst_attacker": r.worst_attacker,
                    "worst_accuracy": float(r.worst_accuracy)} for r in failed.itertuples()]
        return chosen, Empty("t_attack", f"{int((dropped & basic).sum())} candidate(s) pass every other rule, none "
                                         f"with its worst attacker's accuracy < {th.t_attack:.2f}", closest)
    if (dropped & basic & hidden).any():  # only t_link is left to fail
        failed = t2[dropped & basic & hidden].sort_values("worst_linkage").head(3)
        closest = [{"mask_id": r.mask_id, "bucket": int(r.bucket), "worst_linkage": float(r.worst_linkage)}
                   for r in failed.itertuples()]
        missing = " (no linkage figure: linkage off or skipped)" if failed["worst_linkage"].isna().all() else ""
        return chosen, Empty("t_link", f"{int((dropped & basic & hidden).sum())} candidate(s) pass every other "
                                       f"rule, none with the outsider's Recall@1 < {th.t_link:.2f}{missing}", closest)
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
    for name in ("t_attack", "t_link"):
        if rule == "basic" and getattr(th, name) is not None:
            raise MaskcryptError(f"{name}: judges the attacked masks of the bucketed rule; --rule basic chooses masks "
                                 f"the attack did not measure (leave {name} out)")
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
