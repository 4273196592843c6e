"""The determination stage end to end on the tiny trained run: tables, targets, the empty path."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
from conftest import TINY_DATA, TINY_SIZE

from maskcrypt.determine import determine
from maskcrypt.evaluate import EvalSettings
from maskcrypt.masks import mask_sha256, unpack_masks
from maskcrypt.select import Thresholds

FP32 = EvalSettings(masks_per_batch=4, images_per_chunk=32, precision="fp32")


def test_determination_writes_every_table_and_consistent_targets(tiny_run):
    run, _ = tiny_run
    # Loose thresholds so the tiny models pass every rule and the whole path runs.
    th = Thresholds(t_gap=0.0, t_drop=0.0, top_k=2, attack_top=3)
    result = determine(run, TINY_DATA, TINY_SIZE, th, repeats=2, settings=FP32, log=lambda *_: None)
    t1 = pd.read_parquet(run / "results" / "table1.parquet")
    assert t1["bucket"].tolist()[0] == 0 and (t1["repeats"] == 2).all()
    pm = pd.read_parquet(run / "results" / "per_mask.parquet")
    assert set(pm["bucket"]) == set(result["target_buckets"])
    t2 = pd.read_parquet(run / "results" / "table2.parquet")
    assert (t2.groupby("bucket").size() <= 3).all() and {"drop", "drop_lo", "drop_hi", "O_inpainted"} <= set(t2)
    on_disk = json.loads((run / "targets.json").read_text())
    assert on_disk["targets"] == result["targets"]
    if result["targets"]:
        targets = pq.read_table(run / "targets.parquet")
        assert targets.column("mask_id").to_pylist() == [t["mask_id"] for t in result["targets"]]
        masks = unpack_masks(targets.column("bits").to_pylist(), TINY_SIZE, TINY_SIZE)
        assert [mask_sha256(m) for m in masks] == [t["sha256"] for t in result["targets"]]
        fourths = [t["fourth"] for t in result["targets"]]
        assert fourths == sorted(fourths, reverse=True)  # best first
    else:
        assert result["reason"]["rule"] == "t_drop"


def test_no_target_bucket_is_reported_with_the_closest_values(tiny_run):
    run, _ = tiny_run
    result = determine(run, TINY_DATA, TINY_SIZE, Thresholds(t_gap=1.0), repeats=1, settings=FP32,
                       log=lambda *_: None)
    assert result["targets"] == [] and result["target_buckets"] == []
    assert result["reason"]["rule"] == "t_gap" and result["reason"]["closest"]
    assert not (run / "targets.parquet").exists()
    assert json.loads((run / "targets.json").read_text())["reason"]["rule"] == "t_gap"
