"""``maskcrypt export``: a run's recognizer as ONNX, checked with onnxruntime."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_export(args: argparse.Namespace) -> int:
    """A run's recognizer as ONNX, checked against torch with onnxruntime."""
    from maskcrypt.export import export_onnx
    from maskcrypt.pipeline import absolute_path

    s = export_onnx(absolute_path(args.run), absolute_path(args.out), model=args.model, input_type=args.input,
                    opset=args.opset, check=not args.no_check, exporter=args.exporter)
    print(f"wrote {s['out']} ({s['bytes'] / 1e6:.1f} MB, {s['model']} model, {s['input']} input N x C x H x W, "
          f"dynamic batch, opset {s['opset']}, {s['exporter']} exporter) in {s['seconds']}s")
    if "max_abs_diff_logits" in s:
        print(f"onnxruntime vs torch: max |diff| logits {s['max_abs_diff_logits']:.2e}, "
              f"embeddings {s['max_abs_diff_embedding']:.2e}")
    return 0


def add_parser(sub: Any) -> None:
    """The ``export`` command(s) on the top-level subparsers."""
    ex = sub.add_parser("export", help="export a run's recognizer (ONNX), checked with onnxruntime")
    ex.add_argument("run", nargs="?", default="runs/default", help="a trained run (default runs/default)")
    ex.add_argument("--model", default="encrypted", choices=("encrypted", "original"))
    ex.add_argument("--format", default="onnx", choices=("onnx",))
    ex.add_argument("--out", required=True, help="the .onnx file to write")
    ex.add_argument("--input", default="uint8", choices=("uint8", "float"),
                    help="input type: uint8 pixels, or float32 pixels in 0..255 (normalization is inside)")
    ex.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default 18)")
    ex.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                    help="torch's exporter: dynamo (default) or the legacy torchscript tracer (faster, deprecated)")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with torch")
    ex.set_defaults(func=cmd_export)
