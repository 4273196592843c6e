"""Masks: conventions (polarity, overlay, buckets, identity), generator, import/export, library.

Polarity everywhere in memory: uint8/bool ``H x W`` with **0 = occluded, 1 = kept**.

The conventions (:mod:`maskcrypt.masks.core`) need only numpy and are imported at once;
so is the generator; the library and the file import need pyarrow and PIL and are
imported on first use, so ``from maskcrypt.masks import overlay`` (the predictor, a GPU harness) loads
neither pyarrow nor pandas nor Ray.
"""

from importlib import import_module
from typing import Any

from maskcrypt.masks.core import (
    DEFAULT_EDGES,
    NO_MASK_BUCKET,
    OUT_OF_RANGE_BUCKET,
    assign_buckets,
    bucket_label,
    buckets_from_counts,
    check_mask,
    mask_sha256,
    occlusion_ratio,
    overlay,
    pack_masks,
    unpack_masks,
)
from maskcrypt.masks.generate import StrokeStyle, generate, parse_buckets, plan_masks

#: Names served lazily, by the submodule that defines them.
_LAZY = {
    "export_masks": "io", "import_masks": "io", "read_mask_file": "io",
    "MaskBatch": "library", "MaskLibrary": "library",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"maskcrypt.masks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'maskcrypt.masks' has no attribute {name!r}")


__all__ = [
    "DEFAULT_EDGES",
    "NO_MASK_BUCKET",
    "OUT_OF_RANGE_BUCKET",
    "MaskBatch",
    "MaskLibrary",
    "StrokeStyle",
    "assign_buckets",
    "bucket_label",
    "buckets_from_counts",
    "check_mask",
    "export_masks",
    "generate",
    "import_masks",
    "mask_sha256",
    "occlusion_ratio",
    "overlay",
    "pack_masks",
    "parse_buckets",
    "plan_masks",
    "read_mask_file",
    "unpack_masks",
]
