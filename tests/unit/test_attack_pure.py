"""The attackers (maskcrypt.determine.attackers): the table, t_attack, training and resuming, against plain loops."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskcrypt.config import ATTACKERS, DEFAULT_ATTACKERS, AttackConfig, Budget, parse_attackers
from maskcrypt.config.runconfig import RunConfig
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.determine.jobs import folder_name
from maskcrypt.selection.attacks import COLUMNS, attacker_counts, attacks_table, worst_attackers
from maskcrypt.selection.rules import Thresholds, decide, target_masks


# -- pure -----------------------------------------------------------------------------------------------------
def _counts() -> pd.DataFrame:
    rows = []
    for mid, base in (("a", 2), ("b", 5)):
        for split, n in (("selection", 10), ("confirmation", 8)):
            rows.append({"mask_id": mid, "split": split, "n": n, "correct_O_masked": 1, "correct_O_inpainted": base,
                         "atk:telea+O": base, "atk:ns+O": 0, "atk:adaptive-family": min(n, base + 2)})
    return pd.DataFrame(rows)


def test_attacks_table_has_intervals_the_worst_attacker_and_chance():
    ranks = pd.DataFrame({"mask_id": ["a", "b"], "bucket": [5, 6]})
    table = attacks_table(_counts(), ranks, Thresholds(confidence=0.9), chance=0.25)
    assert list(table.columns) == COLUMNS and len(table) == 2 * 2 * 5
    assert table["attacker"].drop_duplicates().tolist() == ["O", "R+O", "telea+O", "ns+O", "adaptive-family"]
    row = table[(table["mask_id"] == "b") & (table["split"] == "selection") & (table["attacker"] == "R+O")].iloc[0]
    assert (row["n"], row["correct"], row["accuracy"], row["bucket"], row["chance"]) == (10, 5, 0.5, 6, 0.25)
    assert row["accuracy_lo"] < 0.5 < row["accuracy_hi"]
    worst = worst_attackers(table, "selection").set_index("mask_id")
    assert worst.loc["a", "worst_attacker"] == "adaptive-family" and worst.loc["a", "worst_accuracy"] == 0.4
    # Ties go to the first attacker in report order (R+O and telea+O both 5/10 are below family's 7/10 here).
    assert worst.loc["b", "worst_attacker"] == "adaptive-family"
    tied = _counts().assign(**{"atk:adaptive-family": 0})
    assert worst_attackers(attacks_table(tied, ranks), "selection").set_index("mask_id").loc["b",
                                                                                           "worst_attacker"] == "R+O"
    long = attacker_counts(_counts())
    assert set(long["attacker"]) == {"O", "R+O", "telea+O", "ns+O", "adaptive-family"}
    with pytest.raises(MaskcryptError, match="not in the attack list"):
        attacks_table(_counts(), ranks.iloc[:1])
    with pytest.raises(MaskcryptError, match="unknown attacker"):
        attacks_table(_counts().assign(**{"atk:psychic": 1}), ranks)
    with pytest.raises(MaskcryptError, match="correct <= n"):
        attacks_table(_counts().assign(**{"atk:ns+O": 99}), ranks)


def _t2() -> pd.DataFrame:
    return pd.DataFrame({"mask_id": ["a", "b", "c"], "bucket": [5, 5, 6], "rank": [1, 2, 1], "n": [10, 10, 10],
                         "fourth": [0.9, 0.95, 0.85], "drop": [0.1, 0.1, 0.1], "O_masked": [0.1, 0.1, 0.1],
                         "worst_attacker": ["R+O", "telea+O", "O"], "worst_accuracy": [0.6, 0.3, 0.2]})


def test_t_attack_is_off_by_default_and_keeps_masks_whose_worst_attacker_stays_below(tmp_path):
    th = Thresholds(t_drop=0.05)
    assert th.t_attack is None
    assert target_masks(_t2(), th)[0]["mask_id"].tolist() == ["b", "a", "c"]
    assert target_masks(_t2().drop(columns=["worst_accuracy"]), th)[0]["mask_id"].tolist() == ["b", "a", "c"]
    chosen, why = target_masks(_t2(), dataclasses.replace(th, t_attack=0.5))
    assert chosen["mask_id"].tolist() == ["b", "c"] and why is None
    chosen, why = target_masks(_t2(), dataclasses.replace(th, t_attack=0.1))
    assert chosen.empty and why.rule == "t_attack" and why.closest[0]["mask_id"] == "c"
    with pytest.raises(MaskcryptError, match=r"worst_accuracy"):
        target_masks(_t2().drop(columns=["worst_accuracy"]), dataclasses.replace(th, t_attack=0.5))
    with pytest.raises(MaskcryptError, match="threshold t_attack"):
        Thresholds(t_attack=1.5)
    with pytest.raises(MaskcryptError, match="--rule basic"):
        decide(pd.DataFrame(), None, Thresholds(t_attack=0.5), "basic", pd.DataFrame({"mask_id": ["a"]}))
    (tmp_path / "th.json").write_text(json.dumps({"t_attack": 0.4, "t_gap": 0.2}))
    assert Thresholds.from_file(tmp_path / "th.json").t_attack == 0.4
    assert Thresholds.from_file(tmp_path / "th.json", t_attack=None).t_attack is None


def test_tune_budget_caps_the_worst_attacker():
    from maskcrypt.tune import assess

    chosen = _t2().assign(O_inpainted=0.2)
    assert assess(chosen, Budget())["feasible"] and assess(chosen, Budget())["leak_attacker"] == 0.6
    capped = assess(chosen, Budget(max_attacker=0.5))
    assert not capped["feasible"] and capped["violation"] == pytest.approx(0.1)
    with pytest.raises(MaskcryptError, match="max_attacker"):
        Budget(max_attacker=2.0)


def test_attacker_names_flags_and_yaml():
    from maskcrypt.cli.flags import RUN_FLAGS, TUNE_FLAGS, build_config
    from maskcrypt.cli.main import build_parser

    assert parse_attackers("default") == DEFAULT_ATTACKERS and "adaptive-known" not in DEFAULT_ATTACKERS
    assert parse_attackers("all") == ATTACKERS
    assert parse_attackers("ns+O") == ("O", "R+O", "ns+O")  # O and R+O are Table 2's own, always measured
    assert AttackConfig().trained == ("family", "linkage")
    assert AttackConfig(attackers="all", linkage=False).trained == ("family", "known")
    assert AttackConfig(attackers="telea+O", ladder="off", linkage=False).trained == ()
    assert AttackConfig(attackers="telea+O", linkage=False).trained == ("family",)  # the ladder's top rung
    assert AttackConfig(attackers="telea+O", ladder="16,64", linkage=False).trained == ("family",)  # the template
    with pytest.raises(MaskcryptError, match="--attackers"):
        AttackConfig(attackers="O,psychic")
    with pytest.raises(MaskcryptError, match="--attack-epochs"):
        AttackConfig(epochs=0)
    args = build_parser().parse_args(["determine", "--attackers", "all", "--attack-epochs", "2",
                                      "--attacker-data", "synthetic:#limit=40", "--attack-cpus", "2"])
    config = build_config(args, RUN_FLAGS)
    assert config.attack == AttackConfig("all", 2, "synthetic:#limit=40", 2.0)
    with pytest.raises(MaskcryptError, match="cpus per trial"):
        AttackConfig(trial_cpus=-1)
    assert AttackConfig().trial_cpus == 0  # auto (auto_trial_cpus, checked on the session's cluster)
    args = build_parser().parse_args(["determine", "--no-linkage", "--no-fidelity", "--attacker-ladder", "off",
                                      "--linkage-victims", "0.3", "--attacker-weights", "w.pt"])
    attack = build_config(args, RUN_FLAGS).attack
    assert (attack.linkage, attack.fidelity, attack.rungs(), attack.linkage_victims, attack.attacker_weights) == (
        False, False, (), 0.3, "w.pt")
    assert build_config(build_parser().parse_args(["determine"]), RUN_FLAGS).attack == AttackConfig()
    for bad in ({"linkage_victims": 1.0}, {"linkage_victims": 0.0}, {"linkage_epochs": 0}):
        with pytest.raises(MaskcryptError, match="--linkage-"):
            AttackConfig(**bad)
    assert RunConfig.from_dict({"attack": {"attackers": "telea+O", "epochs": 1}}).attack.names() == ("O", "R+O",
                                                                                                    "telea+O")
    tune_args = build_parser().parse_args(["tune", "--max-attacker", "0.4"])
    assert build_config(tune_args, TUNE_FLAGS).tune.budget.max_attacker == 0.4
    assert folder_name("g0-0000052") == "g0-0000052"
    assert folder_name("family") != "family" and "/" not in folder_name("sub/00007")


def test_classical_inpainting_fills_only_the_hole():
    from maskcrypt.models.classical import classical_inpaint, inpaint_numpy

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 3, 12, 12), dtype=np.uint8)
    grey = images[:, :1].copy()
    mask = np.ones((12, 12), np.uint8)
    mask[3:7, 2:9] = 0
    for method in ("telea", "ns"):
        for x in (images, grey):
            out = inpaint_numpy(x * mask, mask, method)
            assert out.shape == x.shape and (out[..., mask == 1] == x[..., mask == 1]).all()
            assert (out[..., mask == 0] > 0).any()  # the hole is filled, not left black
        t = classical_inpaint(torch.from_numpy(images * mask), torch.from_numpy(mask), method)
        assert torch.equal(t, torch.from_numpy(inpaint_numpy(images * mask, mask, method)))
    with pytest.raises(MaskcryptError, match="expected one of"):
        inpaint_numpy(images, mask, "lama")



def test_ladder_photos_are_stratified_nested_seeded_and_every_rung_as_long_as_the_full_one():
    from maskcrypt.config import parse_ladder
    from maskcrypt.selection.ladder import photo_order, rung_rows, rungs

    labels = np.repeat(np.arange(5), [10, 3, 7, 1, 9])
    order = photo_order(labels, 4)
    assert sorted(order.tolist()) == list(range(len(labels)))  # every photo once
    assert order.tolist() == photo_order(labels, 4).tolist() != photo_order(labels, 5).tolist()
    for n in (5, 8, 13):  # every prefix as even over identities as n allows (the 1-photo identity runs out)
        counts = np.bincount(labels[order[:n]], minlength=5)
        assert counts.max() - counts[np.arange(5) != 3].min() <= 1, (n, counts)
    rows = rung_rows(order, 8, len(labels))
    assert len(rows) == len(labels) and set(rows.tolist()) == set(order[:8].tolist())
    assert set(order[:8].tolist()) < set(order[:13].tolist())
    assert rungs(parse_ladder("256,1024,all"), 800) == [0, 256, 800] and rungs((), 800) == []
    assert rungs(parse_ladder("10,20"), 15) == [0, 10, 15]
    assert parse_ladder("off") == () and parse_ladder("16, 64 ,ALL") == (16, 64, None)
    for bad in ("0", "64,16", "all,16", "x", "all,all"):
        with pytest.raises(MaskcryptError, match="--attacker-ladder"):
            parse_ladder(bad)
    with pytest.raises(MaskcryptError, match="ladder"):
        rung_rows(order, 0, len(labels))


def test_ladder_table_turns_rung_counts_into_intervals_and_names_what_is_missing():
    from maskcrypt.selection.ladder import COLUMNS, ladder_table

    counts = pd.DataFrame({"mask_id": ["a", "a"], "split": ["selection", "confirmation"], "n": [20, 10],
                           "correct_O_masked": [2, 1], "ladder:8": [9, 5], "atk:adaptive-family": [15, 8]})
    alist = pd.DataFrame({"mask_id": ["a"], "bucket": [3]})
    t = ladder_table(counts, alist, {0: "correct_O_masked", 8: "ladder:8", 40: "atk:adaptive-family"},
                     chance=0.1)
    assert list(t.columns) == COLUMNS and len(t) == 6
    sel = t[t["split"] == "selection"]
    assert sel["photos"].tolist() == [0, 8, 40] and sel["accuracy"].tolist() == [0.1, 0.45, 0.75]
    assert (t["accuracy_lo"] <= t["accuracy"]).all() and (t["accuracy"] <= t["accuracy_hi"]).all()
    with pytest.raises(MaskcryptError, match=r"ladder:64"):
        ladder_table(counts, alist, {64: "ladder:64"})


def test_worst_linkage_t_link_and_the_linkage_budget(tmp_path):
    """The outsider's Recall@1 (the linkage rows; O and E are references) becomes worst_linkage; t_link (off by
    default) keeps targets below it and a mask without a figure fails it; --max-linkage caps the search."""
    from maskcrypt.cli.flags import TUNE_FLAGS, build_config
    from maskcrypt.cli.main import build_parser
    from maskcrypt.selection.attacks import worst_linkages
    from maskcrypt.tune import assess

    linkage = pd.DataFrame({"mask_id": ["a", "a", "b", "b", "a"], "split": ["selection"] * 4 + ["confirmation"],
                            "model": ["linkage", "E", "linkage", "O", "linkage"],
                            "recall_at_1": [0.5, 0.9, 0.2, 0.01, 0.4], "recall_at_1_chance": [0.025] * 5})
    worst = worst_linkages(linkage, "selection").set_index("mask_id")
    assert worst.loc["a", "worst_linkage"] == 0.5 and worst.loc["b", "worst_linkage"] == 0.2
    assert worst.loc["a", "linkage_chance"] == 0.025 and worst_linkages(None, "selection").empty
    t2 = _t2().merge(worst.reset_index(), on="mask_id", how="left")  # c: no linkage figure
    th = Thresholds(t_drop=0.05)
    assert th.t_link is None and target_masks(t2, th)[0]["mask_id"].tolist() == ["b", "a", "c"]
    chosen, why = target_masks(t2, dataclasses.replace(th, t_link=0.3))
    assert chosen["mask_id"].tolist() == ["b"] and why is None
    chosen, why = target_masks(t2, dataclasses.replace(th, t_link=0.1))
    assert chosen.empty and why.rule == "t_link" and why.closest[0]["mask_id"] == "b"
    with pytest.raises(MaskcryptError, match="threshold t_link"):
        Thresholds(t_link=-0.1)
    with pytest.raises(MaskcryptError, match="t_link: judges"):
        decide(pd.DataFrame(), None, Thresholds(t_link=0.5), "basic", pd.DataFrame({"mask_id": ["a"]}))
    chosen = t2[t2["mask_id"] != "c"].assign(O_inpainted=0.2)
    assert assess(chosen, Budget())["leak_linkage"] == 0.5
    capped = assess(chosen, Budget(max_linkage=0.4))
    assert not capped["feasible"] and capped["violation"] == pytest.approx(0.1)
    assert build_config(build_parser().parse_args(["tune", "--max-linkage", "0.3"]),
                        TUNE_FLAGS).tune.budget.max_linkage == 0.3
