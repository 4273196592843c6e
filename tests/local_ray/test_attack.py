"""The attackers (maskcrypt.determine.attackers): the table, t_attack, training and resuming, against plain loops."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_DATA, TINY_SIZE

from maskcrypt.config import ATTACKERS, DEFAULT_ATTACKERS, AttackConfig
from maskcrypt.determine.attackers import train_attacker, train_attackers
from maskcrypt.determine.jobs import (
    folder_name,
    job_state,
    known_mask_job,
    load_attacker_data,
    make_job,
    masks_per_photo,
)
from maskcrypt.selection.attacks import COLUMNS, FIDELITY, FILLS, MASKED_GALLERY, attacker_counts
from maskcrypt.selection.rules import Thresholds, decide

SPLITS = ("selection", "confirmation")


def test_auto_trial_cpus_spreads_the_cpus_over_the_trials(ray_session):
    import ray

    from maskcrypt.determine.attackers import auto_trial_cpus

    cpus = int(ray.cluster_resources()["CPU"])
    assert auto_trial_cpus(1) == min(cpus, 8)  # a lone trial takes the node's CPUs, up to 8
    assert auto_trial_cpus(1, cap=1) == 1
    assert auto_trial_cpus(cpus) == 1 and auto_trial_cpus(10 * cpus) == 1  # side by side, one each
    assert auto_trial_cpus(max(1, cpus // 2)) == cpus // max(1, cpus // 2)


# -- trained attackers on the tiny run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attacked(determined_run, tmp_path_factory):
    """A copy of the determined run (its default attackers done) plus known-mask attackers of two attacked masks.

    The first mask's attacker is trained as if an earlier, interrupted launch had finished it; the relaunch
    (one Ray Tune run over both) must train only the second.
    """
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.models.checkpoint import find_checkpoint, sha256_file

    src, result = determined_run
    run = tmp_path_factory.mktemp("attacked") / "run"
    shutil.copytree(src, run)
    ids = list(dict.fromkeys(pd.read_parquet(run / "results" / "attacks.parquet")["mask_id"]))[:2]
    o_ckpt, o_meta = find_checkpoint(run / "models" / "original", kind="recognizer")
    data = load_attacker_data(TINY_DATA, o_meta, "closed")
    arrays = {"images": data["images"], "labels": data["labels"]}
    masks = MaskLibrary.open(str(run / "masks")).get(ids).masks
    k = masks_per_photo(find_checkpoint(run / "models" / "encrypted", kind="recognizer")[1])
    jobs = {m: known_mask_job(m, run / "models" / "attackers" / folder_name(m), mk, k, o_ckpt, o_meta, data, 1)
            for m, mk in zip(ids, masks)}
    assert [m["epoch"] for m in train_attacker(jobs[ids[0]], arrays)] == [1]  # the earlier launch
    first, _ = find_checkpoint(jobs[ids[0]]["folder"])
    before = sha256_file(first / "model.pt")
    lines: list[str] = []
    folders, record = train_attackers(jobs, arrays, run / "models" / "attackers" / ".tune", AttackConfig(epochs=1),
                                      lines.append)
    return SimpleNamespace(run=run, ids=ids, masks=masks, result=result, jobs=jobs, data=data, arrays=arrays,
                           o=(o_ckpt, o_meta), first=first, before=before, record=record, lines=lines,
                           trained={"family": run / "models" / "attackers" / "family",
                                    **{m: str(f) for m, f in folders.items()}})


def test_relaunch_retrains_no_finished_attacker_and_resumes_an_interrupted_one(attacked, tmp_path):
    from maskcrypt.models.checkpoint import find_checkpoint, sha256_file

    a, b = attacked.ids
    assert attacked.record["attackers"][a]["state"] == "done"
    assert attacked.record["attackers"][b]["state"] == "trained" and attacked.record["trials"] == 1
    ckpt, _ = find_checkpoint(attacked.jobs[a]["folder"])
    assert ckpt == attacked.first and sha256_file(ckpt / "model.pt") == attacked.before  # not retrained
    _, meta_b = find_checkpoint(attacked.jobs[b]["folder"])
    assert meta_b["attack_epochs"] == 1 and meta_b["attacker_data"] == TINY_DATA and meta_b["name"] == b
    assert meta_b["init_model_sha256"] == attacked.o[1]["model_sha256"] and meta_b["role"] == "attacker"
    # An attacker stopped after its first of two epochs resumes at the second (in process: no Ray needed).
    job = make_job("x", tmp_path / "x", attacked.masks[1][None], 1, *attacked.o, attacked.data, 2)
    gen = train_attacker(job, attacked.arrays)
    assert next(gen)["epoch"] == 1
    gen.close()
    assert job_state(job)[0] == "resume"
    again = list(train_attacker(job, attacked.arrays))
    assert [m["epoch"] for m in again] == [2] and again[0]["resumed"] and job_state(job)[0] == "done"
    # Other settings (here three epochs) make the old model stale: it is trained again, never reused.
    assert job_state(make_job("x", tmp_path / "x", attacked.masks[1][None], 1, *attacked.o, attacked.data,
                              3))[0] == "stale"


def _inpaint(r, masked, m, chunk=16):
    return torch.cat([r.inpaint(masked[s:s + chunk], m[None].expand(len(masked[s:s + chunk]), -1, -1))
                      for s in range(0, len(masked), chunk)])


def _cv2(images: torch.Tensor, mask: np.ndarray, flag: str) -> torch.Tensor:
    import cv2

    from maskcrypt.models.classical import RADIUS

    hole = ((mask == 0) * 255).astype(np.uint8)
    out = [cv2.inpaint(np.ascontiguousarray(x.numpy().transpose(1, 2, 0)), hole, RADIUS, getattr(cv2, flag))
           for x in images]
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


def _views(run, x, mask):
    """Every attacker's input images for one mask, the obvious way."""
    from maskcrypt.masks import overlay
    from maskcrypt.models import Inpainter

    m = torch.from_numpy(mask)
    masked = overlay(x, m)
    filled = _inpaint(Inpainter.from_checkpoint(run / "models" / "inpainter"), masked, m)
    return {"masked": masked, "R": filled, "telea": _cv2(masked, mask, "INPAINT_TELEA"),
            "ns": _cv2(masked, mask, "INPAINT_NS")}


