"""Stage 3, determine: the target masks of a trained run (docs/method.md, "Determination").

:func:`determine` runs these stage functions in order; each returns its table and
writes it under ``RUN/results/`` as it completes:

1. :func:`table1` - first (E) and second (O) accuracy per bucket (``sampled`` mode:
   every test image gets one random mask of the bucket per repetition; ``full``: every
   mask x every image);
2. :func:`rank` - per-mask third accuracy of the target buckets' masks (full or
   adaptive), and the candidates (top k per target bucket); per-mask counts arrive in
   resumable parts (``per_mask.parts/``);
3. :func:`attack` - the inpainting attack on the top ``attack_top`` per target bucket,
   on the selection and the held-out confirmation split, and every attacker of
   :mod:`maskcrypt.determine.attackers` on the same masks (the adaptive ones trained first, on Ray
   Tune): ``results/attacks.parquet``, the worst attacker per mask on Table 2;
4. :func:`choose` - the one target decision (:func:`maskcrypt.selection.rules.decide`), marked
   on both Table 2 files; then unlinkability across the target masks
   (:mod:`maskcrypt.determine.unlinkability`);
5. :func:`write_targets` - ``targets.json``, ``targets.parquet`` and ``run.json``;
   then the report.

The test images are split first: a *selection* part that every rule sees and a
*confirmation* part, held out, on which the attacked masks are measured again
(selection bias shows as the difference). The counting runs on Ray Data
(:mod:`maskcrypt.evaluation.crossproduct`, :mod:`maskcrypt.determine.race`); every decision is a pure function
of the tables (:mod:`maskcrypt.selection.rules`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from maskcrypt.config import AdaptivePlan, AttackConfig, DetermineConfig, EvalSettings
from maskcrypt.core.fileio import write_json, write_parquet
from maskcrypt.core.rundir import Run
from maskcrypt.core.stats import IDC, IDN
from maskcrypt.determine.attackers import LINKAGE, train_for
from maskcrypt.determine.guards import check_attacker_weights
from maskcrypt.determine.inputs import Determination, open_determination
from maskcrypt.determine.linkage import evaluate_linkage
from maskcrypt.determine.race import evaluate_adaptive
from maskcrypt.determine.unlinkability import PICTURE, evaluate_unlinkability
from maskcrypt.evaluation.crossproduct import evaluate_attack, evaluate_masks, evaluate_sampled, read_parts
from maskcrypt.evaluation.testset import LADDER
from maskcrypt.masks import MaskLibrary
from maskcrypt.reporting.report import write_report
from maskcrypt.runtime.cluster import require_ray
from maskcrypt.selection.attacks import (
    attacker_figures,
    attacks_table,
    chance_level,
    worst_attackers,
    worst_linkages,
)
from maskcrypt.selection.ladder import ladder_table
from maskcrypt.selection.race import RACE_RULE, full_mode_passes, versus_full
from maskcrypt.selection.rules import (
    Decision,
    Empty,
    Thresholds,
    attack_list,
    basic_selection,
    candidates,
    decide,
    full_table1_counts,
    mark_decision,
    per_mask_table,
    rank_masks,
    table2,
    target_buckets,
    ties_at_cutoff,
)
from maskcrypt.selection.rules import table1 as table1_of
from maskcrypt.verification.stage import verify_determination


def rank_mode_for(config: DetermineConfig, n_masks: int, n_selection: int, counted: bool) -> str:
    """``full`` or ``adaptive``: the basic rule judges every mask; ``auto`` races above ``config.adaptive_above``.

    ``counted``: full mode's per-mask counts exist already (Table 1's full mode), so a
    race would only repeat them.
    """
    if config.rule == "basic":
        return "full"
    if config.rank_mode != "auto":
        return config.rank_mode
    return "adaptive" if n_masks * n_selection > config.adaptive_above and not counted else "full"


def table1(d: Determination) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Table 1 (written), and in full mode the per-mask counts it was built from (the rank stage reuses them)."""
    t0 = time.perf_counter()
    cfg, models, n_sel = d.config, d.models, d.test.probes("selection")
    pm_counts = None
    if cfg.table1_mode == "sampled":
        counts, _, reused = d.cached("table1_sampled", {"repeats": cfg.repeats, "buckets": d.present},
                                     lambda: (evaluate_sampled(d.library, d.test, models, repeats=cfg.repeats,
                                                               seed=cfg.seed, buckets=d.present, settings=d.settings,
                                                               log=d.log),
                                              {}))
        what = (f"{len(d.present)} buckets x {cfg.repeats} repetitions x {n_sel} images"
                + (" (reused: same models, test data, masks and settings)" if reused else ""))
    else:
        clean = evaluate_sampled(d.library, d.test, models, repeats=1, seed=cfg.seed, buckets=[], settings=d.settings)
        pm_counts = evaluate_masks(d.library, d.test, models, buckets=d.present, settings=d.settings, parts=d.parts,
                                   log=d.log)
        counts = full_table1_counts(clean, pm_counts)
        what = f"every mask of {len(d.present)} buckets ({len(pm_counts)} masks) x {n_sel} images"
    t1 = table1_of(counts, d.thresholds, d.labels, by_identity=d.test.scoring == "open")
    t1.insert(2, "mode", cfg.table1_mode)
    d.write(t1, "table1")
    d.timings["table1"] = time.perf_counter() - t0
    d.log(f"table1: {what} in {d.timings['table1']:.1f}s")
    return t1, pm_counts


