"""Threshold search: the pure objective on hand-made tables, then Ray Tune on the tiny run's tables."""

from __future__ import annotations

import pandas as pd
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.selection.rules import Thresholds
from maskcrypt.tune import EMPTY, Budget, Tables, assess, choose, pareto_front, search_space, t_gap_floor


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    t1 = pd.DataFrame({"bucket": [0, 1, 5, 6], "first": [0.99, 0.98, 0.90, 0.85], "second": [0.97, 0.78, 0.30, 0.05]})
    t1["gap"] = t1["first"] - t1["second"]
    t2 = pd.DataFrame({
        "mask_id": ["a", "b", "c", "d"], "bucket": [5, 5, 6, 6], "rank": [1, 2, 1, 2],
        "fourth": [0.95, 0.90, 0.85, 0.82], "fifth": [0.90, 0.70, 0.70, 0.60],
        "drop": [0.05, 0.20, 0.15, 0.20], "O_masked": [0.30, 0.10, 0.05, 0.02],
        "O_inpainted": [0.60, 0.40, 0.30, 0.20]})
    return t1, t2


def test_choice_follows_the_determination_rules():
    t1, t2 = _tables()
    assert choose(t1, t2, Thresholds(t_gap=0.3, t_drop=0.07, top_k=2))["mask_id"].tolist() == ["b", "c", "d"]
    assert choose(t1, t2, Thresholds(t_gap=0.7, t_drop=0.07, top_k=2))["mask_id"].tolist() == ["c", "d"]
    assert choose(t1, t2, Thresholds(t_gap=0.3, t_drop=0.0, t_orig=0.2, top_k=2))["mask_id"].tolist() == [
        "b", "c", "d"]  # a: O recognizes 30% > t_orig
    assert choose(t1, t2, Thresholds(t_gap=0.3, t_drop=0.0, t_enc=0.9, top_k=2))["mask_id"].tolist() == ["a"]
    assert t_gap_floor(t1, t2) == pytest.approx(0.20)  # bucket 1 was not attacked: it must stay out


def test_objective_ranks_feasible_above_infeasible_above_empty():
    t1, t2 = _tables()
    budget = Budget(o_masked=0.5, o_inpainted=0.35, min_drop=0.1)
    ok = assess(choose(t1, t2, Thresholds(t_gap=0.7, t_drop=0.07, top_k=2)), budget)  # c, d
    leaky = assess(choose(t1, t2, Thresholds(t_gap=0.3, t_drop=0.07, top_k=2)), budget)  # b leaks 40% inpainted
    empty = assess(choose(t1, t2, Thresholds(t_gap=0.9)), budget)
    assert ok["feasible"] and ok["score"] == pytest.approx(0.835) and ok["leak_inpainted"] == pytest.approx(0.3)
    assert not leaky["feasible"] and leaky["violation"] == pytest.approx(0.05) and leaky["score"] < 0
    assert empty["score"] == EMPTY < leaky["score"] < ok["score"]
    assert assess(choose(t1, t2, Thresholds(t_gap=0.7, t_drop=0.07, top_k=2)),
                  Budget(utility="best"))["utility"] == pytest.approx(0.85)
    for bad in ({"o_masked": 1.5}, {"min_drop": -0.1}, {"utility": "median"}):
        with pytest.raises(MaskcryptError, match="budget"):
            Budget(**bad)


def test_pareto_front_keeps_only_undominated_choices():
    pts = pd.DataFrame({"mask_ids": ["x", "y", "z", "w", "x", ""], "utility": [0.9, 0.8, 0.95, 0.7, 0.9, 0.0],
                        "leak": [0.3, 0.2, 0.5, 0.25, 0.3, float("nan")], "targets": [1, 1, 2, 1, 1, 0]})
    front = pareto_front(pts)
    assert front["mask_ids"].tolist() == ["y", "x", "z"]  # w is beaten by y on both


def test_grid_space_spans_each_threshold_and_k():
    t1, t2 = _tables()
    tables = Tables(t1, t2, None, Thresholds(top_k=2, attack_top=4))
    space = search_space(tables, "grid", grid_points=3)
    assert space["top_k"]["grid_search"] == [2, 3, 4]
    assert min(space["t_gap"]["grid_search"]) == pytest.approx(0.20)
    with pytest.raises(MaskcryptError, match="search mode"):
        search_space(tables, "bayes")


def test_tune_command_names_bad_flags_without_starting_ray(tmp_path, capsys):
    from maskcrypt.cli.main import job_main

    assert job_main("tune", ["--run", str(tmp_path), "--max-o-inpainted", "1.5"]) == 2
    assert "budget o_inpainted: expected a fraction in [0, 1], got 1.5" in capsys.readouterr().err

