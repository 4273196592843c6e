"""The determination report, ``RUN/report.md``: every table the method names, with pictures.

Built only from what the stages wrote (``results/*.parquet``, ``targets.json``), one
function per section, so the report can never disagree with the tables: the target
flags it shows are the ``target`` columns of Table 2, which the one decision
(:func:`maskcrypt.selection.rules.decide`) wrote. Sentences that depend on settings (interval
levels, the ranking mode) are generated from the run's recorded settings. Written last
(pictures first, the Markdown atomically), so a report that exists describes complete
tables.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.core.fileio import write_text
from maskcrypt.core.rundir import Run, code_version
from maskcrypt.evaluation.testset import pixels
from maskcrypt.reporting.markdown import md_table
from maskcrypt.reporting.pictures import plot_attackers, plot_table1, plot_table2, save_png, target_gallery
from maskcrypt.reporting.privacy import ladder_section, linkage_section, unlinkability_section
from maskcrypt.selection.attacks import DESCRIPTIONS, FIDELITY
from maskcrypt.selection.race import versus_full
from maskcrypt.verification.protocol import FARS, far_key, far_label


def _pct(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * float(v):.2f}"


def _interval(row: Any, key: str) -> str:
    if key not in row:
        return ""
    return f"{_pct(row[key])} [{_pct(row[key + '_lo'])}, {_pct(row[key + '_hi'])}]"


def _header(root: Path, result: dict[str, Any]) -> list[str]:
    splits = result.get("splits", {})
    th = result["thresholds"]
    return [f"# maskcrypt report: {root.name}", "",
            f"Run `{root}`, code {code_version()}, written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
            f"Test data `{result['test_data']}`: {result['test_images']} images, {result['scoring']}-set scoring; "
            f"selection split {splits.get('selection')} images, confirmation split {splits.get('confirmation', 0)} "
            "images (held out: no rule sees it).",
            "Thresholds: " + ", ".join(f"{k} = {v}" for k, v in th.items()) + ".",
            _rule_sentence(result.get("rule", "bucketed")),
            _intervals_sentence(result.get("scoring", "closed"), th["confidence"]),
            f"Mask library: {result.get('out_of_range_masks', 0)} mask(s) lie outside every bucket (bucket -1): "
            "kept in the library and counted here, never measured."]


def _intervals_sentence(scoring: str, confidence: float) -> str:
    """Which interval each table carries, and what it covers (the masks and models are fixed in both)."""
    people = ("the attackers' table, the attacker ladder, linkage and verification"
              + (", and here, in open set, Table 1, Table 2 and the per-mask figures too" if scoring == "open" else ""))
    images = ("" if scoring == "open" else
              " Table 1, Table 2 and the per-mask figures keep intervals *over the test images*: closed set, they are "
              "about the enrolled people's own images, and say how far another draw of those people's photos could "
              "move the figure.")
    return (f"Every interval is at {confidence:.0%}, for fixed masks and models. Intervals *over people* ({people}) "
            "treat the identities as the sample and a person's photos as clustered within them (the design-effect "
            "Wilson interval; verification's TAR@FAR: a bootstrap over subjects): they say how far another set of "
            f"people could move a claim about people.{images} The race's bounds stay per image: they bound full "
            "mode's accuracy on the same images.")


def _rule_sentence(rule: str) -> str:
    if rule == "basic":
        return ("Rule `basic` (the method's basic form): every mask with E's accuracy > t_enc and O's < t_orig on "
                "the selection split is a target, whatever its bucket; the attack shows the best of each bucket.")
    return ("Rule `bucketed`: target buckets by t_gap, the top k masks of each as candidates, targets those that "
            "lose more than t_drop to inpainting and pass the basic form.")


def _table1(res: Path, th: dict[str, Any]) -> list[str]:
    t1 = pd.read_parquet(res / "table1.parquet")
    plot_table1(t1, res / "table1.png", th["t_gap"])
    mode = t1["mode"].iloc[0]
    spread = ("repetitions" if mode == "sampled" else "the bucket's masks")
    return ["", "## Table 1: accuracy per bucket (selection split)", "",
            f"Mode `{mode}`; accuracies in %, mean ± std over {int(t1['repeats'].max())} {spread}; in brackets "
            f"the {'interval over people' if 'first_deff' in t1.columns else 'Wilson interval'} of the pooled "
            f"accuracy on the {int(t1['n_images'].max())} distinct test images (the repetitions reuse the same "
            "images, so they narrow the std, not this interval).", "",
            "![Table 1](results/table1.png)", "",
            md_table(["bucket", "first (E)", "±", "second (O)", "±", "gap", "target", "gap near t_gap"],
                     [[r["range"], _interval(r, "first"), _pct(r["first_std"]), _interval(r, "second"),
                       _pct(r["second_std"]), _pct(r["gap"]), "yes" if r["target"] else "",
                       "yes" if r["gap_uncertain"] else ""] for _, r in t1.iterrows()])]


def _ranking(res: Path, result: dict[str, Any], th: dict[str, Any]) -> list[str]:
    if not (res / "per_mask.parquet").exists():
        return []
    pm = pd.read_parquet(res / "per_mask.parquet")
    cands = pd.read_parquet(res / "candidates.parquet")
    ad = result.get("adaptive")
    measured = (f"{len(pm)} masks ranked adaptively (the candidates measured on every selection image, the others "
                "on as many as the race needed)" if ad else f"{len(pm)} masks measured on every selection image")
    ties = result.get("ties_at_cutoff") or {}
    tied = [f"{n} in bucket {b}" for b, n in ties.items() if n > 1]
    out = ["", "## Per-mask third accuracy and candidates", "",
           f"{measured}; basic rule (E > {th['t_enc']}, O < {th['t_orig']}) passed by {int(pm['basic_pass'].sum())}. "
           f"Masks are ranked by third accuracy, ties by E's mean score on the same images (the true label's "
           f"probability, or the cosine to the true centroid in open set). "
           + (f"Masks sharing the {th['top_k']}-th mask's accuracy (a tie the score broke): {', '.join(tied)}. "
              if tied else "No tie at the cut-off. ")
           + f"Candidates (top {th['top_k']} per target bucket):", "",
           md_table(["bucket", "rank", "mask", "third (E)", "O"],
                    [[r["bucket"], r["rank"], r["mask_id"], _interval(r, "third"), _pct(r["acc_O"])]
                     for _, r in cands.iterrows()])]
    if ad:
        rounds = ad["rounds"]
        passes_e, passes_o = ad.get("forward_passes_E", ad["forward_passes"]), ad.get("forward_passes_O", 0)
        if "delta" in ad:
            how = (f"a race of E alone with error probability {ad['delta']:g}: with probability at least "
                   f"{1 - ad['delta']:.0%}, each mask it ranks in a bucket's top {ad['keep']} is within "
                   f"{ad['tolerance']:.0%} of full mode's {ad['keep']}-th best on the same images; O measured "
                   f"afterwards on the {ad.get('o_masks', 0)} masks of the attack list")
        else:  # a run determined before the race had its guarantee
            how = f"a race on {ad['confidence']:.0%} Wilson bounds per mask, top {ad['keep']} kept per bucket"
        out += ["", f"Ranked adaptively ({how}): {ad['forward_passes']:,} forward passes (E {passes_e:,}, "
                f"O {passes_o:,}) against {ad['full_forward_passes']:,} in full mode "
                f"({versus_full(ad['full_forward_passes'], ad['forward_passes'])}), {len(rounds)} rounds"
                + (f"; E embedded each racing mask's masked gallery once ({ad['gallery_passes_E']:,} passes)"
                   if ad.get("gallery_passes_E") else "") + ".", "",
                md_table(["round", "masks", "masked images", "forward passes", "still open after", "seconds"],
                         [[r["round"], r["masks"], f"{r['images']:,}", f"{r['forward_passes']:,}", r["open"],
                           r["seconds"]] for r in rounds])]
    return out


FIDELITY_HEADERS = {"psnr_hole": "hole PSNR dB", "ssim_hole": "hole SSIM", "psnr_image": "image PSNR dB",
                    "ssim_image": "image SSIM"}


def _attackers(res: Path, result: dict[str, Any], th: dict[str, Any]) -> list[str]:
    """Every attacker's accuracy under each target mask (both splits), from ``results/attacks.parquet``."""
    if not (res / "attacks.parquet").exists():
        return []

    table = pd.read_parquet(res / "attacks.parquet")
    measured = list(dict.fromkeys(table["mask_id"]))
    shown = [t["mask_id"] for t in result["targets"] if t["mask_id"] in set(measured)]
    which = "target mask"
    if not shown and (res / "table2.parquet").exists():  # no target: the candidates show what was at stake
        t2 = pd.read_parquet(res / "table2.parquet")
        shown, which = t2.loc[t2["rank"] <= th["top_k"], "mask_id"].tolist(), "candidate (no target was chosen)"
    t1 = pd.read_parquet(res / "table1.parquet")
    labels = {int(b): r for b, r in zip(t1["bucket"], t1["range"])} if "range" in t1 else {}
    info = result.get("attack") or {}
    chance = float(table["chance"].iloc[0])
    present = list(dict.fromkeys(table["attacker"]))
    fidelity = [f for f in FIDELITY if f in table.columns]
    rows = []
    for mid in shown:
        mine = table[table["mask_id"] == mid]
        for attacker in present:
            cells, per_split = [], []
            for split in ("selection", "confirmation"):
                r = mine[(mine["split"] == split) & (mine["attacker"] == attacker)]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                per_split.append(r)
                cells.append(_interval(r, "accuracy") + (" **worst**" if r["worst_attacker"] == attacker else ""))
            for fig in fidelity:  # "selection / confirmation"; empty for attackers that fill nothing
                values = [float(r[fig]) for r in per_split if pd.notna(r[fig])]
                cells.append(" / ".join(f"{v:.2f}" if fig.startswith("psnr") else f"{v:.3f}" for v in values))
            rows.append([f"`{mid}`", labels.get(int(mine["bucket"].iloc[0]), ""), attacker, *cells])
    if shown:
        plot_attackers(table, shown, res / "attacks.png", labels)
    trained = {name: r for name, r in ((info.get("training") or {}).get("attackers") or {}).items()
               if name != "linkage"}  # the linkage embedder never starts from O: its own section says how it trained
    out = ["", "## What an attacker gets", "",
           "The adversary sees masked images and wants the identity; it may hold an ordinary recognizer, an "
           "inpainter, classical image processing and labelled photos of its own, and may know the mask (the "
           "service shares masks with clients; the hole shows in every encrypted image). Each attacker's "
           f"identification accuracy in %, with its {th['confidence']:.0%} interval over the "
           f"{_identities(table)} test identities of each split (their photos clustered within them), on the "
           "selection and the held-out confirmation split; **worst** marks the strongest attacker of a mask and "
           f"split, the privacy figure. Chance (guessing among the test identities): {100 * chance:.2f}%. Every "
           "attacked mask's figures are in `results/attacks.parquet`.", "",
           "*What it measures:* the share of the test people's masked photos each attacker names correctly, "
           "given the attacker's own labelled photos (the run's training data unless `--attacker-data` says "
           "otherwise). *What it does not:* an attacker with other data, a stronger recipe or more training; "
           + ("in closed set the attackers start from O, which trained on clean photos of these same people, so "
              "this is the worst case of an insider, not of a stranger (the linkage section is the stranger)."
              if result.get("scoring") != "open" else
              "the attackers start from O, trained on other people than these: the stranger's case."), "",
           *[f"- `{a}`: {DESCRIPTIONS.get(a, a)}" for a in present], ""]
    if fidelity:
        out += ["For every attacker that inpaints, its fill against the original image (selection / confirmation, "
                "means over the probes): PSNR in dB and SSIM (7 x 7 window, as scikit-image) inside the hole (the "
                "primary figures: the known pixels are copied and would dominate a whole-image figure) and over the "
                "whole image. These measure fidelity, not privacy: identity can leak from a poor reconstruction "
                "(the accuracy columns say how much), and a faithful-looking fill can still be of the wrong face.",
                ""]
    pool = info.get("pool") or {}
    if pool.get("selection_masks"):
        out += [(f"The selection masks were imported (`{pool['selection_masks']}`): the family attacker's masks are "
                 "a seeded share of that library held out before ranking, disjoint from the ranked masks"
                 + (f", except for bucket(s) {pool['generated']}, too small to spare one: there the family attacker "
                    "trained on generated masks instead, another distribution than the deployed masks, and may be "
                    "underestimated" if pool.get("generated") else "") + "."), ""]
    if info.get("data"):
        out += [f"The adaptive attackers trained from O's weights for {info.get('epochs')} epoch(s) (O's "
                f"TrainConfig otherwise) on `{info['data']}` ({info.get('data_images')} images): "
                + ", ".join(f"{name} {r.get('state')}" for name, r in list(trained.items())[:8])
                + (" ..." if len(trained) > 8 else "") + ".", ""]
    if not shown:
        return [*out, "No mask to show.", *ladder_section(res, result, shown, labels),
            *linkage_section(res, result, shown, labels), *unlinkability_section(res, result)]
    return [*out, f"Per {which}:", "", "![attackers](results/attacks.png)", "",
            md_table(["mask", "bucket", "attacker", "selection", "confirmation",
                      *[FIDELITY_HEADERS[f] for f in fidelity]], rows), *ladder_section(res, result, shown, labels),
            *linkage_section(res, result, shown, labels), *unlinkability_section(res, result)]


