"""The determination stage end to end on the tiny trained run: tables, targets, resume, the empty path."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DATA, TINY_SIZE
from plain_loops import open_set_reference

from maskcrypt.config import AdaptivePlan, AttackConfig, DetermineConfig, EvalSettings
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data import load
from maskcrypt.determine.inputs import open_determination
from maskcrypt.determine.race import evaluate_adaptive
from maskcrypt.determine.stage import determine as run_determination
from maskcrypt.evaluation.testset import prepare_test
from maskcrypt.masks import MaskLibrary, mask_sha256, overlay, unpack_masks
from maskcrypt.models import Recognizer
from maskcrypt.selection.rules import Thresholds

#: One evaluation actor: each stage's actor start (a torch import) is most of a tiny determination's time; the
#: split of work over several actors is tested in tests/local_ray/test_evaluate.py and tests/cluster/test_multinode.py.
FP32 = EvalSettings(actors=1, masks_per_batch=4, images_per_chunk=32, precision="fp32")
#: Loose thresholds so the tiny models pass every rule and the whole path runs (targets exist: the shared
#: determined run's fixture asserts it with the same thresholds).
LOOSE = Thresholds(t_gap=0.0, t_drop=0.0, t_enc=0.0, t_orig=1.0, top_k=2, attack_top=3)


def _quiet(*_):
    return None


#: The attackers that need no training: the trained ones (and the default set) run in the shared determined run's
#: fixture and tests/local_ray/test_attack.py, once per session.
UNTRAINED = AttackConfig(attackers="telea+O,ns+O", ladder="off", linkage=False)


def determine(run, thresholds, settings=FP32, adaptive=AdaptivePlan(), redo=False, report=True, log=_quiet,
              attackers=UNTRAINED, **config):
    """The determination on the tiny test data with ``config`` (DetermineConfig fields)."""
    return run_determination(run, DetermineConfig(test_data=TINY_DATA, **config), thresholds, settings, adaptive,
                             redo=redo, report=report, log=log, attackers=attackers)


def test_determination_writes_every_table_consistent_targets_and_the_report(determined_run):
    """The shared determined run's outputs (LOOSE thresholds, one repetition, default attackers, report)."""
    run, result = determined_run
    t1 = pd.read_parquet(run / "results" / "table1.parquet")
    assert t1["bucket"].tolist()[0] == 0 and (t1["repeats"] == 1).all() and (t1["mode"] == "sampled").all()
    assert (t1["n"] == result["splits"]["selection"]).all()  # Table 1 sees only the selection split
    pm = pd.read_parquet(run / "results" / "per_mask.parquet")
    assert set(pm["bucket"]) == set(result["target_buckets"]) and (pm["n"] == result["splits"]["selection"]).all()
    t2 = pd.read_parquet(run / "results" / "table2.parquet")
    assert (t2.groupby("bucket").size() <= 3).all() and {"drop", "drop_lo", "drop_hi", "O_inpainted"} <= set(t2)
    t2c = pd.read_parquet(run / "results" / "table2_confirmation.parquet")
    assert t2c["mask_id"].tolist() == t2["mask_id"].tolist()
    assert (t2c["n"] == result["splits"]["confirmation"]).all() and result["splits"]["confirmation"] > 0
    on_disk = json.loads((run / "targets.json").read_text())
    assert on_disk["targets"] == result["targets"]
    assert result["scoring"] == "closed" and result["throughput"]["per_mask_images_per_s"] > 0
    report = (run / "report.md").read_text()
    assert "Table 1" in report and (run / "results" / "table1.png").stat().st_size > 1000
    assert (run / "results" / "table2.png").exists()
    assert result["targets"], result["reason"]
    targets = pq.read_table(run / "targets.parquet")
    assert targets.column("mask_id").to_pylist() == [t["mask_id"] for t in result["targets"]]
    masks = unpack_masks(targets.column("bits").to_pylist(), TINY_SIZE, TINY_SIZE)
    assert [mask_sha256(m) for m in masks] == [t["sha256"] for t in result["targets"]]
    fourths = [t["fourth"] for t in result["targets"]]
    assert fourths == sorted(fourths, reverse=True)  # best first
    assert all(t["confirmation"]["n"] == result["splits"]["confirmation"] for t in result["targets"])
    assert result["training_pool_overlap"] == 0 and not any(t["in_training_pool"] for t in result["targets"])
    assert (run / "results" / "targets.png").exists() and "confirmation" in report
    attacks = pd.read_parquet(run / "results" / "attacks.parquet")
    assert set(attacks["attacker"]) == {"O", "R+O", "telea+O", "ns+O", "adaptive-family", "adaptive-family+R"}
    assert "## What an attacker gets" in report
    assert all(t["worst_attacker"] in set(attacks["attacker"]) for t in result["targets"])