#: attacker -> (model, input view)
PLAN = {"O": ("O", "masked"), "R+O": ("O", "R"), "telea+O": ("O", "telea"), "ns+O": ("O", "ns"),
        "adaptive-family": ("F", "masked"), "adaptive-family+R": ("F", "R"), "adaptive-known": ("K", "masked")}


def _fidelity(original: np.ndarray, filled: np.ndarray, hole: np.ndarray) -> list[float]:
    """PSNR and SSIM of one fill the maintained way (scikit-image), in FIDELITY's order."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    mean, full = structural_similarity(original, filled, data_range=255, channel_axis=0, full=True)
    return [min(peak_signal_noise_ratio(original[hole], filled[hole], data_range=255), 100.0), full[hole].mean(),
            min(peak_signal_noise_ratio(original, filled, data_range=255), 100.0), mean]


def _setting(attacked):
    from maskcrypt.config import EvalSettings
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.models import Recognizer

    run = attacked.run
    paths = {"E": run / "models" / "encrypted", "O": run / "models" / "original"}
    models = {"O": Recognizer.from_checkpoint(paths["O"]),
              "F": Recognizer.from_checkpoint(attacked.trained["family"])}
    known = {m: Recognizer.from_checkpoint(attacked.trained[m]) for m in attacked.ids}
    settings = EvalSettings(actors=1, masks_per_batch=1, images_per_chunk=16, precision="fp32")
    return MaskLibrary.open(str(run / "masks")), paths, models, known, settings


def test_every_attacker_counts_equal_a_plain_loop(attacked):
    from maskcrypt.data import load
    from maskcrypt.evaluation.crossproduct import evaluate_attack
    from maskcrypt.evaluation.testset import prepare_test

    lib, paths, models, known, settings = _setting(attacked)
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.5)
    got = evaluate_attack(lib, attacked.ids, ts, paths, attacked.run / "models" / "inpainter", splits=SPLITS,
                          settings=settings, attackers=ATTACKERS, trained=attacked.trained)
    long = attacker_counts(got).set_index(["mask_id", "split", "attacker"])
    assert sorted(set(long.index.get_level_values("attacker"))) == sorted(ATTACKERS)
    x, y, split = torch.from_numpy(ts.images), torch.from_numpy(ts.labels), torch.from_numpy(ts.split)
    for mid, mask in zip(attacked.ids, lib.get(attacked.ids).masks):
        views = _views(attacked.run, x, mask)
        for attacker, (who, view) in PLAN.items():
            model = known[mid] if who == "K" else models[who]
            with torch.inference_mode():
                hit = model(views[view]).argmax(1) == y
            for k, s in enumerate(SPLITS):
                assert long.loc[(mid, s, attacker), "correct"] == int(hit[split == k].sum()), (mid, s, attacker)
        # Each fill's fidelity, per split: the mean over the probes of scikit-image's PSNR and SSIM, image by image.
        hole = np.broadcast_to(mask[None] == 0, x.shape[1:])
        for attacker, fill in FILLS.items():
            ours = [_fidelity(x[i].numpy(), views[fill][i].numpy(), hole) for i in range(len(x))]
            for k, s in enumerate(SPLITS):
                expected = np.mean([o for o, sp in zip(ours, ts.split) if sp == k], axis=0)
                got_row = long.loc[(mid, s, attacker), list(FIDELITY)].to_numpy(float)
                assert np.allclose(got_row, expected, rtol=0, atol=1e-6), (mid, s, attacker, got_row, expected)
        assert long.loc[(mid, "selection", "O"), list(FIDELITY)].isna().all()  # O fills nothing
    cost = got.groupby("mask_id")[["forward_passes", "fills_R", "fills_classical"]].sum()
    assert (cost["forward_passes"] > 0).all() and (cost["fills_classical"] == 2 * len(y)).all()
    assert (cost["fills_R"] == len(y)).all()


def test_open_set_attackers_use_clean_galleries_and_the_known_mask_also_a_masked_one(attacked):
    import torch.nn.functional as F

    from maskcrypt.data import load
    from maskcrypt.evaluation.crossproduct import evaluate_attack
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import overlay

    lib, paths, models, known, settings = _setting(attacked)
    other = load("synthetic:identities=4,per_identity=8,seed=7#split=all", size=TINY_SIZE)
    ts = prepare_test(other.images, other.labels, other.class_names, other.class_names, scoring="open", enroll=2,
                      confirm_fraction=0.5)
    got = evaluate_attack(lib, attacked.ids, ts, paths, attacked.run / "models" / "inpainter", splits=SPLITS,
                          settings=settings, attackers=ATTACKERS, trained=attacked.trained)
    long = attacker_counts(got).set_index(["mask_id", "split", "attacker"])
    x, y, g = torch.from_numpy(ts.images), torch.from_numpy(ts.labels), torch.from_numpy(ts.gallery)
    split = torch.from_numpy(ts.split[~ts.gallery])

    def hits(model, gallery_images, probe_images):
        with torch.inference_mode():
            emb = F.normalize(model.embed(gallery_images), dim=1)
            cent = F.normalize(torch.zeros(len(ts.classes), emb.shape[1]).index_add_(0, y[g], emb), dim=1)
            return (F.normalize(model.embed(probe_images), dim=1) @ cent.T).argmax(1) == y[~g]

    for mid, mask in zip(attacked.ids, lib.get(attacked.ids).masks):
        views = _views(attacked.run, x[~g], mask)
        want = {a: hits(known[mid] if who == "K" else models[who], x[g], views[view])
                for a, (who, view) in PLAN.items()}
        want[MASKED_GALLERY] = hits(known[mid], overlay(x[g], torch.from_numpy(mask)), views["masked"])
        for attacker, hit in want.items():
            for k, s in enumerate(SPLITS):
                assert long.loc[(mid, s, attacker), "correct"] == int(hit[split == k].sum()), (mid, s, attacker)


def test_determination_writes_attacks_and_every_artifact_agrees_with_it(attacked):
    from maskcrypt.data import load
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.reporting.report import write_report

    run, result = attacked.run, attacked.result
    table = pd.read_parquet(run / "results" / "attacks.parquet")
    assert list(table.columns) == COLUMNS
    t2 = {s: pd.read_parquet(run / "results" / f"table2{'' if s == 'selection' else '_' + s}.parquet")
          for s in SPLITS}
    for (mid, s), rows in table.groupby(["mask_id", "split"]):
        assert rows["attacker"].tolist() == list(DEFAULT_ATTACKERS)  # the default attackers, in report order
        best = rows.loc[rows["accuracy"].idxmax()]
        assert (rows["worst_accuracy"] == best["accuracy"]).all() and rows["n"].nunique() == 1
        assert t2[s].set_index("mask_id").loc[mid, "worst_accuracy"] == best["accuracy"]
    assert set(table["mask_id"]) == set(t2["selection"]["mask_id"])
    # Intervals over people: the split's probe identities, a design effect >= 1, the interval from both.
    from maskcrypt.core.stats import clustered_wilson

    assert (table["identities"] == 6).all() and (table["deff"] >= 1).all()
    lo, hi = clustered_wilson(table["correct"], table["n"], table["deff"], table["identities"])
    assert np.allclose(lo, table["accuracy_lo"]) and np.allclose(hi, table["accuracy_hi"])
    for t in result["targets"]:  # targets.json carries each target's attacker figures
        for s in SPLITS:
            for a, fig in t["attackers"][s]["attackers"].items():
                row = table[(table["mask_id"] == t["mask_id"]) & (table["split"] == s) & (table["attacker"] == a)]
                assert (fig["n"], fig["correct"]) == (int(row["n"].iloc[0]), int(row["correct"].iloc[0]))
    record = json.loads((run / "run.json").read_text())["stages"]["determine"]["attack"]
    epochs = AttackConfig().epochs
    assert record["config"]["epochs"] == epochs and record["data"] == TINY_DATA and record["trained"]["family"]
    assert json.loads((run / "models" / "attackers" / "family" / sorted(
        p.name for p in (run / "models" / "attackers" / "family").glob("checkpoint_*"))[-1] / "meta.json").read_text(
    ))["attack_epochs"] == epochs
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.5)
    report = write_report(run, ts, log=lambda *_: None).read_text()
    assert report.index("## What an attacker gets") < report.index("## Table 2")
    assert "Attack stage:" in report and (run / "results" / "attacks.png").stat().st_size > 1000
    ladder = report.index("## What an attacker gets with N photos")
    section = report[report.index("## What an attacker gets"):ladder]
    assert ladder < report.index("## Table 2") and (run / "results" / "attacker_ladder.png").stat().st_size > 1000
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == len(result["targets"]) * len(DEFAULT_ATTACKERS)
    assert "fidelity, not privacy" in section

    def cell(mid, split, attacker):
        r = table[(table["mask_id"] == mid) & (table["split"] == split) & (table["attacker"] == attacker)].iloc[0]
        text = f"{100 * r.accuracy:.2f} [{100 * r.accuracy_lo:.2f}, {100 * r.accuracy_hi:.2f}]"
        return text + (" **worst**" if r.worst_attacker == attacker else "")

    for mask, _, attacker, sel, conf, *fidelity in rows:
        mid = re.sub("`", "", mask)
        assert (sel, conf) == (cell(mid, "selection", attacker), cell(mid, "confirmation", attacker))
        assert len(fidelity) == len(FIDELITY) and all(bool(f) == (attacker in FILLS) for f in fidelity)
        if attacker in FILLS:  # "selection / confirmation" of each figure
            r = table[(table["mask_id"] == mid) & (table["attacker"] == attacker)].set_index("split")
            assert fidelity[1] == f"{r.loc['selection', 'ssim_hole']:.3f} / {r.loc['confirmation', 'ssim_hole']:.3f}"


def test_t_attack_on_the_determined_tables(attacked):
    run = attacked.run
    t1, t2 = (pd.read_parquet(run / "results" / f"{n}.parquet") for n in ("table1", "table2"))
    th = Thresholds(**json.loads((run / "targets.json").read_text())["thresholds"])
    base = decide(t1, t2, th).ids
    assert base == [t["mask_id"] for t in attacked.result["targets"]]
    strict = float(t2.set_index("mask_id").loc[base, "worst_accuracy"].min())
    tighter = decide(t1, t2, dataclasses.replace(th, t_attack=strict)).ids
    assert set(tighter) < set(base) and all(
        t2.set_index("mask_id").loc[m, "worst_accuracy"] < strict for m in tighter)
    assert decide(t1, t2, dataclasses.replace(th, t_attack=0.0)).reason.rule == "t_attack"


def test_the_attacker_pool_is_disjoint_from_every_other_pool(attacked):
    from maskcrypt.masks import MaskLibrary

    pools = [set(MaskLibrary.open(str(attacked.run / p)).column("sha256"))
             for p in ("masks", "masks_train", "masks_heldout", "masks_attacker")]
    assert len(pools[3]) == 120
    assert all(pools[3].isdisjoint(p) for p in pools[:3])



def test_the_attacker_ladder_counts_equal_a_plain_loop_with_nested_rungs_of_equal_steps(attacked):
    """``results/attacker_ladder.parquet`` of the determined run (TINY_LADDER): rung 0 is O's count and the top rung
    the family attacker's (attacks.parquet); the middle rungs' models counted the obvious way; every rung trained
    on the nested, stratified photos for the same number of samples."""
    from conftest import TINY_LADDER

    from maskcrypt.data import load
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary, overlay
    from maskcrypt.models import Recognizer
    from maskcrypt.models.checkpoint import find_checkpoint
    from maskcrypt.selection.ladder import COLUMNS as LADDER_COLUMNS
    from maskcrypt.selection.ladder import photo_order, rung_rows

    run = attacked.run
    table = pd.read_parquet(run / "results" / "attacker_ladder.parquet")
    total = len(attacked.data["labels"])
    middle = [int(p) for p in TINY_LADDER.split(",")[:-1]]
    assert list(table.columns) == LADDER_COLUMNS and sorted(table["photos"].unique()) == [0, *middle, total]
    attacks = pd.read_parquet(run / "results" / "attacks.parquet").set_index(["mask_id", "split", "attacker"])
    for r in table[table["photos"].isin([0, total])].itertuples():
        who = "O" if r.photos == 0 else "adaptive-family"
        assert (r.n, r.correct) == tuple(attacks.loc[(r.mask_id, r.split, who), ["n", "correct"]]), r
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.5)
    x, y, split = torch.from_numpy(ts.images), torch.from_numpy(ts.labels), torch.from_numpy(ts.split)
    ids = list(dict.fromkeys(table["mask_id"]))
    masks = dict(zip(ids, MaskLibrary.open(str(run / "masks")).get(ids).masks))
    samples = set()
    for photos in middle:
        folder = run / "models" / "attackers" / "ladder" / str(photos)
        model = Recognizer.from_checkpoint(folder)
        _, meta = find_checkpoint(folder)
        assert meta["photos"] == photos and meta["init_model_sha256"] == attacked.o[1]["model_sha256"]
        samples.add(meta["history"][-1]["samples"])
        for mid in ids:
            with torch.inference_mode():
                hit = model(overlay(x, torch.from_numpy(masks[mid]))).argmax(1) == y
            for k, s in enumerate(SPLITS):
                row = table[(table["mask_id"] == mid) & (table["split"] == s) & (table["photos"] == photos)]
                assert int(row["correct"].iloc[0]) == int(hit[split == k].sum()), (photos, mid, s)
    _, family = find_checkpoint(run / "models" / "attackers" / "family")
    assert samples == {family["history"][-1]["samples"]}  # the same optimizer steps on every rung
    order = photo_order(attacked.data["labels"], int(attacked.o[1]["train_config"]["seed"]))
    small, large = (set(rung_rows(order, p, total).tolist()) for p in middle)
    assert len(small) == middle[0] and small < large  # nested
    per_identity = np.bincount(attacked.data["labels"][sorted(small)])
    assert per_identity.max() - per_identity[per_identity > 0].min() <= 1 and (per_identity > 0).sum() == 6


def test_linkage_of_unseen_victims_equals_a_plain_loop_and_its_embedder_never_saw_a_victim(attacked):
    """``results/linkage.parquet`` of the determined run: Recall@1 of each model recomputed in process (masked
    probes, clean gallery, nearest photo), the TARs empty on a set this small, and the embedder's photos."""
    import torch.nn.functional as F

    from maskcrypt.data import load
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary, overlay
    from maskcrypt.models import Recognizer
    from maskcrypt.models.checkpoint import find_checkpoint
    from maskcrypt.verification.linkage import COLUMNS as LINKAGE_COLUMNS
    from maskcrypt.verification.linkage import victim_layout

    run = attacked.run
    info = json.loads((run / "targets.json").read_text())["attack"]["linkage"]
    table = pd.read_parquet(run / "results" / "linkage.parquet")
    assert list(table.columns) == LINKAGE_COLUMNS and set(table["model"]) == {"linkage", "O", "E"}
    _, meta = find_checkpoint(run / "models" / "attackers" / "linkage")
    assert meta["init"] == "random" and meta["init_model_sha256"] is None
    assert len(info["victims"]) == 3 and not set(meta["trained_classes"]) & set(info["victims"])
    assert meta["photos"] == info["photos"] > 0 and len(meta["class_names"]) == info["attacker_identities"]
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.5)
    lay = victim_layout(ts.labels, ts.split, ts.gallery, ts.classes, info["victims"], 2, info["seed"])
    assert {ts.classes[i] for i in ts.labels[lay.probes]} <= set(info["victims"])
    x = torch.from_numpy(ts.images)
    models = {"linkage": Recognizer.from_checkpoint(run / "models" / "attackers" / "linkage"),
              "O": Recognizer.from_checkpoint(run / "models" / "original"),
              "E": Recognizer.from_checkpoint(run / "models" / "encrypted")}
    ids = list(dict.fromkeys(table["mask_id"]))
    g_labels, p_labels = ts.labels[lay.gallery], ts.labels[lay.probes]
    for mid, mask in zip(ids, MaskLibrary.open(str(run / "masks")).get(ids).masks):
        for name, model in models.items():
            with torch.inference_mode():
                g = F.normalize(model.embed(x[lay.gallery]), dim=1)
                p = F.normalize(model.embed(overlay(x[lay.probes], torch.from_numpy(mask))), dim=1)
            nearest = g_labels[(p @ g.T).argmax(1).numpy()]
            for k, s in enumerate(SPLITS):
                sel = lay.probe_split == k
                row = table[(table["mask_id"] == mid) & (table["split"] == s) & (table["model"] == name)].iloc[0]
                assert row["recall_at_1"] == pytest.approx((nearest[sel] == p_labels[sel]).mean()), (mid, s, name)
                assert row["n_probes"] == sel.sum() and row["n_gallery"] == len(lay.gallery)
                assert row["recall_at_1_chance"] == 1 / 3
    assert table["tar_at_far_1e-2"].isna().all() and (table["impostor_pairs"] < 1000).all()  # too few to resolve
    # Recall@1's interval is over the victims (probes clustered by person), around the figure.
    assert (table["recall_at_1_lo"] <= table["recall_at_1"]).all()
    assert (table["recall_at_1"] <= table["recall_at_1_hi"]).all()
    assert table["victims"].between(1, 3).all() and (table["deff"] >= 1).all()  # victims probed in the split


