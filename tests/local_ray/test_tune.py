"""Threshold search: the pure objective on hand-made tables, then Ray Tune on the tiny run's tables."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import TINY_DATA

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.selection.rules import Thresholds
from maskcrypt.tune import Budget, Tables


def test_tuned_thresholds_reproduce_their_choice_in_the_determination(determined_run, tmp_path):
    from maskcrypt.config import AttackConfig, DetermineConfig, EvalSettings
    from maskcrypt.determine.stage import determine
    from maskcrypt.tune import search

    src, _ = determined_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    shutil.copytree(src, tmp_path / "bare", ignore=shutil.ignore_patterns("targets.json"))
    with pytest.raises(MaskcryptError, match=r"no targets\.json"):
        Tables.load(tmp_path / "bare")
    settings = EvalSettings(actors=1, precision="fp32")
    summary = search(run, Budget(o_masked=1.0, o_inpainted=1.0), samples=8, seed=1, log=lambda *_: None)
    out = run / "tune"
    assert summary["trials"] == 8 and summary["feasible_trials"] >= 1
    assert len(pd.read_parquet(out / "trials.parquet")) == 8 and (out / "pareto.png").stat().st_size > 0
    assert summary["confirmation"] is not None and summary["confirmation"]["targets"] == summary["selection"]["targets"]
    tuned = Thresholds.from_file(out / "best_thresholds.json")
    assert tuned.to_dict() == summary["best_thresholds"] and tuned.attack_top == 3
    # The file is a --thresholds for the select job: the determination picks exactly the tuned masks.
    result = determine(run, DetermineConfig(test_data=TINY_DATA, repeats=1), tuned, settings, report=False,
                       log=lambda *_: None, attackers=AttackConfig(attackers="O,R+O", ladder="off", linkage=False))
    assert [t["mask_id"] for t in result["targets"]] == summary["selection"]["mask_ids"].split(",")
    saved = json.loads((out / "tune.json").read_text())
    assert saved["selection"]["mask_ids"] == summary["selection"]["mask_ids"]

