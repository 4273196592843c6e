"""ONNX out: a run's recognizer as one self-contained ONNX graph (``maskcrypt export RUN --format onnx``).

The graph is the recognizer as every stage runs it, normalization inside:

* input ``images``: ``N x C x H x W`` with a dynamic batch ``N``; ``uint8`` pixels
  (default) or ``float32`` pixels in 0..255 (``--input float``), already masked (the
  client or the server multiplies by the target mask first: ``image * mask``, 0 =
  occluded, as :mod:`maskcrypt.serving.requests` does);
* outputs ``logits`` (``N x classes``; an ArcFace head gives its scaled cosines) and
  ``embedding`` (``N x 512``, unit length: cosine similarity is a dot product).

The file carries its metadata (``metadata_props``: class names, image size, channels,
input type, the run's target mask ids, the source checkpoint's sha256), and is checked
against the torch model with onnxruntime right after export; the largest differences are
returned and recorded in ``RUN/run.json``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import atomic_path
from maskcrypt.core.rundir import Run
from maskcrypt.models import Recognizer

MODELS = ("encrypted", "original")
INPUTS = ("uint8", "float")
#: ``dynamo``: torch.export-based (torch's default since 2.9, needs onnxscript); ``torchscript``: the legacy
#: tracer (deprecated by torch, several times faster to export; the same graph for these networks).
EXPORTERS = ("dynamo", "torchscript")


def _wrapper(model: Any) -> Any:
    import torch
    import torch.nn.functional as F

    class Deployable(torch.nn.Module):
        """images -> (logits, unit embedding); the recognizer normalizes the pixels itself."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = self.model.embed(images)
            logits = self.model.classifier(emb)  # an ArcFace head without labels: its scaled cosines
            return logits.float(), F.normalize(emb.float(), dim=1)

    return Deployable().eval()


def export_onnx(run: str | os.PathLike[str] | Run, out: str | os.PathLike[str], model: str = "encrypted",
                input_type: str = "uint8", opset: int = 18, check: bool = True,
                exporter: str = "dynamo") -> dict[str, Any]:
    """Export ``RUN/models/<model>`` to ``out`` (written atomically); returns what was written and the check."""
    import onnx
    import torch

    if model not in MODELS:
        raise MaskcryptError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    if input_type not in INPUTS:
        raise MaskcryptError(f"--input: expected one of {', '.join(INPUTS)}, got {input_type!r}")
    if exporter not in EXPORTERS:
        raise MaskcryptError(f"--exporter: expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    run = Run.open(run)
    paths = run.paths
    rec = Recognizer.from_checkpoint(paths.models / model).float().eval()
    meta = rec.checkpoint_meta
    c, size = rec.config.channels, rec.config.image_size
    net = _wrapper(rec)
    dtype = torch.uint8 if input_type == "uint8" else torch.float32
    example = torch.randint(0, 256, (2, c, size, size), dtype=torch.uint8).to(dtype)
    targets = []
    if (paths.root / "targets.json").exists():
        targets = [t["mask_id"] for t in json.loads((paths.root / "targets.json").read_text()).get("targets", [])]
    props = {"maskcrypt_model": model, "class_names": json.dumps(meta.get("class_names", [])),
             "image_size": str(size), "channels": str(c), "input": f"{input_type} N x {c} x {size} x {size}, 0..255, "
             "masked (image * mask, 0 = occluded)", "outputs": "logits N x classes; embedding N x 512, unit length",
             "target_masks": json.dumps(targets), "checkpoint_sha256": str(meta.get("model_sha256", "")),
             "checkpoint": str(getattr(rec, "checkpoint_path", ""))}
    t0 = time.perf_counter()
    with atomic_path(out, suffix=".onnx") as tmp:
        _export(net, example, tmp, opset, exporter)
        proto = onnx.load(str(tmp))
        for k, v in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = check_onnx(tmp, net, c, size, dtype) if check else {}
    summary = {"model": model, "out": str(Path(out).resolve()), "input": input_type, "opset": opset,
               "exporter": exporter,
               "bytes": Path(out).stat().st_size, "seconds": round(time.perf_counter() - t0, 1), **diff}
    if paths.run_json.exists():
        run.update(f"export_{model}", summary)
    return summary


def _export(net: Any, example: Any, path: Path, opset: int, exporter: str) -> None:
    """torch.onnx.export with a dynamic batch."""
    import torch

    names = {"input_names": ["images"], "output_names": ["logits", "embedding"], "opset_version": opset}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1)
                torch.onnx.export(net, (example,), str(path), dynamic_shapes={"images": {0: batch}}, dynamo=True,
                                  external_data=False, verbose=False, **names)
            else:
                torch.onnx.export(net, (example,), str(path), dynamo=False,
                                  dynamic_axes={k: {0: "batch"} for k in ("images", "logits", "embedding")}, **names)
    except Exception as exc:  # the exporter's own error types vary by version
        raise MaskcryptError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None


def check_onnx(path: str | os.PathLike[str], net: Any, channels: int, size: int, dtype: Any,
               batches: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Largest |onnxruntime - torch| on logits and embeddings, over random batches of several sizes."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {"max_abs_diff_logits": 0.0, "max_abs_diff_embedding": 0.0}
    g = torch.Generator().manual_seed(0)
    for n in batches:
        x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g).to(dtype)
        with torch.inference_mode():
            logits, emb = net(x)
        got_logits, got_emb = session.run(["logits", "embedding"], {"images": x.numpy()})
        worst["max_abs_diff_logits"] = max(worst["max_abs_diff_logits"],
                                           float(np.abs(got_logits - logits.numpy()).max()))
        worst["max_abs_diff_embedding"] = max(worst["max_abs_diff_embedding"],
                                              float(np.abs(got_emb - emb.numpy()).max()))
    return worst