def test_a_ladder_without_the_family_attackers_counts_its_top_rung_with_the_family_model_once(attacked, tmp_path):
    """Re-determining a copy with only telea+O asked and the ladder on: every attacker is complete (nothing
    trains), the top rung is the family model's count under its own column, and no adaptive-family row exists."""
    from conftest import TINY_LADDER

    from maskcrypt.config import DetermineConfig, EvalSettings
    from maskcrypt.determine.stage import determine

    run = tmp_path / "run"
    shutil.copytree(attacked.run, run)
    before = pd.read_parquet(run / "results" / "attacker_ladder.parquet")
    loose = Thresholds(**json.loads((run / "targets.json").read_text())["thresholds"])
    result = determine(run, DetermineConfig(test_data=TINY_DATA, repeats=1), loose,
                       EvalSettings(precision="fp32", actors=1), log=lambda *_: None, report=False,
                       attackers=AttackConfig(attackers="telea+O", ladder=TINY_LADDER, linkage=False))
    assert {r["state"] for r in result["attack"]["training"]["attackers"].values()} == {"done"}
    assert "adaptive-family" not in set(pd.read_parquet(run / "results" / "attacks.parquet")["attacker"])
    after = pd.read_parquet(run / "results" / "attacker_ladder.parquet")
    key = ["mask_id", "split", "photos"]
    pd.testing.assert_frame_equal(after.sort_values(key).reset_index(drop=True),
                                  before.sort_values(key).reset_index(drop=True))
    assert not (run / "results" / "linkage.parquet").exists()  # turned off: no earlier table looks current