def rank(d: Determination, buckets: list[int], pm_counts: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-mask third accuracy (full or adaptive) and the candidates; both written."""
    t0 = time.perf_counter()
    measured = d.present if d.config.per_mask == "all" else buckets
    n_masks = d.library.table(measured, columns=["mask_id"]).num_rows
    n_sel = d.test.probes("selection")
    mode = rank_mode_for(d.config, n_masks, n_sel, pm_counts is not None)
    gallery = int(d.test.gallery.sum()) if d.test.scoring == "open" else 0
    resumed: set[str] = set()
    if pm_counts is None and mode == "adaptive":
        def race() -> tuple[pd.DataFrame, dict[str, Any]]:
            # E alone decides the race; O is measured afterwards where a table needs it: on the attack list (each
            # bucket's top attack_top, hence the candidates), on every selection image, as full mode gives them.
            counts, rounds = evaluate_adaptive(d.library, d.test, {"E": d.models["E"]}, measured,
                                               keep=d.thresholds.attack_top, plan=d.adaptive, settings=d.settings,
                                               log=d.log)
            ranked = rank_masks(counts.assign(third=counts["correct_E"] / counts["n"].clip(lower=1),
                                              mean_score_E=counts["score_E"] / counts["n"].clip(lower=1)), measured)
            complete = ranked[ranked["rank"] <= d.thresholds.attack_top]["mask_id"].tolist()
            o = evaluate_masks(d.library, d.test, {"O": d.models["O"]}, buckets=measured, settings=d.settings,
                               mask_ids=complete)
            o_cols = ["mask_id", "correct_O", "score_O", *(c for c in o.columns if c == IDC + "correct_O")]
            counts = counts.merge(o[o_cols], on="mask_id", how="left")
            return counts, {"rounds": rounds, "o_masks": len(complete)}

        pm_counts, extra, reused = d.cached("adaptive", {"plan": dataclasses.asdict(d.adaptive), "buckets": measured,
                                                         "keep": d.thresholds.attack_top, "race_models": ["E"],
                                                         "rule": RACE_RULE}, race)
        rounds = extra["rounds"]
        if reused:
            resumed = set(pm_counts["mask_id"])
            d.log(f"adaptive: reused the race of results/cache/ ({len(pm_counts)} masks; same models, test data, "
                  "masks, plan and attack_top)")
        spent_e = sum(r["forward_passes"] for r in rounds)
        gallery_e = sum(int(r.get("gallery_passes", 0)) for r in rounds)
        # O on the attack list: its probes, and its clean gallery once per actor of that pool (open set).
        o_masks = int(extra.get("o_masks", 0))
        spent_o = full_mode_passes(o_masks, n_sel, gallery, 0, 1, d.settings.actors) if o_masks else 0
        full_cost = full_mode_passes(n_masks, n_sel, gallery, 1, 1, d.settings.actors)
        d.result["adaptive"] = {"rounds": rounds, "forward_passes": spent_e + spent_o, "forward_passes_E": spent_e,
                                "gallery_passes_E": gallery_e, "forward_passes_O": spent_o, "o_masks": o_masks,
                                "full_forward_passes": full_cost, "delta": d.adaptive.delta,
                                "tolerance": d.adaptive.tolerance, "keep": d.thresholds.attack_top,
                                "reused": reused}
        d.log(f"adaptive: {spent_e + spent_o:,} forward passes (E {spent_e:,} racing"
              + (f", of which {gallery_e:,} embedded the masked galleries, once per mask" if gallery else "")
              + f"; O {spent_o:,} on the {o_masks} masks of the attack list) against {full_cost:,} in full mode "
              f"({versus_full(full_cost, spent_e + spent_o)}); error probability {d.adaptive.delta:g}")
    elif pm_counts is None:
        before = read_parts(d.parts)
        resumed = set(before["mask_id"]) if len(before) else set()
        pm_counts = evaluate_masks(d.library, d.test, d.models, buckets=measured, settings=d.settings,
                                   parts=d.parts, log=d.log)
    d.result["rank_mode"] = mode
    counts = pm_counts[pm_counts["bucket"].isin(measured)]
    pm = d.write(per_mask_table(counts.drop(columns=["split"]), d.thresholds, by_identity=d.test.scoring == "open"),
                 "per_mask")
    cands = d.write(candidates(pm, buckets, d.thresholds), "candidates")
    d.result["ties_at_cutoff"] = {str(b): n for b, n in ties_at_cutoff(pm, buckets, d.thresholds.top_k).items()}
    d.timings["per_mask"] = seconds = time.perf_counter() - t0
    # Masks measured by this stage: none when Table 1's full mode measured them, nor resumed parts.
    fresh = 0 if d.config.table1_mode == "full" else len(set(pm["mask_id"]) - resumed)
    passes = d.result["adaptive"]["forward_passes"] if "adaptive" in d.result else (
        full_mode_passes(fresh, n_sel, gallery, 1, 1, d.settings.actors) if fresh else 0)
    rate = passes / max(seconds, 1e-9)
    d.log(f"per-mask: {len(pm)} masks x {n_sel} images ({fresh} evaluated now) in {seconds:.1f}s "
          + (f"({rate:,.0f} masked images recognized/s over {len(d.models)} models); " if fresh else "")
          + f"{len(cands)} candidates")
    # A throughput is only a throughput when this run evaluated masks (not all resumed from parts).
    d.result["throughput"] = {"per_mask_images_per_s": round(rate, 1) if fresh else None,
                              "actors": d.settings.actors, "resumed_masks": len(pm) - fresh}
    return pm, cands


def ladder_columns(d: Determination, trained: dict[str, Any]) -> dict[int, str]:
    """The attacker ladder's rungs (photos) and the attack count column of each: 0 is O on the masked image, the
    top (all photos) the family attacker, the others ``ladder:<photos>`` (whose models join ``trained``)."""
    info = (d.result.get("attack") or {}).get("ladder")
    if not info:
        return {}
    total = int(info["photos_total"])
    names = set(d.attack.names())
    # The family model is trained whenever the ladder is on; when no family attacker is asked it is only the top
    # rung, so it leaves ``trained["family"]`` (the scorer would otherwise run it as F as well, for nothing).
    family = trained["family"] if {"adaptive-family", "adaptive-family+R"} & names else trained.pop("family")
    columns = {}
    for photos in info["rungs"]:
        if photos == 0:
            columns[0] = "correct_O_masked"
        elif photos == total and "adaptive-family" in names:
            columns[photos] = "atk:adaptive-family"
        else:
            columns[photos] = f"{LADDER}{photos}"
            if photos == total:  # the family model, counted as a rung where adaptive-family itself is not asked
                trained[columns[photos]] = family
    return columns


def attack(d: Determination, pm: pd.DataFrame, buckets: list[int]) -> dict[str, pd.DataFrame]:
    """Table 2's figures per split for the top ``attack_top`` masks of each target bucket, and every attacker's.

    The adaptive attackers train first (:func:`maskcrypt.determine.attackers.train_for`); then one
    inference pass counts E, O and every attacker under each mask (and each fill's fidelity, and
    each rung of the attacker ladder). Writes ``results/attacks.parquet``,
    ``results/attacker_ladder.parquet`` and ``results/linkage.parquet``; each split's Table 2
    gets that split's worst attacker.
    """
    alist = attack_list(pm, buckets, d.thresholds)
    trained = train_for(d, alist)
    linkage_model = trained.pop(LINKAGE, None)
    ladder = ladder_columns(d, trained)
    t0 = time.perf_counter()
    counts = evaluate_attack(d.library, alist["mask_id"].tolist(), d.test, d.models, d.inpainter, splits=d.splits,
                             settings=d.settings, attackers=d.attack.names(), trained=trained, log=d.log,
                             fidelity=d.attack.fidelity)
    found = d.write(attacks_table(counts, alist, d.thresholds, chance_level(d.test)), "attacks")
    if ladder:
        d.write(ladder_table(counts, alist, ladder, d.thresholds, chance_level(d.test)), "attacker_ladder")
    else:  # a relaunch with the ladder off leaves no earlier ladder looking current
        (d.paths.results / "attacker_ladder.parquet").unlink(missing_ok=True)
    linkage = evaluate_linkage(d, alist, linkage_model) if d.attack.linkage else None
    if linkage is not None:
        d.write(linkage, "linkage")
    else:  # off or skipped (the reason in run.json): no earlier table looks current
        (d.paths.results / "linkage.parquet").unlink(missing_ok=True)
    tables = {}
    paired = ["mask_id", "n", "both", "before_only", "after_only", "neither", "correct_O_masked",
              "correct_O_inpainted"]
    paired += [c for c in counts.columns if c == IDN or c[len(IDC):] in paired]
    for split in d.splits:
        part = counts.loc[counts["split"] == split, paired]
        if split == "selection":
            part = part.merge(alist[["mask_id", "third", "acc_O"]], on="mask_id")
        t2 = table2(part, alist, d.thresholds, by_identity=d.test.scoring == "open")
        tables[split] = t2.merge(worst_attackers(found, split), on="mask_id", how="left").merge(
            worst_linkages(linkage, split), on="mask_id", how="left")
    d.timings["attack"] = time.perf_counter() - t0
    cost = {k: int(counts[k].sum()) for k in ("forward_passes", "fills_R", "fills_classical")}
    d.result.setdefault("attack", {}).update({**cost, "masks": len(alist), "chance": chance_level(d.test),
                                              "seconds": round(d.timings["attack"], 1)})
    d.log(f"attack: {len(alist)} masks x {sum(d.test.probes(s) for s in d.splits)} images, "
          f"{len(found['attacker'].unique())} attackers: {cost['forward_passes']:,} recognizer forward passes, "
          f"{cost['fills_R']:,} R and {cost['fills_classical']:,} classical fills in {d.timings['attack']:.1f}s")
    return tables


def choose(d: Determination, t1: pd.DataFrame, tables: dict[str, pd.DataFrame],
           per_mask: pd.DataFrame | None) -> Decision:
    """The one target decision (``config.rule``); both Table 2 files are written with its ``target`` flags."""
    decision = decide(t1, tables.get("selection"), d.thresholds, d.config.rule, per_mask)
    for split, t2 in tables.items():
        d.write(mark_decision(t2, decision, d.thresholds),
                "table2" if split == "selection" else f"table2_{split}")
    if decision.reason is not None:
        d.log(f"no target mask: {decision.reason.message}")
    return decision


def _figures(row: pd.Series) -> dict[str, Any]:
    keys = ["fourth", "fourth_lo", "fourth_hi", "fifth", "fifth_lo", "fifth_hi", "drop", "drop_lo", "drop_hi",
            "drop_uncertain", "third", "third_lo", "third_hi", "acc_O", "acc_O_lo", "acc_O_hi", "mean_score_E",
            "O_masked", "O_inpainted", "worst_attacker", "worst_accuracy", "worst_linkage", "linkage_chance", "rank",
            "n"]
    out = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys if k in row.index}
    # A figure not measured (linkage off or skipped) is null in targets.json, not NaN (which is not JSON).
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}


def write_targets(d: Determination, decision: Decision, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """``targets.json`` (every figure on both splits, or why none), ``targets.parquet`` and run.json."""
    import pyarrow as pa

    result = d.result
    result["reason"] = decision.reason.to_dict() if isinstance(decision.reason, Empty) else None
    ids = decision.ids
    pool_sha: set[str] = set()
    if d.paths.masks_train.exists():
        pool_sha = set(MaskLibrary.open(str(d.paths.masks_train)).column("sha256"))
    targets_parquet = d.paths.root / "targets.parquet"
    result["targets"] = []
    if ids:
        rows = d.library.table()
        where = {m: i for i, m in enumerate(rows.column("mask_id").to_pylist())}
        keep = rows.take(pa.array([where[m] for m in ids], pa.int64()))  # best first, library format
        sha = dict(zip(keep.column("mask_id").to_pylist(), keep.column("sha256").to_pylist()))
        confirm = tables.get("confirmation")
        confirm = {} if confirm is None else {r["mask_id"]: _figures(r) for _, r in confirm.iterrows()}
        # Table 2's figures where the mask was attacked (always, in the bucketed rule; the top of each
        # bucket, in the basic rule), the per-mask figures otherwise.
        sel = tables.get("selection")
        attacked = {} if sel is None else {r["mask_id"]: _figures(r) for _, r in sel.iterrows()}
        found = d.paths.results / "attacks.parquet"
        attacks = pd.read_parquet(found) if found.exists() else None
        result["targets"] = [{"mask_id": r["mask_id"], "bucket": int(r["bucket"]),
                              "range": d.labels[int(r["bucket"])], "sha256": sha[r["mask_id"]],
                              "in_training_pool": sha[r["mask_id"]] in pool_sha, **_figures(r),
                              **attacked.get(r["mask_id"], {}), "confirmation": confirm.get(r["mask_id"]),
                              "attackers": None if attacks is None else attacker_figures(attacks, r["mask_id"])}
                             for _, r in decision.targets.iterrows()]
        write_parquet(keep, targets_parquet)
    else:
        targets_parquet.unlink(missing_ok=True)
    result["training_pool_overlap"] = sum(t["in_training_pool"] for t in result["targets"])
    result["seconds"] = {k: round(v, 1) for k, v in d.timings.items()}
    write_json(d.paths.root / "targets.json", result)
    d.run.update("determine", {
        "config": dataclasses.asdict(d.config), "thresholds": d.thresholds.to_dict(),
        "rank_mode": result.get("rank_mode"), **d.key, "target_buckets": decision.buckets, "targets": ids,
        "attack": {"config": dataclasses.asdict(d.attack), **{k: v for k, v in result.get("attack", {}).items()
                                                               if k != "training"},
                   "trained": (result.get("attack", {}).get("training") or {}).get("attackers")},
        "seconds": result["seconds"]})
    return result


def determine(
    run: str | os.PathLike[str] | Run,
    config: DetermineConfig = DetermineConfig(),
    thresholds: Thresholds = Thresholds(),
    settings: EvalSettings = EvalSettings(),
    adaptive: AdaptivePlan = AdaptivePlan(),
    redo: bool = False,
    report: bool = True,
    log: Callable[[str], None] = print,
    attackers: AttackConfig = AttackConfig(),
) -> dict[str, Any]:
    """Run the determination on a run with trained models; return what ``targets.json`` holds.

    Per-mask results are kept in parts (``results/per_mask.parts/``): a relaunch
    continues them, and refuses parts computed from other inputs unless ``redo``.
    ``config.rank_mode``: ``full`` measures every mask on every selection image;
    ``adaptive`` races them on confidence bounds (:mod:`maskcrypt.determine.race`), keeping
    ``attack_top`` per bucket; ``auto`` picks adaptive above ``config.adaptive_above`` masked
    images per model. Needs a running Ray (the entry points start it).
    """
    require_ray("determine")
    started = time.perf_counter()
    d = open_determination(run, config, thresholds, settings, adaptive, redo, log)
    d.attack = attackers
    if attackers.attacker_weights:  # refused before any stage runs: the run's own model as "public" weights
        check_attacker_weights(attackers.attacker_weights, d.paths.models)
    t1, pm_counts = table1(d)
    buckets, _ = target_buckets(t1, thresholds)
    log(f"target buckets (first - second > {thresholds.t_gap:.2f}): "
        + (", ".join(d.labels[b] for b in buckets) if buckets else "none"))
    d.result.update({"thresholds": thresholds.to_dict(), "test_data": d.test_spec, "test_images": d.test_images,
                     "scoring": d.test.scoring, "splits": {s: d.test.probes(s) for s in d.splits},
                     "table1_mode": config.table1_mode, "rule": config.rule, "target_buckets": buckets,
                     "out_of_range_masks": d.out_of_range})
    if d.out_of_range:
        log(f"{d.out_of_range} mask(s) of the library lie outside every bucket (bucket -1): kept, counted, "
            "not measured")
    for stale in ("per_mask", "candidates", "table2", "table2_confirmation", "attacks"):
        (d.paths.results / f"{stale}.parquet").unlink(missing_ok=True)
    tables: dict[str, pd.DataFrame] = {}
    pm = None
    if config.rule == "basic":
        pm, _ = rank(d, d.present, pm_counts)
        passers, _ = basic_selection(pm, thresholds)
        if len(passers):  # the attack shows what inpainting does to the best of them (Table 2)
            tables = attack(d, passers, sorted(int(b) for b in passers["bucket"].unique()))
    elif buckets:
        pm, _ = rank(d, buckets, pm_counts)
        tables = attack(d, pm, buckets)
    decision = choose(d, t1, tables, pm)
    found = evaluate_unlinkability(d, decision.ids) if attackers.unlinkability and tables else None
    if found is not None:
        d.write(found, "unlinkability")
    else:  # off, skipped or nothing attacked: no earlier table looks current
        for stale in ("unlinkability.parquet", PICTURE):
            (d.paths.results / stale).unlink(missing_ok=True)
    d.timings["total"] = time.perf_counter() - started
    result = write_targets(d, decision, tables)

    verify_determination(d.run, d.test_spec, d.settings, log)  # when the test source has pairs
    if report:

        write_report(d.run, d.test, log=log)
    return result


def format_table1(t1: pd.DataFrame) -> str:
    lines = [f"{'bucket':>12} {'first (E)':>16} {'second (O)':>16} {'gap':>7}  target"]
    for r in t1.itertuples():
        lines.append(f"{r.range:>12} {r.first:8.2%} ±{r.first_std:5.2%} {r.second:8.2%} ±{r.second_std:5.2%} "
                     f"{r.gap:7.2%}  {'yes' if r.target else ''}")
    return "\n".join(lines)


def format_target(t: dict[str, Any]) -> str:
    """One line per target mask: its figures on the selection split, and on confirmation when held out."""
    if "fourth" not in t:  # the basic rule's masks beyond the attacked top of each bucket
        return (f"target mask {t['mask_id']} {t['range']}: E {t['third']:.2%} masked "
                f"[{t['third_lo']:.2%}, {t['third_hi']:.2%}], O {t['acc_O']:.2%} masked (not attacked)")
    line = (f"target mask {t['mask_id']} {t['range']}: E {t['fourth']:.2%} masked, {t['fifth']:.2%} inpainted "
            f"(drop {t['drop']:.2%} [{t['drop_lo']:.2%}, {t['drop_hi']:.2%}]); "
            f"O {t.get('O_masked', float('nan')):.2%} masked, {t.get('O_inpainted', float('nan')):.2%} inpainted")
    if t.get("worst_attacker"):
        line += f"; worst attacker {t['worst_attacker']} {t['worst_accuracy']:.2%}"
    c = t.get("confirmation")
    if c:
        line += (f"\n    on the confirmation split: E {c['fourth']:.2%} masked, {c['fifth']:.2%} inpainted "
                 f"(drop {c['drop']:.2%}); O {c.get('O_masked', float('nan')):.2%} masked, "
                 f"{c.get('O_inpainted', float('nan')):.2%} inpainted"
                 + (f"; worst attacker {c['worst_attacker']} {c['worst_accuracy']:.2%}" if c.get("worst_attacker")
                    else ""))
    return line
