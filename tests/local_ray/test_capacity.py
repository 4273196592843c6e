"""The capacity job on a user's run: the run's E and test split, raced as its determination races them."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import TINY_DATA

from maskcrypt.capacity import CapacityConfig, measure, resolve
from maskcrypt.cli.main import main
from maskcrypt.config import AdaptivePlan, DetermineConfig, EvalSettings
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.determine.inputs import open_determination
from maskcrypt.determine.race import evaluate_adaptive
from maskcrypt.selection.rules import Thresholds

#: What the capacity CLI's --eval-actors 1 --precision fp32 gives the evaluator.
FP32 = EvalSettings(actors=1, precision="fp32")
#: How the determined run's test set is identified: capacity.json must carry run.json's values.
TEST_KEYS = ("test_data", "test_data_sha256", "test_data_fingerprint", "scoring", "confirm_fraction", "enroll", "seed")


def _quiet(*_):
    return None


def test_capacity_on_a_run_races_its_test_split_as_its_determination(determined_run, tmp_path):
    """``--run``: the run's test split, scoring and attack_top; the counts of the determination's race."""
    run, _ = determined_run
    out = tmp_path / "cap"
    # The CLI in this process (the session's Ray): --first 3 makes several rounds of the few selection probes.
    assert main(["capacity", "--run", str(run), "--stages", "race", "--first", "3", "--eval-actors", "1",
                 "--precision", "fp32", "--out", str(out)]) == 0
    report = json.loads((out / "capacity.json").read_text())
    record = json.loads((run / "run.json").read_text())["stages"]["determine"]
    assert {k: report[k] for k in TEST_KEYS} == {k: record[k] for k in TEST_KEYS}
    race = report["adaptive"]
    assert report["library"] == str(run / "masks") and race["keep"] == record["thresholds"]["attack_top"] == 3
    assert len(race["rounds"]) > 1 and race["finished"]
    counts = pd.read_parquet(out / "race_counts.parquet").set_index("mask_id").sort_index()
    assert list(counts.columns) == ["bucket", "n", "correct_E", "score_E", "rounds"]

    # The determination's race on a copy of the run (its own test loading, from the fixture's settings): the same
    # plan, keep and seed give the same counts, every mask.
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    d = open_determination(copy, DetermineConfig(test_data=TINY_DATA, repeats=1), Thresholds(attack_top=3), FP32,
                           AdaptivePlan(first=3), redo=False, log=_quiet)
    raced, _ = evaluate_adaptive(d.library, d.test, {"E": d.models["E"]}, d.present, keep=3,
                                 plan=AdaptivePlan(first=3), settings=FP32)
    raced = raced.set_index("mask_id").sort_index()
    population = d.test.probes("selection")
    assert race["probes"] == population
    complete = counts.index[counts["n"] == population]
    assert list(complete) == list(raced.index[raced["n"] == population]) and len(complete) >= 3
    pd.testing.assert_frame_equal(counts[["bucket", "n", "correct_E", "rounds"]],
                                  raced[["bucket", "n", "correct_E", "rounds"]], check_dtype=False)
    assert counts["score_E"].to_numpy() == pytest.approx(raced["score_E"].to_numpy())
    # And the run's own per-mask table (the determination measured its target buckets in full mode).
    pm = pd.read_parquet(run / "results" / "per_mask.parquet").set_index("mask_id")
    both = pm.index.intersection(complete)
    assert len(both) and (pm.loc[both, "n"] == population).all()
    assert (pm.loc[both, "correct_E"] == counts.loc[both, "correct_E"]).all()


def test_an_undetermined_run_is_scored_as_a_default_determination_would(tiny_run, tmp_path):
    """No ``stages.determine`` in run.json yet: determine's defaults, the default attack_top, and a line saying so."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("results", "targets.*"))
    record = json.loads((run / "run.json").read_text())
    record.get("stages", {}).pop("determine", None)
    (run / "run.json").write_text(json.dumps(record))
    lines: list[str] = []
    inputs = resolve(CapacityConfig(run=str(run)), log=lines.append)
    assert inputs.test == DetermineConfig() and inputs.spec == record["prepare"]["data"]
    assert inputs.keep == Thresholds().attack_top and inputs.size == 16 and inputs.source.uri == str(run / "masks")
    assert any("not determined yet" in line for line in lines)
    assert resolve(CapacityConfig(run=str(run), keep=7, count=50), log=_quiet).keep == 7  # --keep, and --count
    assert resolve(CapacityConfig(run=str(run), count=50), log=_quiet).source is None  # generates instead


def test_capacity_refuses_what_it_cannot_measure_before_building_anything(tiny_run, tmp_path, capsys):
    """Each wrong combination names its flag; the test set is checked before the library is built."""
    run, _ = tiny_run
    e = str(run / "models" / "encrypted")
    with pytest.raises(MaskcryptError, match="--model: with --run"):
        CapacityConfig(run=str(run), model=e)
    with pytest.raises(MaskcryptError, match=r"--test-data, --scoring.*with --run"):
        CapacityConfig(run=str(run), determine=DetermineConfig(test_data=TINY_DATA))
    with pytest.raises(MaskcryptError, match="--scoring, --enroll, --confirm-fraction: expected --test-data"):
        CapacityConfig(model=e, determine=DetermineConfig(scoring="open"))
    with pytest.raises(MaskcryptError, match="--test-data: expected --model"):
        CapacityConfig(determine=DetermineConfig(test_data=TINY_DATA))
    with pytest.raises(MaskcryptError, match=r"--run .*nowhere: no such directory"):
        resolve(CapacityConfig(run=str(tmp_path / "nowhere")), log=_quiet)
    (tmp_path / "untrained").mkdir()
    with pytest.raises(MaskcryptError, match=r"--run .*untrained: expected a trained E"):
        resolve(CapacityConfig(run=str(tmp_path / "untrained")), log=_quiet)
    with pytest.raises(MaskcryptError, match=r"--size 32: E .* takes 16 px images"):
        resolve(CapacityConfig(run=str(run), size=32), log=_quiet)
    # Through the CLI: the flag named on one error line, exit status 2.
    assert main(["capacity", "--run", str(run), "--test-data", TINY_DATA]) == 2
    assert "error: --test-data" in capsys.readouterr().err
    # Identities E was not trained on cannot be scored closed set: refused before any image is decoded or mask made.
    out = tmp_path / "cap"
    foreign = DetermineConfig(test_data="synthetic:identities=8,per_identity=4", scoring="closed")
    with pytest.raises(MaskcryptError, match=r"--scoring closed: test identities .*id006"):
        measure(out, CapacityConfig(model=e, determine=foreign, stages=("race",)), FP32, log=_quiet)
    assert not (out / "masks").exists()