def test_leak_guards_refuse_the_runs_own_weights_and_test_images_as_attacker_data(attacked, tmp_path):
    """`--attacker-weights` = O's own model.pt stops the determination before any stage, naming the file; attacker
    data that are the test images stop the attackers' training with a count (nothing trains)."""
    from maskcrypt.config import AdaptivePlan, DetermineConfig, EvalSettings
    from maskcrypt.core.errors import MaskcryptError
    from maskcrypt.determine.attackers import train_for
    from maskcrypt.determine.inputs import open_determination
    from maskcrypt.determine.stage import determine

    run = tmp_path / "run"
    shutil.copytree(attacked.run, run, ignore=shutil.ignore_patterns("attackers"))
    loose = Thresholds(**json.loads((run / "targets.json").read_text())["thresholds"])
    config, settings = DetermineConfig(test_data=TINY_DATA, repeats=1), EvalSettings(precision="fp32", actors=1)
    own = sorted((run / "models" / "original").rglob("model.pt"))[-1]
    before = (run / "results" / "table1.parquet").stat().st_mtime_ns
    refused = rf"--attacker-weights .*: the same file .* own model {re.escape(str(own))}"
    with pytest.raises(MaskcryptError, match=refused):
        determine(run, config, loose, settings, log=lambda *_: None, report=False,
                  attackers=AttackConfig(attacker_weights=str(own)))
    assert (run / "results" / "table1.parquet").stat().st_mtime_ns == before  # refused before Table 1
    d = open_determination(run, config, loose, settings, AdaptivePlan(), False, lambda *_: None)
    d.attack = AttackConfig(data=TINY_DATA + "#split=test")
    n_test = len(d.test.labels)
    alist = pd.read_parquet(run / "results" / "table2.parquet")[["mask_id", "bucket"]]
    with pytest.raises(MaskcryptError, match=rf"{n_test} of its {n_test} images are also test images"):
        train_for(d, alist)
    assert not (run / "models" / "attackers").exists()


