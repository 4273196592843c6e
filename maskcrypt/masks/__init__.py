"""Masks: conventions (polarity, overlay, buckets, identity), generator, import/export, library.

Polarity everywhere in memory: uint8/bool ``H x W`` with **0 = occluded, 1 = kept**.
"""

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
from maskcrypt.masks.io import export_masks, import_masks, read_mask_file
from maskcrypt.masks.library import MaskBatch, MaskLibrary

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