def test_resume_gives_the_tables_of_an_uninterrupted_run_and_other_inputs_are_refused(tiny_run):
    run, _ = tiny_run
    th = Thresholds(t_gap=0.0, t_drop=0.0, top_k=2, attack_top=2)
    kw = {"repeats": 1, "per_mask": "all", "settings": FP32, "redo": True, "report": False, "log": _quiet}
    determine(run, th, **kw)
    whole = {n: pd.read_parquet(run / "results" / f"{n}.parquet") for n in ("per_mask", "table2", "table1")}
    parts = sorted((run / "results" / "per_mask.parts").glob("part-*.parquet"))
    assert len(parts) >= 2
    for p in parts[: len(parts) // 2]:  # as if the job had been stopped half way
        p.unlink()
    for n in whole:
        (run / "results" / f"{n}.parquet").unlink()
    lines: list[str] = []
    again = determine(run, th, **{**kw, "redo": False, "log": lines.append})
    assert any("already evaluated" in line for line in lines)
    tp = again["throughput"]  # measured over the masks evaluated now, not the resumed ones
    assert 0 < tp["resumed_masks"] < len(whole["per_mask"]) and tp["per_mask_images_per_s"] > 0
    for n, df in whole.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / "results" / f"{n}.parquet"), df, check_like=True)
    with pytest.raises(MaskcryptError, match=r"other inputs or settings \(differ: confirm_fraction\).*--redetermine"):
        determine(run, th, **{**kw, "redo": False, "confirm_fraction": 0.25})


def test_full_table1_mode_uses_every_mask_and_feeds_the_per_mask_stage(tiny_run):
    run, _ = tiny_run
    result = determine(run, LOOSE, table1_mode="full", confirm_fraction=0.0,
                       settings=FP32, redo=True, report=False, log=_quiet)
    t1 = pd.read_parquet(run / "results" / "table1.parquet").set_index("bucket")
    pm = pd.read_parquet(run / "results" / "per_mask.parquet")
    assert result["splits"] == {"selection": 18} and t1.loc[0, "repeats"] == 1
    assert result["throughput"]["per_mask_images_per_s"] is None  # Table 1 measured them: no rate to claim
    for b, grp in pm.groupby("bucket"):
        assert t1.loc[b, "repeats"] == len(grp)
        assert t1.loc[b, "first"] == pytest.approx(grp["third"].mean())
    assert not (run / "results" / "table2_confirmation.parquet").exists()