def test_the_known_mask_attacker_takes_as_many_optimizer_steps_as_the_family_attacker(attacked):
    """Equal budgets: K copies of its one mask per photo, so an epoch of the known-mask attacker is as many
    optimizer steps as an epoch of the family attacker (K fresh masks per photo) on the same photos."""
    from maskcrypt.models.checkpoint import find_checkpoint

    _, family = find_checkpoint(attacked.run / "models" / "attackers" / "family")
    _, e_meta = find_checkpoint(attacked.run / "models" / "encrypted", kind="recognizer")
    assert family["k"] == masks_per_photo(e_meta) > 1
    for mid in attacked.ids:
        _, known = find_checkpoint(attacked.trained[mid])
        assert (known["k"], known["masks"]) == (family["k"], 1)
        assert known["metrics"]["steps"] == family["metrics"]["steps"] > 0
        assert known["train_config"]["batch_size"] == family["train_config"]["batch_size"]


def test_unlinkability_across_the_target_masks_equals_a_plain_loop(attacked):
    """``results/unlinkability.parquet`` of the determined run: every pair of target masks, both models, the
    splits where someone has two probes, D_sys in [0, 1]; E's D_sys of the first row recomputed in process."""
    import itertools

    import torch.nn.functional as F

    from maskcrypt.data import load
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary, overlay
    from maskcrypt.models import Recognizer
    from maskcrypt.verification.unlinkability import COLUMNS as UNLINK_COLUMNS
    from maskcrypt.verification.unlinkability import cross_mask_scores, unlinkability

    run = attacked.run
    table = pd.read_parquet(run / "results" / "unlinkability.parquet")
    targets = [t["mask_id"] for t in json.loads((run / "targets.json").read_text())["targets"]]
    assert list(table.columns) == UNLINK_COLUMNS and set(table["model"]) == {"E", "linkage"}
    assert set(zip(table["mask_a"], table["mask_b"])) == set(itertools.combinations(targets, 2))
    assert table["d_sys"].between(0, 1).all() and (table["mated_pairs"] > 0).all()
    assert (run / "results" / "unlinkability.png").stat().st_size > 1000
    row = table[table["model"] == "E"].iloc[0]
    a, b = row["mask_a"], row["mask_b"]
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.5)
    sel = np.flatnonzero(~ts.gallery & (ts.split == SPLITS.index(row["split"])))
    x = torch.from_numpy(ts.images[sel])
    e = Recognizer.from_checkpoint(run / "models" / "encrypted")
    masks = dict(zip([a, b], MaskLibrary.open(str(run / "masks")).get([a, b]).masks))
    with torch.inference_mode():
        emb = {m: F.normalize(e.embed(overlay(x, torch.from_numpy(masks[m]))), dim=1).numpy() for m in (a, b)}
    want = unlinkability(*cross_mask_scores(emb[a], emb[b], ts.labels[sel]))
    assert row["d_sys"] == pytest.approx(want.d_sys, abs=0.02) and row["mated_pairs"] == want.mated_pairs
