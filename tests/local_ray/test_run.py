"""The front door in-process: ``maskcrypt run|prepare|train|determine`` over the pipeline, on tiny settings.

The whole method in a fresh process, under ``ray job submit``, is tests/cluster/test_jobs.py;
here the commands run in the test process on the shared Ray and the shared trained run.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import TINY_DATA, TINY_SIZE

from maskcrypt.cli.main import main
from maskcrypt.config import EvalSettings
from maskcrypt.data import load
from maskcrypt.masks import MaskLibrary

#: The shared tiny run's settings, as flags.
SAME = ["--eval-actors", "1", "--data", TINY_DATA, "--size", str(TINY_SIZE), "--mask-count", "24",
        "--train-mask-count", "12",
        "--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--label-smoothing", "0", "--warmup-epochs", "0.5",
        "--width", "8",
        "--inpaint-width", "4", "--iterations", "1", "--inpaint-epochs", "2", "--inpaint-batch-size", "16",
        "--repeats", "1"]


def test_run_on_a_trained_run_retrains_nothing_and_determines(tiny_run, tmp_path, capsys):
    """``make run``'s path on the session's trained tiny run (training itself: test_train.py, test_jobs.py)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("per_mask.parts", "targets.*"))
    # The attackers that need no training (the trained default ones: tests/local_ray/test_attack.py), chosen with
    # --set, as are the training epochs: the same config as the flags, so nothing is retrained.
    flags = [f for i, f in enumerate(SAME) if "--epochs" not in SAME[max(0, i - 1):i + 1]]
    assert main(["run", "--run", str(run), *flags, "--set", "train.epochs=4",
                 "--set", "attack.attackers=telea+O,ns+O", "--attacker-ladder", "off", "--no-linkage"]) == 0
    out = capsys.readouterr().out
    assert out.count("not retrained") == 3, out[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert set(record["stages"]) == {"prepare", "train", "determine"}
    assert record["config"]["attack"]["attackers"] == "telea+O,ns+O" and (run / "masks_attacker").is_dir()
    assert "Table 1" in out and (run / "results" / "table1.parquet").exists() and (run / "report.md").exists()
    # The run ends with its time line: wall time, each stage's, the determination's own stages.
    last = out.strip().splitlines()[-1]
    assert re.match(r"time: .* wall; prepare .*; train .*; determine .* \[table1 \d+ s, ", last), last
    # Impossible thresholds + --require-targets exit 3, with the reason; the determine command alone suffices.
    (tmp_path / "th.json").write_text(json.dumps({"t_gap": 1.0}))
    assert main(["determine", "--run", str(run), "--repeats", "1", "--thresholds", str(tmp_path / "th.json"),
                 "--require-targets"]) == 3
    assert "no target mask: no bucket has first - second accuracy > 1.00" in capsys.readouterr().out
    # Other training settings: refused by name before anything runs.
    assert main(["run", "--run", str(run), *SAME[:-4], "--inpaint-batch-size", "8", "--repeats", "1"]) == 2
    assert "--retrain" in capsys.readouterr().err


def test_the_training_report_is_reused_until_its_inputs_change(tiny_run, tmp_path):
    from maskcrypt.train.report import cached_training_quality

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("per_mask.parts", "targets.*"))
    lines: list[str] = []
    fp32 = EvalSettings(precision="fp32", actors=2)
    first = cached_training_quality(run, TINY_DATA, settings=fp32, log=lines.append)
    again = cached_training_quality(run, TINY_DATA, settings=fp32, log=lines.append)
    assert again == first and sum("reused" in line for line in lines) == 1
    assert any("masked images per model" in line and "/s)" in line for line in lines)  # the stage says its rate

    # The report runs in evaluation actors (no model in the driver): the same figures as a plain loop here.
    from maskcrypt.evaluation.scorer import sampled_draw
    from maskcrypt.models.predictor import Predictor

    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    plain = Predictor.from_checkpoints({"E": run / "models" / "encrypted", "O": run / "models" / "original"},
                                       precision="fp32", inpainter=run / "models" / "inpainter")
    lib = MaskLibrary.open(str(run / "masks"))
    y = torch.from_numpy(test.labels)
    buckets = sorted({int(b) for b in lib.column("bucket")} - {-1})
    assert first["images"] == len(test) and [r["bucket"] for r in first["rows"]] == [0, *buckets]
    for row in first["rows"]:
        masks = None
        if row["bucket"]:
            pool = lib.load([row["bucket"]]).masks
            masks = torch.from_numpy(pool[sampled_draw(0, row["bucket"], 0, len(pool), len(test))])
        out = plain.outputs(test.images, masks)
        for name in ("E", "O"):
            assert round(row[name] * len(test)) == int(plain.judge(out[name], y)[0].sum()), row  # counts equal
        if masks is not None:
            psnr_r, psnr_mean = plain.fill_psnr(test.images, masks)
            assert row["R_hole_psnr"] == pytest.approx(float(psnr_r.double().mean()), abs=1e-3)
            assert row["mean_fill_psnr"] == pytest.approx(float(psnr_mean.double().mean()), abs=1e-3)
    other = cached_training_quality(run, TINY_DATA, seed=1, settings=fp32, log=lines.append)  # another draw: recomputed
    assert other["key"]["seed"] == 1 and sum("reused" in line for line in lines) == 1
    meta = json.loads(next((run / "models" / "encrypted").glob("checkpoint_*/meta.json")).read_text())
    assert meta["held_out_masks"] == len(MaskLibrary.open(str(run / "masks_heldout")))

