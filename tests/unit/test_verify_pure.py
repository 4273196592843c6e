"""maskcrypt verify (the stage and the command), the determination's verification section, and ONNX export."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from fake_run import SIZE, _fake_run

from maskcrypt.cli.main import main
from maskcrypt.models import Recognizer


def test_export_onnx_matches_torch(tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    run, ids = _fake_run(tmp_path / "run")
    out = tmp_path / "e.onnx"
    assert main(["export", str(run), "--model", "encrypted", "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs torch" in printed
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["class_names"])[:2] == ["id000", "id001"] and json.loads(meta["target_masks"]) == ids
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    e = Recognizer.from_checkpoint(run / "models" / "encrypted")
    for n in (1, 7):  # dynamic batch
        x = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        logits, emb = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert np.abs(logits - e(x).numpy()).max() < 1e-3
            assert np.abs(emb - F.normalize(e.embed(x)).numpy()).max() < 1e-3
    # O with float input through the legacy exporter.
    assert main(["export", str(run), "--model", "original", "--out", str(tmp_path / "o.onnx"), "--input", "float",
                 "--exporter", "torchscript"]) == 0
    session = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, SIZE, SIZE)).astype(np.float32)
    o = Recognizer.from_checkpoint(run / "models" / "original")
    with torch.no_grad():
        assert np.abs(session.run(["logits"], {"images": x})[0] - o(torch.from_numpy(x)).numpy()).max() < 1e-3

