"""The selection rules on hand-made tables (no Ray, no models)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.selection.rules import (
    Thresholds,
    attack_list,
    basic_selection,
    candidates,
    paired_difference_interval,
    per_mask_table,
    table1,
    table2,
    target_buckets,
    target_masks,
    wilson_interval,
)

# The source's Table 2: (bucket, mask id, fourth accuracy, fifth accuracy).
SOURCE_TABLE2 = [
    (5, "1175", 0.9023, 0.8753),
    (5, "1403", 0.8890, 0.8442),
    (5, "0565", 0.8813, 0.8563),
    (6, "1584", 0.8530, 0.8167),
    (6, "0007", 0.8582, 0.8032),
    (6, "1478", 0.8557, 0.7855),
]
N = 10_000


def _attack_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired counts that reproduce the source's percentages on 10,000 images (inpainting fixes none)."""
    rows, ranks = [], []
    for i, (bucket, mid, fourth, fifth) in enumerate(SOURCE_TABLE2):
        before, after = round(fourth * N), round(fifth * N)
        rows.append({"mask_id": mid, "n": N, "both": after, "before_only": before - after, "after_only": 0,
                     "neither": N - before})
        ranks.append({"mask_id": mid, "bucket": bucket, "rank": i % 3 + 1})
    return pd.DataFrame(rows), pd.DataFrame(ranks)


def test_source_table2_chooses_only_mask_1478():
    attack, ranks = _attack_rows()
    t2 = table2(attack, ranks)
    drops = dict(zip(t2["mask_id"], (100 * t2["drop"]).round(2)))
    assert drops == {"1175": 2.70, "1403": 4.48, "0565": 2.50, "1584": 3.63, "0007": 5.50, "1478": 7.02}
    chosen, why = target_masks(t2)
    assert why is None and chosen["mask_id"].tolist() == ["1478"]
    row = t2.set_index("mask_id").loc["1478"]
    assert row["fourth"] == pytest.approx(0.8557) and row["fifth"] == pytest.approx(0.7855)
    # 7.02 > 7.00 is a decision well inside its own interval: flagged, not hidden.
    assert row["drop_lo"] < 0.07 < row["drop_hi"] and bool(row["drop_uncertain"])
    assert not t2.set_index("mask_id").loc["1175", "drop_uncertain"]


def test_table2_threshold_and_k_change_the_choice_without_new_counts():
    attack, ranks = _attack_rows()
    t2 = table2(attack, ranks, Thresholds(t_drop=0.05))
    chosen, _ = target_masks(t2, Thresholds(t_drop=0.05))
    # Best first by fourth accuracy: 0007 (85.82%) before 1478 (85.57%).
    assert chosen["mask_id"].tolist() == ["0007", "1478"]
    ranks_k2 = ranks.assign(rank=[1, 2, 3, 1, 2, 3])
    t2k = table2(attack, ranks_k2, Thresholds(top_k=2))
    chosen, why = target_masks(t2k, Thresholds(top_k=2))
    assert chosen.empty and why.rule == "t_drop"  # 1478 is rank 3: no longer a candidate
    assert why.closest[0]["mask_id"] == "0007"


def test_table2_rejects_inconsistent_counts():
    attack, ranks = _attack_rows()
    attack.loc[0, "neither"] += 1
    with pytest.raises(MaskcryptError, match=r"mask '1175': both \+ before_only"):
        table2(attack, ranks)
    attack, ranks = _attack_rows()
    with pytest.raises(MaskcryptError, match="not in the attack list"):
        table2(attack, ranks.iloc[1:])


def _table1_counts(gaps: dict[int, tuple[float, float]], n: int = 1000, repeats: int = 5) -> pd.DataFrame:
    rows = []
    for b, (e, o) in gaps.items():
        for r in range(repeats):
            rows.append({"bucket": b, "repeat": r, "n": n, "correct_E": round(e * n) + r - 2,
                         "correct_O": round(o * n) - r + 2})
    return pd.DataFrame(rows)