def _table2(res: Path, th: dict[str, Any]) -> list[str]:
    if not (res / "table2.parquet").exists():
        return []
    t2 = pd.read_parquet(res / "table2.parquet")
    plot_table2(t2, res / "table2.png")
    return ["", "## Table 2: the inpainting attack (selection split)", "",
            "E on the masked images (fourth), on the same images inpainted by R (fifth), the drop with its paired "
            f"{th['confidence']:.0%} interval, and O on both: what an attacker holding an inpainter and an ordinary "
            "model gets back. The worst attacker and the worst linkage (the outsider's Recall@1 of unseen victims, "
            "from the sections above) are the privacy figures beside them. `target` is the run's decision (every "
            "rule applied).",
            "",
            "![Table 2](results/table2.png)", "",
            md_table(["bucket", "rank", "mask", "fourth", "fifth", "drop", "drop near t_drop", "O masked",
                      "O inpainted", "worst attacker", "worst linkage", "target"],
                     [[r["bucket"], r["rank"], r["mask_id"], _interval(r, "fourth"), _interval(r, "fifth"),
                       _interval(r, "drop"), "yes" if r["drop_uncertain"] else "", _pct(r.get("O_masked")),
                       _pct(r.get("O_inpainted")), _worst(r), _linkage(r), "yes" if r["target"] else ""]
                      for _, r in t2.iterrows()])]