def test_adaptive_rank_mode_reports_its_rounds_and_measures_candidates_on_every_image(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("per_mask.parts", "targets.*"))
    result = determine(run, LOOSE, repeats=1, per_mask="all", rank_mode="adaptive",
                       adaptive=AdaptivePlan(first=3, growth=2.0), settings=FP32, redo=True, log=_quiet)
    ad = result["adaptive"]
    assert result["rank_mode"] == "adaptive" and ad["rounds"][-1]["open"] == 0
    assert 0 < ad["forward_passes"] <= ad["full_forward_passes"]
    assert ad["rounds"][0]["masks"] == len(pd.read_parquet(run / "results" / "per_mask.parquet"))
    cands = pd.read_parquet(run / "results" / "candidates.parquet")
    assert (cands["n"] == result["splits"]["selection"]).all()  # ranked on every selection image
    report = (run / "report.md").read_text()
    assert "Ranked adaptively" in report and f"{ad['forward_passes']:,} forward passes" in report
    assert "error probability 0.05" in report and not ad["reused"]
    # E alone raced: the same E counts as a race of E and O together on the same inputs; O measured afterwards
    # only on the attack list (each bucket's top attack_top, the candidates among them), equal to the joint race's O.
    pm = pd.read_parquet(run / "results" / "per_mask.parquet").set_index("mask_id").sort_index()
    d = open_determination(run, DetermineConfig(test_data=TINY_DATA, repeats=1, per_mask="all", rank_mode="adaptive"),
                           LOOSE,
                           FP32, AdaptivePlan(first=3, growth=2.0), redo=False, log=_quiet)
    joint, _ = evaluate_adaptive(d.library, d.test, d.models, d.present, keep=LOOSE.attack_top,
                                 plan=AdaptivePlan(first=3, growth=2.0), settings=FP32)
    joint = joint.set_index("mask_id").sort_index()
    assert pm[["n", "correct_E"]].equals(joint[["n", "correct_E"]].astype(pm[["n", "correct_E"]].dtypes))
    listed = pm["has_O"]
    assert listed.sum() == ad["o_masks"] == pm.groupby("bucket").size().clip(upper=LOOSE.attack_top).sum()
    assert (pm.loc[listed, "n"] == result["splits"]["selection"]).all() and not listed.all()
    assert set(cands["mask_id"]) <= set(pm.index[listed])
    assert (pm.loc[listed, "correct_O"] == joint.loc[listed, "correct_O"]).all()
    assert ad["forward_passes"] == ad["forward_passes_E"] + ad["forward_passes_O"]
    # A relaunch with the same inputs (e.g. other t_enc/t_orig) reuses the race and sampled Table 1, not re-races.
    before = pd.read_parquet(run / "results" / "per_mask.parquet")
    lines: list[str] = []
    again = determine(run, LOOSE, repeats=1, per_mask="all", rank_mode="adaptive",
                      adaptive=AdaptivePlan(first=3, growth=2.0), settings=FP32, report=False, log=lines.append)
    assert again["adaptive"]["reused"] and again["adaptive"]["rounds"] == ad["rounds"]
    assert any("reused the race" in line for line in lines) and any("table1:" in line and "(reused" in line
                                                                    for line in lines)
    pd.testing.assert_frame_equal(pd.read_parquet(run / "results" / "per_mask.parquet"), before)
    assert again["throughput"]["per_mask_images_per_s"] is None  # nothing measured now: no rate to claim


def test_no_target_bucket_is_reported_with_the_closest_values(tiny_run):
    run, _ = tiny_run
    result = determine(run, Thresholds(t_gap=1.0), repeats=1, settings=FP32, redo=True,
                       log=_quiet)
    assert result["targets"] == [] and result["target_buckets"] == []
    assert result["reason"]["rule"] == "t_gap" and result["reason"]["closest"]
    assert not (run / "targets.parquet").exists() and not (run / "results" / "per_mask.parquet").exists()
    assert json.loads((run / "targets.json").read_text())["reason"]["rule"] == "t_gap"
    assert "None. Rule `t_gap`" in (run / "report.md").read_text()


def test_missing_checkpoint_is_named(tiny_run, tmp_path):
    run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("inpainter"))
    with pytest.raises(MaskcryptError, match="inpainter"):
        determine(copy, LOOSE, settings=FP32, log=_quiet)