def test_table1_and_target_buckets_like_the_source():
    counts = _table1_counts({0: (0.99, 0.99), 1: (0.95, 0.90), 2: (0.93, 0.80), 3: (0.91, 0.70),
                             4: (0.90, 0.62), 5: (0.89, 0.45), 6: (0.86, 0.30)})
    t1 = table1(counts, labels={0: "no mask", 5: "(0.4,0.5]"})
    assert t1["repeats"].eq(5).all() and t1["n"].eq(5000).all()
    row5 = t1.set_index("bucket").loc[5]
    assert row5["first"] == pytest.approx(0.89) and row5["second"] == pytest.approx(0.45)
    assert row5["first_std"] > 0 and row5["first_lo"] < 0.89 < row5["first_hi"] and row5["range"] == "(0.4,0.5]"
    buckets, why = target_buckets(t1)
    assert buckets == [5, 6] and why is None
    none, why = target_buckets(t1, Thresholds(t_gap=0.6))
    assert none == [] and why.rule == "t_gap" and why.closest[0]["bucket"] == 6


def test_table1_refuses_empty_buckets_and_missing_columns():
    counts = _table1_counts({1: (0.9, 0.5)})
    counts.loc[0, "n"] = 0
    with pytest.raises(MaskcryptError, match=r"bucket\(s\) \[1\] were evaluated on no image"):
        table1(counts)
    with pytest.raises(MaskcryptError, match="missing column"):
        table1(counts.drop(columns=["correct_O"]))


def _per_mask() -> pd.DataFrame:
    rows = []
    for b in (4, 5, 6):
        for i in range(6):
            rows.append({"mask_id": f"b{b}m{i}", "bucket": b, "n": 200, "correct_E": 190 - 10 * i - b,
                         "correct_O": 60 + 10 * i})
    return pd.DataFrame(rows)


