"""maskcrypt verify (the stage and the command), the determination's verification section, and ONNX export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fake_run import DATA, _fake_run

from maskcrypt.cli.main import main
from maskcrypt.data import load
from maskcrypt.masks import MaskLibrary, overlay
from maskcrypt.models import Recognizer
from maskcrypt.verification.protocol import evaluate


def _embed(model, images, mask=None):
    x = torch.from_numpy(images)
    if mask is not None:
        x = overlay(x, torch.from_numpy(mask))
    with torch.no_grad():
        return F.normalize(model.embed(x) + model.embed(x.flip(3)), dim=1).numpy()


def test_verify_command_on_generated_pairs_and_on_a_bin(tmp_path, capsys, ray_session):
    """``maskcrypt verify`` on the shared Ray (evaluation actors): the figures of a plain loop by hand."""
    run, ids = _fake_run(tmp_path / "run")
    assert main(["verify", str(run), "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "pairs generated from the labels" in out and "2 target masks" in out
    assert "TAR@FAR=1e-3" in out and "O      clean" in out.replace("    O", "O")
    table = pd.read_parquet(run / "results" / "verification.parquet")
    assert (run / "results" / "roc.png").stat().st_size > 1000
    assert table[["model", "condition"]].apply(tuple, axis=1).tolist() == [
        ("O", "clean"), *[(m, c) for _ in ids for m, c in
                          (("E", "masked"), ("O", "masked"), ("O", "inpainted"), ("E", "inpainted"),
                           ("O", "telea"), ("O", "ns"))]]
    assert json.loads((run / "run.json").read_text())["stages"]["verify"]["masks"] == ids

    # The same figures by hand: flip-sum embeddings of the masked test images, cosine, the protocol.
    test = load(DATA + "#pairs=generate", default_split="test")
    lib = MaskLibrary.open(str(run / "masks"))
    e = Recognizer.from_checkpoint(run / "models" / "encrypted")
    emb = _embed(e, test.images, lib.get([ids[1]]).masks[0])
    p = test.pairs
    expected = evaluate((emb[p[:, 0]] * emb[p[:, 1]]).sum(1), p[:, 2] == 1, p[:, 3])
    row = table[(table["model"] == "E") & (table["condition"] == "masked") & (table["mask_id"] == ids[1])].iloc[0]
    assert row["pairs"] == len(p) and row["negatives"] == expected["negatives"]
    for key in ("accuracy", "accuracy_std", "tar_far_1e-3", "auc"):
        assert row[key] == pytest.approx(expected[key], abs=1e-9), key

    # The adaptive-family attacker is verified when its training is complete: a copy of O gives O's figures.
    family = run / "models" / "attackers" / "family" / "checkpoint_epoch_0001"
    shutil.copytree(run / "models" / "original" / "checkpoint_epoch_0001", family)
    assert main(["verify", str(run), "--precision", "fp32"]) == 0
    with_family = pd.read_parquet(run / "results" / "verification.parquet").set_index(["model", "condition",
                                                                                      "mask_id"])
    for mid in ids:
        for cond in ("masked", "inpainted"):
            assert with_family.loc[("family", cond, mid), "accuracy"] == with_family.loc[("O", cond, mid), "accuracy"]
    meta = json.loads((family / "meta.json").read_text())
    (family / "meta.json").write_text(json.dumps({**meta, "epochs": 3}))  # an interrupted training: left out
    assert main(["verify", str(run), "--precision", "fp32"]) == 0
    assert "adaptive-family attacker is left out (trained 1 of 3 epochs" in capsys.readouterr().out
    assert "family" not in set(pd.read_parquet(run / "results" / "verification.parquet")["model"])

    # A .bin written from the same split with the same pairs gives the same figures.
    assert main(["data", "export-bin", DATA + "#split=test,pairs=generate", "--out", str(tmp_path / "t.bin")]) == 0
    assert main(["verify", str(run), "--pairs", f"bin:{tmp_path / 't.bin'}", "--precision", "fp32"]) == 0
    from_bin = pd.read_parquet(run / "results" / "verification.parquet")
    assert from_bin["pairs_source"].iloc[0].startswith("bin:")
    for key in ("accuracy", "tar_far_1e-3", "auc"):
        np.testing.assert_allclose(from_bin[key], table[key], atol=1e-6)


def test_verify_errors_are_named(tmp_path, capsys, ray_session):
    run, _ = _fake_run(tmp_path / "run")
    (run / "targets.json").unlink()
    assert main(["verify", str(run)]) == 2
    assert "no targets.json" in capsys.readouterr().err
    assert main(["verify", str(run), "--mask-ids", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["prepare", "--run", str(tmp_path / "x"), "--data", f"bin:{tmp_path / 'none.bin'}"]) == 2
    assert "none.bin: no such file" in capsys.readouterr().err
    assert main(["data", "export-bin", DATA + "#split=test,pairs=generate", "--out", str(tmp_path / "t.bin")]) == 0
    assert main(["prepare", "--run", str(tmp_path / "y"), "--data", f"bin:{tmp_path / 't.bin'}"]) == 2
    assert "serves verification only" in capsys.readouterr().err
    assert main(["data", "export-bin", DATA, "--out", str(tmp_path / "u.bin")]) == 2
    assert "has no verification pairs; add #pairs=generate" in capsys.readouterr().err


def test_determination_shows_verification_when_the_test_source_has_pairs(determined_run, tmp_path, ray_session):
    from conftest import TINY_DATA

    from maskcrypt.config import DetermineConfig, EvalSettings
    from maskcrypt.determine.stage import determine
    from maskcrypt.selection.rules import Thresholds
    from maskcrypt.verification.stage import verify_determination

    src, _ = determined_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("per_mask.parts"))
    loose = Thresholds(t_gap=0.0, t_drop=0.0, t_enc=0.0, t_orig=1.0, top_k=2, attack_top=3)
    result = determine(run, DetermineConfig(test_data=TINY_DATA + "#pairs=generate", repeats=1), loose,
                       EvalSettings(actors=1, precision="fp32"), redo=True, log=lambda *_: None)
    v = pd.read_parquet(run / "results" / "verification.parquet")
    targets = [t["mask_id"] for t in result["targets"]]
    assert v[v["condition"] == "masked"]["mask_id"].drop_duplicates().tolist() == targets
    report = (run / "report.md").read_text()
    assert "## Verification (the field's protocol)" in report and "![ROC](results/roc.png)" in report
    assert (run / "results" / "roc.png").exists()
    # A test source without pairs: the stale section goes.
    assert verify_determination(run, TINY_DATA, EvalSettings(precision="fp32"), lambda *_: None) is False
    assert not (run / "results" / "verification.parquet").exists()