def _linkage(row: Any) -> str:
    """The outsider's Recall@1 with its chance, or empty (linkage off or skipped)."""
    value = row.get("worst_linkage") if hasattr(row, "get") else None
    if value is None or pd.isna(value):
        return ""
    return f"{_pct(value)} (chance {_pct(row.get('linkage_chance'))})"


def _identities(table: pd.DataFrame) -> str:
    """The identity count(s) the attack table's intervals rest on, per split ("80" or "40 / 38")."""
    if "identities" not in table.columns or table["identities"].isna().all():
        return "(uncounted: a table of an older run, per-image intervals)"
    counts = table.dropna(subset=["identities"]).groupby("split", sort=False)["identities"].max()
    return " / ".join(str(int(v)) for v in counts)


def _worst(row: Any) -> str:
    name = row.get("worst_attacker") if hasattr(row, "get") else None
    return "" if not isinstance(name, str) else f"{name} {_pct(row.get('worst_accuracy'))}"


def _targets(root: Path, result: dict[str, Any], test: Any) -> list[str]:
    out = ["", "## Target masks", ""]
    targets = result["targets"]
    if not targets:
        reason = result.get("reason") or {}
        out.append(f"None. Rule `{reason.get('rule')}`: {reason.get('message')}")
        if reason.get("closest"):
            out += ["", "Closest values:", "", "```", json.dumps(reason["closest"], indent=1), "```"]
        return out
    rows = []
    for t in targets:
        c = t.get("confirmation") or {}
        if "fourth" not in t:  # the basic rule's masks beyond the attacked top of each bucket
            rows.append([t["mask_id"], t["range"], _interval(t, "third"), "", "", "", _pct(t.get("acc_O")), "", "",
                         "", "", "", "yes" if t["in_training_pool"] else "no"])
            continue
        rows.append([t["mask_id"], t["range"], _interval(t, "fourth"), _interval(c, "fourth") if c else "",
                     _interval(t, "drop"), _interval(c, "drop") if c else "", _pct(t.get("O_masked")),
                     _pct(c.get("O_masked")), _pct(t.get("O_inpainted")), _pct(c.get("O_inpainted")),
                     _worst(t), _worst(c), "yes" if t["in_training_pool"] else "no"])
    probe = np.flatnonzero(~np.asarray(test.gallery) & (np.asarray(test.split) == 0))
    _, first = np.unique(np.asarray(test.labels)[probe], return_index=True)
    pics = pixels(test.images[probe[np.sort(first)][:3]])
    save_png(target_gallery(root, [t["mask_id"] for t in targets], pics), root / "results" / "targets.png")
    return [*out, "Best first. Figures on the selection split (where they were chosen) and on the held-out "
                  "confirmation split: a fall from one to the other is selection bias.", "",
                  md_table(["mask", "bucket", "E masked (sel.)", "E masked (conf.)", "drop (sel.)", "drop (conf.)",
                            "O masked (sel.)", "O masked (conf.)", "O inpainted (sel.)", "O inpainted (conf.)",
                            "worst attacker (sel.)", "worst attacker (conf.)", "in E's training pool"], rows), "",
                  f"{result['training_pool_overlap']} of {len(targets)} target masks are in E's training pool "
                  "(compared by sha256).", "",
                  "Each target mask (white = hole), test images masked by it, and R's inpainting of them:", "",
                  "![target masks](results/targets.png)"]