def test_open_set_determination_runs_every_stage(tiny_run):
    """Open-set scoring through every stage; its per-mask figures equal a plain loop on the same images.

    The ranking is the adaptive race on two actors, in steps of 3, 6 and 12 probes: several rounds, so a mask's
    later rounds must find the masked-gallery centroids its first round left on its actor. The passes the actors
    report are checked by hand: each measured mask's probes plus its gallery once.
    """
    run, _ = tiny_run
    # Linkage on: the open-set path of it (the test set's own gallery) end to end.
    result = determine(run, LOOSE, repeats=1, scoring="open", enroll=1, rank_mode="adaptive",
                       adaptive=AdaptivePlan(first=3, growth=2.0), confirm_fraction=0.0,
                       settings=dataclasses.replace(FP32, actors=2), redo=True, report=False, log=_quiet,
                       attackers=AttackConfig(attackers="telea+O,ns+O", ladder="off"))
    assert result["scoring"] == "open" and result["splits"] == {"selection": 12}  # 6 identities x (3 - 1)
    race, gallery = result["adaptive"], 6  # one enrolled photo of each of the 6 identities
    pm = pd.read_parquet(run / "results" / "per_mask.parquet")
    assert len(race["rounds"]) >= 3 and result["rank_mode"] == "adaptive"
    assert race["forward_passes_E"] == int(pm["n"].sum()) + gallery * len(pm)  # every measured mask's gallery once
    assert race["gallery_passes_E"] == gallery * len(pm)
    assert race["forward_passes_O"] == race["o_masks"] * 12 + gallery * 2  # O's clean gallery: once per actor
    assert race["full_forward_passes"] == len(pm) * (2 * 12 + gallery) + gallery * 2
    t2 = pd.read_parquet(run / "results" / "table2.parquet")
    assert (t2["n"] == 12).all() and t2["O_inpainted"].between(0, 1).all()
    # The same test set as the stage built (same spec, enroll, seed), and E and O from the run's checkpoints.
    models = {k: Recognizer.from_checkpoint(run / "models" / role).eval()
              for k, role in (("E", "encrypted"), ("O", "original"))}
    raw = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    meta = models["E"].checkpoint_meta
    ts = prepare_test(raw.images, raw.labels, raw.class_names, meta["class_names"], scoring="open",
                      confirm_fraction=0.0, enroll=1, seed=0, trained_classes=meta.get("trained_classes"))
    lib = MaskLibrary.open(str(run / "masks"))
    # Every mask the race measured on all 12 probes has full mode's count (a plain loop over the same images).
    complete = pm[pm["n"] == 12]
    assert len(complete) >= len(t2)
    for row in complete.itertuples():
        want = open_set_reference(models, ts, lib.get([row.mask_id]).masks[0])
        assert round(row.third * 12) == want["E"]["selection"], row.mask_id
    pm = pm.set_index("mask_id")
    checked = 0
    for row in t2.itertuples():
        want = open_set_reference(models, ts, lib.get([row.mask_id]).masks[0])
        # E under the mask, probes against a gallery masked the same way (the third and fourth accuracy) ...
        assert round(row.fourth * row.n) == want["E"]["selection"], row.mask_id
        assert round(pm.loc[row.mask_id, "third"] * pm.loc[row.mask_id, "n"]) == want["E"]["selection"]
        # ... and O on the masked probes against its clean gallery (the attacker's view)
        assert round(row.O_masked * row.n) == want["O"]["selection"], row.mask_id
        checked += 1
    assert checked == len(t2) > 0
    # Linkage: the victims' gallery is the test set's own (one photo each), their probes the rest; E's Recall@1
    # under the first attacked mask recomputed in process (masked probes, clean gallery, nearest photo).
    info = result["attack"]["linkage"]
    link = pd.read_parquet(run / "results" / "linkage.parquet")
    victims = np.isin(np.asarray(ts.classes)[ts.labels], info["victims"])
    assert (info["gallery"], info["probes"]) == (3, 6) and set(link["split"]) == {"selection"}
    mid = link["mask_id"].iloc[0]
    mask = torch.from_numpy(lib.get([mid]).masks[0])
    x = torch.from_numpy(ts.images)
    g, p = np.flatnonzero(ts.gallery & victims), np.flatnonzero(~ts.gallery & victims)
    with torch.inference_mode():
        ge = F.normalize(models["E"].embed(x[g]), dim=1)
        pe = F.normalize(models["E"].embed(overlay(x[p], mask)), dim=1)
    want_recall = (ts.labels[g][(pe @ ge.T).argmax(1).numpy()] == ts.labels[p]).mean()
    row = link[(link["mask_id"] == mid) & (link["model"] == "E")].iloc[0]
    assert row["recall_at_1"] == pytest.approx(want_recall) and (row["n_probes"], row["n_gallery"]) == (6, 3)


