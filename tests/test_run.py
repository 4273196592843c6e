"""The front door in-process: ``maskcrypt run|prepare|train|determine`` over the pipeline, on tiny settings.

The whole method in a fresh process, under ``ray job submit``, is tests/test_jobs.py;
here the commands run in the test process on the shared Ray and the shared trained run.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_DATA, TINY_SIZE

from maskcrypt.cli.main import main
from maskcrypt.config import EvalSettings
from maskcrypt.data import load
from maskcrypt.masks import MaskLibrary

TINY = ["--data", "synthetic:identities=4,per_identity=6", "--size", "16", "--mask-count", "24",
        "--train-mask-count", "12"]
#: The shared tiny run's settings, as flags.
SAME = ["--eval-actors", "1", "--data", TINY_DATA, "--size", str(TINY_SIZE), "--mask-count", "24",
        "--train-mask-count", "12",
        "--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--label-smoothing", "0", "--warmup-epochs", "0.5",
        "--width", "8",
        "--inpaint-width", "4", "--iterations", "1", "--inpaint-epochs", "2", "--inpaint-batch-size", "16",
        "--repeats", "1"]


def test_prepare_is_idempotent_and_refuses_other_settings_unless_restarted(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["prepare", "--run", run, *TINY]) == 0
    for name in ("masks.png", "masks_train.png", "data.png", "encrypted.png", "run.json"):
        assert (tmp_path / "run" / name).exists(), name
    lib, pool = MaskLibrary.open(f"{run}/masks"), MaskLibrary.open(f"{run}/masks_train")
    held = MaskLibrary.open(f"{run}/masks_heldout")  # E's per-epoch figure: masks it never trained with
    assert len(lib) == 24 and len(pool) == 12 and len(held) == 60
    assert set(lib.column("sha256")).isdisjoint(pool.column("sha256"))
    assert set(held.column("sha256")).isdisjoint(set(lib.column("sha256")) | set(pool.column("sha256")))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["prepare"]["size"] == 16 and len(record["inputs"]["test_data_sha256"]) == 64
    assert record["config"]["prepare"]["mask_count"] == 24  # the resolved RunConfig is recorded
    capsys.readouterr()
    assert main(["prepare", "--run", run, *TINY]) == 0
    assert "(0 new)" in capsys.readouterr().out
    assert main(["prepare", "--run", run, *TINY[:-2], "--train-mask-count", "14"]) == 2
    assert "train_mask_count: 12 -> 14" in capsys.readouterr().err
    assert main(["prepare", "--run", run, *TINY[:-2], "--train-mask-count", "14", "--restart"]) == 0
    assert len(MaskLibrary.open(f"{run}/masks_train")) == 14


def test_a_yaml_config_and_flags_build_one_run_config(tmp_path, capsys):
    import argparse

    from maskcrypt.cli.flags import RUN_FLAGS, add_flags, build_config
    from maskcrypt.config.runconfig import RunConfig

    cfg = tmp_path / "run.yaml"
    cfg.write_text("prepare: {data: 'synthetic:identities=4,per_identity=6', size: 16, mask_count: 24}\n"
                   "model: {width: 8, depth: [1, 1, 2, 1]}\nthresholds: {t_drop: 0.05}\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_flags(parser, RUN_FLAGS)
    config = build_config(parser.parse_args(["--config", str(cfg), "--mask-count", "30", "--seed", "3"]), RUN_FLAGS)
    assert isinstance(config, RunConfig) and config.prepare.size == 16 and config.model.depth == (1, 1, 2, 1)
    assert config.prepare.mask_count == 30  # the flag overrides the file
    assert config.thresholds.t_drop == 0.05 and config.thresholds.t_gap == 0.30
    assert config.train.seed == config.sampling.seed == config.adaptive.seed == config.determine.seed == 3
    assert RunConfig.from_dict(config.to_dict()) == config  # what run.json records reads back
    cfg.write_text("prepare: {size: 16, colour: red}\n")
    assert main(["prepare", "--run", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    assert "prepare: unknown key(s) ['colour']" in capsys.readouterr().err


def test_run_on_a_trained_run_retrains_nothing_and_determines(tiny_run, tmp_path, capsys):
    """``make run``'s path on the session's trained tiny run (training itself: test_train.py, test_jobs.py)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("per_mask.parts", "targets.*"))
    # The attackers that need no training (the trained default ones: tests/test_attack.py), chosen by flag.
    assert main(["run", "--run", str(run), *SAME, "--attackers", "telea+O,ns+O"]) == 0
    out = capsys.readouterr().out
    assert out.count("not retrained") == 3, out[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert set(record["stages"]) == {"prepare", "train", "determine"}
    assert record["config"]["attack"]["attackers"] == "telea+O,ns+O" and (run / "masks_attacker").is_dir()
    assert "Table 1" in out and (run / "results" / "table1.parquet").exists() and (run / "report.md").exists()
    # Impossible thresholds + --require-targets exit 3, with the reason; the determine command alone suffices.
    (tmp_path / "th.json").write_text(json.dumps({"t_gap": 1.0}))
    assert main(["determine", "--run", str(run), "--repeats", "1", "--thresholds", str(tmp_path / "th.json"),
                 "--require-targets"]) == 3
    assert "no target mask: no bucket has first - second accuracy > 1.00" in capsys.readouterr().out
    # Other training settings: refused by name before anything runs.
    assert main(["run", "--run", str(run), *SAME[:-4], "--inpaint-batch-size", "8", "--repeats", "1"]) == 2
    assert "--retrain" in capsys.readouterr().err


def test_an_existing_library_becomes_the_selection_library(tmp_path, capsys):
    from maskcrypt.masks.generate import generate_into

    own = MaskLibrary.create(str(tmp_path / "nvidia"), 16, 16)
    generate_into(own, 12, seed=5)
    assert main(["prepare", "--run", str(tmp_path / "run"), *TINY, "--selection-masks", str(tmp_path / "nvidia")]) == 0
    lib = MaskLibrary.open(str(tmp_path / "run" / "masks"))
    pool = MaskLibrary.open(str(tmp_path / "run" / "masks_train"))
    assert sorted(lib.column("sha256")) == sorted(own.column("sha256"))
    assert set(lib.column("sha256")).isdisjoint(pool.column("sha256"))
    big = MaskLibrary.create(str(tmp_path / "big"), 32, 32)
    generate_into(big, 2, seed=5)
    assert main(["prepare", "--run", str(tmp_path / "run2"), *TINY, "--selection-masks", str(tmp_path / "big")]) == 2
    assert "masks are 32x32, the run is 16x16" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "masks").exists()  # a failed first preparation leaves nothing behind
    assert main(["prepare", "--run", str(tmp_path / "run2"), *TINY]) == 0  # so the next attempt just works


@pytest.mark.parametrize("command", ["run", "determine", "tune", "serve", "capacity", "train", "prepare"])
def test_every_stage_has_a_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: maskcrypt " + command in capsys.readouterr().out


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