def _verification(res: Path) -> list[str]:
    """Verification in the field's units, when the test source had pairs (the verify stage wrote it)."""
    if not (res / "verification.parquet").exists():
        return []

    v = pd.read_parquet(res / "verification.parquet").drop(columns=["roc_fpr", "roc_tpr"])
    first = v.iloc[0]
    rows = []
    for _, r in v.iterrows():
        tars = [_pct(r[f"tar_{far_key(f)}"]) + ("" if r[f"resolvable_{far_key(f)}"] else "*")
                + (f" [{_pct(r[f'tar_{far_key(f)}_lo'])}, {_pct(r[f'tar_{far_key(f)}_hi'])}]"
                   if f"tar_{far_key(f)}_lo" in r and pd.notna(r[f"tar_{far_key(f)}_lo"]) else "") for f in FARS]
        rows.append([r["model"], r["condition"], r["side"], r["mask_id"] or "-", r["range"],
                     f"{_pct(r['accuracy'])} ± {_pct(r['accuracy_std'])}"
                     + (f" [{_pct(r['accuracy_lo'])}, {_pct(r['accuracy_hi'])}]" if "accuracy_lo" in r else ""),
                     *tars, _pct(r["auc"]), r["negatives"]])
    return ["", "## Verification (the field's protocol)", "",
            f"All {first['pairs']} pairs of `{first['pairs_source']}` ({first['positives']} same, {first['negatives']} "
            f"different, {first['folds']} folds): flip-sum embeddings, cosine similarity, accuracy with the threshold "
            "chosen on the other nine folds (mean ± std over folds, insightface's `Accuracy-Flip`"
            + (f"; in brackets its interval over the {int(first['subjects'])} subjects, the pairs clustered by their "
               "first image's person" if "subjects" in first else "")
            + "), TAR at each FAR on all pairs (`*`: fewer than 1/FAR negative pairs, so no false accept allowed"
            + ("; in brackets a bootstrap interval over subjects" if "subjects" in first else "")
            + "). The fold spread is not a confidence interval: it says how the folds differ, not how far other "
            "people could move the figure. E sees both images "
            "under the mask (the deployed system); O on clean pairs is the utility reference; the attacker rows are "
            "O on masked, R-inpainted, Telea- and Navier-Stokes-filled pairs and, when trained, the adaptive-family "
            "recognizer (`family`) on masked and inpainted pairs. In %.", "", "![ROC](results/roc.png)", "",
            md_table(["model", "condition", "side", "mask", "bucket", "accuracy",
                      *[f"TAR@FAR={far_label(f)}" for f in FARS], "AUC", "negatives"], rows)]