def test_every_artifact_names_the_same_targets_when_the_basic_form_rejects_a_candidate(determined_run, tmp_path):
    """table2.parquet, table2_confirmation.parquet, targets.json and report.md agree: one decision.

    Thresholds are set from the shared run's own Table 2 so that at least one candidate whose
    drop passes t_drop fails the basic form (its E accuracy is at or below t_enc).
    """
    import dataclasses

    src, _ = determined_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    loose = json.loads((src / "targets.json").read_text())["thresholds"]
    t2 = pd.read_parquet(src / "results" / "table2.parquet")
    cands = t2[(t2["rank"] <= loose["top_k"]) & (t2["drop"] > loose["t_drop"])].sort_values("fourth")
    th = dataclasses.replace(Thresholds(**loose), t_enc=float(cands["fourth"].iloc[0]))
    assert (cands["fourth"] > th.t_enc).any() and (cands["fourth"] <= th.t_enc).any(), cands
    result = determine(run, th, repeats=1)
    chosen = [t["mask_id"] for t in result["targets"]]
    rejected = set(cands.loc[cands["fourth"] <= th.t_enc, "mask_id"])
    assert chosen and not rejected & set(chosen)
    for name in ("table2", "table2_confirmation"):
        marked = pd.read_parquet(run / "results" / f"{name}.parquet")
        assert set(marked.loc[marked["target"], "mask_id"]) == set(chosen), name
    report = (run / "report.md").read_text()
    section = report[report.index("## Target masks"):]
    table2_section = report[report.index("## Table 2"):report.index("## Target masks")]
    table2_rows = [line for line in table2_section.split("\n") if line.startswith("| ") and line.endswith(" | yes |")]
    assert sorted(line.split(" | ")[2] for line in table2_rows) == sorted(chosen)
    assert all(m in section for m in chosen) and not any(m in section for m in rejected)


@pytest.mark.parametrize("rule", ["t_drop", "t_enc", "t_orig"])
def test_each_rule_that_empties_the_set_is_named(determined_run, rule):
    """The shared run's own tables, thresholds that force one rule to reject every candidate."""
    import dataclasses

    from maskcrypt.selection.rules import decide

    src, _ = determined_run
    t1 = pd.read_parquet(src / "results" / "table1.parquet")
    t2 = pd.read_parquet(src / "results" / "table2.parquet").drop(columns=["target", "candidate"])
    loose = Thresholds(**json.loads((src / "targets.json").read_text())["thresholds"])
    th = dataclasses.replace(loose, **{"t_drop": {"t_drop": 1.0}, "t_enc": {"t_enc": 1.0},
                                       "t_orig": {"t_orig": 0.0}}[rule])
    decision = decide(t1, t2, th)
    assert decision.ids == [] and decision.reason.rule == rule and decision.reason.closest


def test_basic_rule_and_masks_outside_every_bucket(determined_run, tmp_path):
    """--rule basic picks every mask with E > t_enc and O < t_orig; a bucket -1 mask is counted, not measured."""
    import numpy as np

    from maskcrypt.masks import MaskLibrary

    src, _ = determined_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("per_mask.parts"))
    outside = np.zeros((1, TINY_SIZE, TINY_SIZE), np.uint8)
    outside[0, :3] = 1  # 81% occluded: beyond (0.5,0.6]
    MaskLibrary.open(str(run / "masks")).append([(outside, ["far-out"], ["test"])])
    th = Thresholds(t_enc=0.0, t_orig=1.0, t_gap=0.0, t_drop=0.0, top_k=2, attack_top=2, confidence=0.9)
    result = determine(run, th, repeats=1, rule="basic", confirm_fraction=0.0)
    pm = pd.read_parquet(run / "results" / "per_mask.parquet")
    passing = pm[(pm["third"] > th.t_enc) & (pm["acc_O"] < th.t_orig)]
    assert len(pm) == 24 and "far-out" not in set(pm["mask_id"])  # every bucketed mask
    assert sorted(t["mask_id"] for t in result["targets"]) == sorted(passing["mask_id"]) and result["rule"] == "basic"
    assert result["out_of_range_masks"] == 1
    report = (run / "report.md").read_text()
    assert "Rule `basic`" in report and "1 mask(s) lie outside every bucket" in report
    # Sentences follow the settings: the interval level, and how the masks were measured (full mode here).
    assert "paired 90% interval" in report and "95%" not in report
    assert "measured on every selection image" in report and "Ranked adaptively" not in report
