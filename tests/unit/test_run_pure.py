"""The front door in-process: ``maskcrypt run|prepare|train|determine`` over the pipeline, on tiny settings.

The whole method in a fresh process, under ``ray job submit``, is tests/cluster/test_jobs.py;
here the commands run in the test process on the shared Ray and the shared trained run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcrypt.cli.main import main
from maskcrypt.config.runconfig import RunConfig
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks import MaskLibrary

TINY = ["--data", "synthetic:identities=4,per_identity=6", "--size", "16", "--mask-count", "24",
        "--train-mask-count", "12"]


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


def test_the_default_config_file_is_the_embedded_default():
    """configs/default.yaml (what docs cite for the embedded default's figures) reads back as RunConfig()."""
    root = Path(__file__).resolve().parents[2]
    assert RunConfig.from_yaml(root / "configs" / "default.yaml") == RunConfig()
    # every measured config still loads
    for name in ("faces112.yaml", "faces112-gpu.yaml", "faces25k.yaml", "faces-openset.yaml"):
        RunConfig.from_yaml(root / "configs" / name)


def test_set_overrides_any_field_typed_and_validated_like_the_yaml():
    """--set SECTION.KEY=VALUE on the parser of `maskcrypt run`: nested keys, YAML values, and clear refusals."""
    from maskcrypt.cli.flags import RUN_FLAGS, build_config
    from maskcrypt.cli.main import build_parser

    parser = build_parser()

    def config(*argv):
        return build_config(parser.parse_args(["run", *argv]), RUN_FLAGS)

    c = config("--set", "train.epochs=2", "--set", "determine.rank_mode=adaptive", "--set", "thresholds.t_gap=0.2",
               "--set", "tune.budget.o_masked=0.3", "--set", "model.depth=[2, 2, 2, 2]", "--set", "prepare.data=x:")
    assert (c.train.epochs, c.determine.rank_mode, c.thresholds.t_gap) == (2, "adaptive", 0.2)
    assert c.tune.budget.o_masked == 0.3 and c.model.depth == (2, 2, 2, 2) and c.prepare.data == "x:"
    assert config("--set", "train.epochs=2", "--lr", "0.05").train.lr == 0.05  # flags for other fields still apply
    for argv, message in [
        (("--set", "train.epochs=two"), "train.epochs=two: expected an integer, got 'two'"),
        (("--set", "train.epoch=2"), "unknown key 'epoch' in train; known: .*'epochs'"),
        (("--set", "trian.epochs=2"), "trian is not a section; known: .*'train'"),
        (("--set", "train.epochs"), "expected SECTION.KEY=VALUE"),
        (("--set", "thresholds.t_gap=7"), "threshold t_gap: expected a fraction in \\[0, 1\\]"),
        (("--set", "train.epochs=2", "--epochs", "3"), "--set and a flag both set train.epochs"),
    ]:
        with pytest.raises(MaskcryptError, match=message):
            config(*argv)


def test_an_imported_library_lends_the_attackers_a_held_out_share_of_its_own_masks(tmp_path):
    """The attackers' pool is drawn from the deployed distribution: per bucket a seeded share of the imported
    library, held out of the selection masks (disjoint by sha256), and generated only where a bucket is too small
    to spare one (recorded in run.json); preparing again draws the same share."""
    import json

    from maskcrypt.masks.generate import generate_into

    own = MaskLibrary.create(str(tmp_path / "nvidia"), 16, 16)
    generate_into(own, 100, seed=5, buckets=(1, 2, 3, 4, 5))
    generate_into(own, 3, seed=9, buckets=(6,))  # below 2 x the share of 4
    args = ["prepare", "--run", str(tmp_path / "run"), *TINY, "--selection-masks", str(tmp_path / "nvidia"),
            "--attacker-mask-count", "24"]
    assert main(args) == 0
    lib = MaskLibrary.open(str(tmp_path / "run" / "masks"))
    pool = MaskLibrary.open(str(tmp_path / "run" / "masks_attacker"))
    imported = set(own.column("sha256"))
    table = pool.table(columns=["sha256", "bucket"]).to_pandas()
    from_own = table[table["sha256"].isin(imported)]
    assert sorted(from_own["bucket"].unique()) == [1, 2, 3, 4, 5] and (from_own["bucket"].value_counts() == 4).all()
    assert not table.loc[table["bucket"] == 6, "sha256"].isin(imported).any()  # generated for the small bucket
    assert set(lib.column("sha256")).isdisjoint(table["sha256"])
    assert set(lib.column("sha256")) | set(from_own["sha256"]) == imported
    record = json.loads((tmp_path / "run" / "run.json").read_text())["inputs"]["masks_attacker"]
    assert record["from_library"] == [1, 2, 3, 4, 5] and record["generated"] == [6]
    before = sorted(pool.column("sha256"))
    assert main(args) == 0
    assert sorted(MaskLibrary.open(str(tmp_path / "run" / "masks_attacker")).column("sha256")) == before