def _timing(result: dict[str, Any]) -> list[str]:
    out = ["", "## Time and throughput", "",
           ", ".join(f"{k} {v} s" for k, v in result.get("seconds", {}).items()) + "."]
    att = result.get("attack") or {}
    if "forward_passes" in att:
        train = att.get("training") or {}
        states = [r.get("state") for r in (train.get("attackers") or {}).values()]
        out.append(f"Attack stage: {att['masks']} masks x {len(att.get('attackers', []))} attackers on both splits: "
                   f"{att['forward_passes']:,} recognizer forward passes, {att['fills_R']:,} fills by R and "
                   f"{att['fills_classical']:,} classical fills in {att['seconds']} s"
                   + (f"; attacker training: {train.get('trials', 0)} Ray Tune trial(s) in {train.get('seconds')} s "
                      f"({states.count('done')} attacker(s) complete from an earlier run)" if states else "") + ".")
    tp = result.get("throughput")
    if tp and tp.get("per_mask_images_per_s") is None:
        out.append(f"Per-mask stage: every mask's counts came from earlier work ({tp.get('resumed_masks', 0)} masks "
                   "resumed from results/per_mask.parts, or measured by Table 1's full mode): no throughput to "
                   "report.")
    elif tp:
        out.append(f"Per-mask stage: {tp['per_mask_images_per_s']:,.0f} masked images recognized per second on "
                   f"{tp['actors']} actors (start-up included; `maskcrypt capacity` and benchmarks/cross_product.py "
                   "compare it with the bare forward pass).")
    return out


def write_report(run: str | os.PathLike[str] | Run, test: Any, log: Any = print) -> Path:
    """``RUN/report.md`` and its pictures from the result tables and ``targets.json``."""
    root = Run.open(run).root
    res = root / "results"
    result = json.loads((root / "targets.json").read_text())
    th = result["thresholds"]
    out = [*_header(root, result), *_table1(res, th), *_ranking(res, result, th), *_attackers(res, result, th),
           *_table2(res, th),
           *_targets(root, result, test), *_verification(res), *_timing(result)]
    path = write_text(root / "report.md", "\n".join(out) + "\n")
    log(f"report: {path}")
    return path