def test_candidates_attack_list_and_basic_rule():
    pm = per_mask_table(_per_mask())
    cands = candidates(pm, [5, 6])
    assert cands.groupby("bucket")["mask_id"].apply(list).to_dict() == {
        5: ["b5m0", "b5m1", "b5m2"], 6: ["b6m0", "b6m1", "b6m2"]}
    assert cands["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert len(attack_list(pm, [5, 6])) == 6  # the default attack_top: the top 3 per bucket
    assert len(attack_list(pm, [5, 6], Thresholds(attack_top=5))) == 10
    chosen, why = basic_selection(pm)
    assert why is None and (chosen["third"] > 0.8).all() and (chosen["acc_O"] < 0.5).all()
    assert chosen["third"].is_monotonic_decreasing
    none, why = basic_selection(pm, Thresholds(t_enc=0.99))
    assert none.empty and why.rule == "t_enc"
    none, why = basic_selection(pm, Thresholds(t_orig=0.1))
    assert none.empty and why.rule == "t_orig"


def test_wilson_and_paired_intervals():
    lo, hi = wilson_interval([0, 50, 100], [100, 100, 100])
    assert lo[0] == 0 and 0 < hi[0] < 0.05 and lo[1] < 0.5 < hi[1] and hi[2] == 1
    np.testing.assert_allclose([lo[1], hi[1]], [0.4038, 0.5962], atol=1e-4)  # textbook value
    lo, hi = wilson_interval([0], [0])
    assert (lo[0], hi[0]) == (0.0, 1.0)
    # Paired difference: mirrors when the discordant cells swap, and agrees with the Wald
    # interval on large samples (where Wald is fine).
    d1 = paired_difference_interval(8, 5, 4, 5)
    d2 = paired_difference_interval(8, 4, 5, 5)
    np.testing.assert_allclose([d1[0], d1[1], d1[2]], [-d2[0], -d2[2], -d2[1]], atol=1e-12)
    assert d1[1] < d1[0] < d1[2]
    n, b, c = 10_000, 702, 31
    diff, dlo, dhi = paired_difference_interval(n - b - c - 1000, b, c, 1000)
    se = np.sqrt((b + c) / n**2 - (b - c) ** 2 / n**3)
    np.testing.assert_allclose([dlo, dhi], [diff - 1.96 * se, diff + 1.96 * se], atol=2e-3)
    # No discordant pair at all: a degenerate but valid interval around 0.
    z = paired_difference_interval(50, 0, 0, 50)
    assert z[0] == 0 and z[1] <= 0 <= z[2]


def test_thresholds_validation_and_file(tmp_path):
    with pytest.raises(MaskcryptError, match=r"t_drop: expected a fraction in \[0, 1\], got 7"):
        Thresholds(t_drop=7)
    with pytest.raises(MaskcryptError, match="at least two candidates"):
        Thresholds(top_k=1)
    with pytest.raises(MaskcryptError, match="attack_top"):
        Thresholds(top_k=4, attack_top=3)
    (tmp_path / "t.json").write_text(json.dumps({"t_gap": 0.25, "top_k": 2}))
    th = Thresholds.from_file(tmp_path / "t.json")
    assert (th.t_gap, th.top_k, th.t_drop) == (0.25, 2, 0.07)
    (tmp_path / "t.yaml").write_text("t_enc: 0.9\nbogus: 1\n")
    with pytest.raises(MaskcryptError, match=r"unknown key\(s\) \['bogus'\]"):
        Thresholds.from_file(tmp_path / "t.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MaskcryptError, match="not valid json"):
        Thresholds.from_file(tmp_path / "bad.json")


def _race(n, correct, bucket=None, eliminated=None):
    k = len(n)
    return pd.DataFrame({"mask_id": [f"m{i}" for i in range(k)], "bucket": bucket or [1] * k, "n": n,
                         "correct_E": correct, "eliminated": eliminated or [False] * k})


def test_race_eliminates_only_masks_that_cannot_reach_the_top():
    from maskcrypt.selection.race import race_step

    # Bucket 1: m2's upper bound (~0.71) is below the 2nd best lower bound (~0.88); m3 overlaps and stays.
    # Bucket 2 has only two masks: both stay, however bad.
    got = race_step(_race([100] * 6, [99, 97, 60, 96, 10, 90], bucket=[1, 1, 1, 1, 2, 2]), keep=2,
                    population=1000, tolerance=0.0)
    assert got["eliminated"].tolist() == [False, False, True, False, False, False]
    assert race_step(_race([100] * 6, [99, 97, 60, 96, 10, 90]), keep=6, population=1000,
                     tolerance=0.0)["eliminated"].sum() == 0
    # An eliminated mask stays eliminated and is never measured again.
    again = race_step(got.drop(columns=["lo", "hi", "acc", "action", "settled"]), keep=2, population=1000)
    assert again.loc[2, "eliminated"] and again.loc[2, "action"] == ""
    with pytest.raises(MaskcryptError, match="keep must be >= 1"):
        race_step(_race([10], [5]), keep=0, population=10)
    with pytest.raises(MaskcryptError, match=r"n must lie in \[0, 10\]"):
        race_step(_race([11], [5]), keep=1, population=10)
    with pytest.raises(MaskcryptError, match="tolerance"):
        race_step(_race([10], [5]), keep=1, population=10, tolerance=1.5)


def test_race_measures_the_boundary_and_settles_ties_only_when_bounds_allow():
    from maskcrypt.selection.race import race_step

    # m0, m1 perfect on 2,000 of 5,000 images, m2-m4 at 99.5%: a tie within 0.01 at 99% bounds.
    tie = race_step(_race([2000] * 5, [2000, 2000, 1990, 1990, 1990]), keep=2, population=5000)
    assert tie["action"].tolist() == ["complete", "complete", "", "", ""] and not tie["settled"].any()
    # The same accuracies on 100 images: too wide to call a tie; the top and the highest challengers go on.
    wide = race_step(_race([100] * 5, [100, 100, 99, 99, 99]), keep=2, population=5000)
    assert wide.loc[[0, 1], "action"].eq("advance").all() and (wide["action"] == "advance").sum() >= 4
    assert race_step(_race([100] * 5, [100, 100, 99, 99, 99]), keep=2, population=5000,
                     tolerance=0.0)["action"].ne("complete").all()
    # Once the top has seen every image, the bucket is settled and nothing is measured.
    done = race_step(_race([5000, 5000, 2000, 2000, 2000], [5000, 5000, 1990, 1990, 1990]), keep=2,
                     population=5000)
    assert done["settled"].all() and (done["action"] == "").all()
    # While the boundary is open, only the share of challengers with the highest upper bounds (at least
    # keep) is measured; one far below the top is left alone.
    many = race_step(_race([50] * 12, [50, 50] + [49] * 8 + [30, 30]), keep=2, population=5000)
    assert many.loc[[0, 1], "action"].eq("advance").all()
    assert (many.loc[2:9, "action"] == "advance").sum() == 2 and (many.loc[10:, "action"] == "").all()


def test_finite_population_bounds_close_on_the_whole_set():
    from maskcrypt.selection.rules import wilson_interval

    lo, hi = wilson_interval([90, 450, 1000], [100, 500, 1000], 0.99, population=1000)
    plain_lo, plain_hi = wilson_interval([90, 450], [100, 500], 0.99)
    assert (hi[:2] - lo[:2] < plain_hi - plain_lo).all()  # narrower once a good share of N is seen
    assert lo[2] == hi[2] == 1.0  # every image seen: the exact count, no interval


def test_targets_must_also_pass_the_basic_form():
    attack, ranks = _attack_rows()
    t2 = table2(attack, ranks)
    chosen, why = target_masks(t2, Thresholds(t_enc=0.86))  # 1478 keeps 85.57%: not enough for E
    assert chosen.empty and why.rule == "t_enc" and why.closest[0]["mask_id"] == "1478"
    leaky = table2(attack.assign(correct_O_masked=[0, 0, 0, 0, 0, N // 2]), ranks)
    chosen, why = target_masks(leaky, Thresholds(t_orig=0.5))  # O still recognizes half of 1478's images
    assert chosen.empty and why.rule == "t_orig"
    assert target_masks(leaky, Thresholds(t_orig=0.51))[0]["mask_id"].tolist() == ["1478"]


def test_one_decision_marks_table2_from_every_rule():
    """Table 2 holds figures only; decide() applies t_gap, k, t_drop and the basic form; mark_decision() flags."""
    from maskcrypt.selection.rules import decide, mark_decision

    attack, ranks = _attack_rows()
    t2 = table2(attack.assign(correct_O_masked=[0, 0, 0, 0, 0, N // 2]), ranks)
    assert "target" not in t2 and "candidate" not in t2
    t1 = table1(_table1_counts({0: (0.99, 0.99), 5: (0.89, 0.45), 6: (0.86, 0.30)}))
    th = Thresholds(t_drop=0.05, t_orig=0.5)  # 0007 and 1478 drop > 5 points; O still knows half of 1478
    decision = decide(t1, t2, th)
    assert decision.buckets == [5, 6] and decision.ids == ["0007"]  # the basic form rejects 1478
    marked = mark_decision(t2, decision, th).set_index("mask_id")
    assert marked["target"].to_dict() == {m: m == "0007" for m in marked.index}
    assert marked.loc["1478", "drop"] > th.t_drop and not marked.loc["1478", "target"]
    none = decide(t1, t2, Thresholds(t_gap=0.9))
    assert none.ids == [] and none.reason.rule == "t_gap" and none.buckets == []
    assert not mark_decision(t2, none, th)["target"].any()


def test_table1_intervals_cover_the_images_not_the_repetitions():
    """Five repetitions over the same 200 images are not 1,000 images of evidence."""
    once = table1(_table1_counts({0: (0.9, 0.9), 6: (0.9, 0.4)}, n=200, repeats=1)).set_index("bucket")
    five = table1(_table1_counts({0: (0.9, 0.9), 6: (0.9, 0.4)}, n=200, repeats=5)).set_index("bucket")
    assert five.loc[6, "n"] == 1000 and five.loc[6, "n_images"] == 200
    lo, hi = wilson_interval(five.loc[6, "correct_E"] / 5, 200)
    assert five.loc[6, "first_lo"] == pytest.approx(float(lo)) and five.loc[6, "first_hi"] == pytest.approx(float(hi))
    width = five.loc[6, "first_hi"] - five.loc[6, "first_lo"]
    assert width == pytest.approx(once.loc[6, "first_hi"] - once.loc[6, "first_lo"], rel=0.05)


def test_ties_in_accuracy_are_broken_by_the_mean_score_not_the_mask_id():
    from maskcrypt.selection.rules import rank_masks, ties_at_cutoff

    counts = pd.DataFrame({"mask_id": ["a", "b", "c", "d"], "bucket": 6, "n": 200, "correct_E": [200, 200, 200, 180],
                           "correct_O": 10, "score_E": [150.0, 190.0, 170.0, 199.0]})
    pm = per_mask_table(counts)
    assert candidates(pm, [6], Thresholds(top_k=2))["mask_id"].tolist() == ["b", "c"]  # not the lowest ids
    assert rank_masks(pm, [6])["mask_id"].tolist() == ["b", "c", "a", "d"]
    assert ties_at_cutoff(pm, [6], 2) == {6: 3}  # three masks at 100%: the score decided
    chosen, _ = basic_selection(pm, Thresholds(t_enc=0.5, t_orig=0.5))
    assert chosen["mask_id"].tolist() == ["b", "c", "a", "d"]


def test_the_race_orders_ties_by_score_like_the_full_ranking():
    from maskcrypt.selection.race import race_step

    counts = pd.DataFrame({"mask_id": ["a", "b", "c"], "bucket": 6, "n": 100, "correct_E": 100, "eliminated": False,
                           "score_E": [60.0, 95.0, 80.0]})
    step = race_step(counts, keep=1, population=100, tolerance=0.0)
    assert step["settled"].all()  # every mask at 100% on every image: exact, a tie
    assert step.set_index("mask_id")["score"].idxmax() == "b"


def test_the_basic_rule_is_a_complete_selection_without_buckets():
    from maskcrypt.selection.rules import decide

    counts = pd.DataFrame({"mask_id": ["a", "b", "c"], "bucket": [1, 3, 6], "n": 100, "correct_E": [95, 85, 70],
                           "correct_O": [80, 30, 10], "score_E": [90.0, 80.0, 65.0]})
    pm = per_mask_table(counts)
    t1 = table1(_table1_counts({0: (0.99, 0.99), 1: (0.95, 0.9)}))  # no bucket passes t_gap: irrelevant here
    decision = decide(t1, None, Thresholds(t_enc=0.8, t_orig=0.5), rule="basic", per_mask=pm)
    assert decision.ids == ["b"] and decision.reason is None and decision.buckets == [1, 3, 6]
    empty = decide(t1, None, Thresholds(t_enc=0.99), rule="basic", per_mask=pm)
    assert empty.ids == [] and empty.reason.rule == "t_enc"
    with pytest.raises(MaskcryptError, match="--rule: expected one of bucketed, basic"):
        decide(t1, None, Thresholds(), rule="loose")


def test_rank_mode_auto_races_above_its_threshold_and_never_under_the_basic_rule():
    """Both sides of ``DetermineConfig.adaptive_above`` (the relation of the two modes: test_determine's race test)."""
    from maskcrypt.config import DetermineConfig
    from maskcrypt.determine.stage import rank_mode_for

    auto = DetermineConfig(adaptive_above=1000)
    assert rank_mode_for(auto, 10, 100, counted=False) == "full"  # 1,000 masked images: at the threshold
    assert rank_mode_for(auto, 11, 100, counted=False) == "adaptive"
    assert rank_mode_for(auto, 11, 100, counted=True) == "full"  # Table 1's full mode counted them already
    assert rank_mode_for(DetermineConfig(rank_mode="adaptive"), 1, 1, counted=False) == "adaptive"
    assert rank_mode_for(DetermineConfig(rule="basic", adaptive_above=0), 11, 100, counted=False) == "full"
    with pytest.raises(MaskcryptError, match="adaptive_above"):
        DetermineConfig(adaptive_above=-1)


def test_masks_raced_on_e_alone_have_no_o_figures_and_never_pass_the_basic_rule():
    counts = pd.DataFrame({"mask_id": ["a", "b"], "bucket": 1, "n": [100, 40], "correct_E": [95, 39],
                           "correct_O": [10.0, np.nan]})
    pm = per_mask_table(counts, Thresholds(t_enc=0.5, t_orig=0.5)).set_index("mask_id")
    assert pm["has_O"].tolist() == [True, False] and np.isnan(pm.loc["b", "acc_O"])
    assert pm["basic_pass"].tolist() == [True, False] and not pm.loc["b", "basic_uncertain"]
