"""Mask conventions shared by every module: polarity, overlay, ratio, buckets, identity.

Polarity (docs/architecture.md, "Conventions"): a mask is an H x W array with **0 = occluded, 1 = kept**, so
``encrypted = image * mask`` broadcast over colour channels. Buckets are half-open on
the left, ``(edges[b-1], edges[b]]`` is bucket ``b``; bucket 0 is the "no mask"
evaluation row and never stored; a mask outside every bucket is bucket -1.

Bucket membership is decided with exact rational arithmetic (integer pixel counts
against edges read as decimal fractions), so a ratio of exactly 0.1 is in bucket 1
and exactly 0.01 is out of range, whatever floating point would say.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from fractions import Fraction
from itertools import pairwise
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from maskcrypt.core.errors import MaskcryptError

if TYPE_CHECKING:
    import torch

#: The source's example edges (the NVIDIA irregular-mask test-set buckets).
DEFAULT_EDGES: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
NO_MASK_BUCKET = 0
OUT_OF_RANGE_BUCKET = -1
_HASH_TAG = b"maskcrypt-mask-v1"

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def validate_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """Return ``edges`` as a tuple after checking they are strictly increasing fractions in [0, 1]."""
    out = tuple(float(e) for e in edges)
    if len(out) < 2:
        raise MaskcryptError(f"bucket edges: need at least two edges, got {list(out)}")
    if any(not 0.0 <= e <= 1.0 for e in out) or any(b <= a for a, b in pairwise(out)):
        raise MaskcryptError(
            f"bucket edges: expected strictly increasing fractions in [0, 1], got {list(out)}"
        )
    return out


def bucket_label(bucket: int, edges: Sequence[float] = DEFAULT_EDGES) -> str:
    """Human label of a bucket, e.g. ``(0.4,0.5]``; 0 is ``no mask``, -1 ``out of range``."""
    if bucket == NO_MASK_BUCKET:
        return "no mask"
    if bucket == OUT_OF_RANGE_BUCKET:
        return "out of range"
    if not 1 <= bucket < len(edges):
        raise MaskcryptError(f"bucket: expected -1, 0 or 1..{len(edges) - 1}, got {bucket}")
    return f"({edges[bucket - 1]:g},{edges[bucket]:g}]"


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a ``uint8`` 0/1 array, raising if it is not binary.

    Accepts bool or integer arrays holding only 0 and 1; anything else (a 0/255 PNG
    array, floats, greys) is refused so that polarity mistakes cannot pass silently.
    """
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise MaskcryptError(f"{name}: expected a bool or integer 0/1 array, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise MaskcryptError(
            f"{name}: expected only 0 (occluded) and 1 (kept), found values in "
            f"[{arr.min()}, {arr.max()}] (a 0/255 image must be imported, not used directly)"
        )
    return arr.astype(np.uint8, copy=False)


def occluded_counts(masks: np.ndarray) -> np.ndarray:
    """Number of occluded (0) pixels per mask for an ``(N, H, W)`` or ``(H, W)`` array."""
    arr = np.asarray(masks)
    hw = arr.shape[-2] * arr.shape[-1]
    kept = arr.reshape(*arr.shape[:-2], -1).sum(axis=-1, dtype=np.int64)
    return hw - kept


def occlusion_ratio(masks: np.ndarray) -> np.ndarray | float:
    """Occluded pixels / all pixels, per mask (a float for one ``(H, W)`` mask)."""
    arr = check_mask(masks)
    ratio = occluded_counts(arr) / float(arr.shape[-2] * arr.shape[-1])
    return float(ratio) if arr.ndim == 2 else ratio


def buckets_from_counts(
    occluded: np.ndarray | int, total: int, edges: Sequence[float] = DEFAULT_EDGES
) -> np.ndarray:
    """Exact bucket of each mask from its occluded-pixel count and its pixel total.

    ``count/total`` lies in bucket ``b`` iff ``edges[b-1] < count/total <= edges[b]``;
    both sides are compared as integers (``count * den`` against ``num * total``) with
    each edge read as the decimal fraction it is written as (``0.1`` is 1/10).
    """
    counts = np.asarray(occluded, dtype=np.int64)
    out = np.full(counts.shape, OUT_OF_RANGE_BUCKET, dtype=np.int8)
    fr = [Fraction(repr(float(e))) for e in validate_edges(edges)]
    for b in range(1, len(fr)):
        lo, hi = fr[b - 1], fr[b]
        above_lo = counts * lo.denominator > lo.numerator * total
        within_hi = counts * hi.denominator <= hi.numerator * total
        out[above_lo & within_hi] = b
    return out


def assign_buckets(masks: np.ndarray, edges: Sequence[float] = DEFAULT_EDGES) -> np.ndarray:
    """Bucket of each mask of an ``(N, H, W)`` 0/1 array (see :func:`buckets_from_counts`)."""
    arr = check_mask(masks)
    return buckets_from_counts(occluded_counts(arr), arr.shape[-2] * arr.shape[-1], edges)


def bucket_count_range(bucket: int, total: int, edges: Sequence[float] = DEFAULT_EDGES) -> tuple[int, int]:
    """Smallest and largest occluded-pixel count that falls in ``bucket`` for ``total`` pixels.

    Raises when the bucket holds no count at all at this size (tiny images, thin buckets).
    """
    if not 1 <= bucket < len(edges):
        raise MaskcryptError(f"bucket: expected 1..{len(edges) - 1}, got {bucket}")
    lo = Fraction(repr(float(edges[bucket - 1])))
    hi = Fraction(repr(float(edges[bucket])))
    first = (lo * total).__floor__() + 1
    last = (hi * total).__floor__()
    if first > last:
        raise MaskcryptError(
            f"bucket {bucket_label(bucket, edges)}: no mask of {total} pixels has a ratio in it; "
            "use a larger --size"
        )
    return first, last


def ratio_to_counts(ratio: np.ndarray, total: int) -> np.ndarray:
    """Recover exact occluded counts from stored float ratios (``count/total`` round-trips exactly)."""
    return np.rint(np.asarray(ratio, dtype=np.float64) * total).astype(np.int64)


def pack_masks(masks: np.ndarray) -> list[bytes]:
    """Bit-pack each ``(H, W)`` 0/1 mask of an ``(N, H, W)`` array, row-major, 1 = kept."""
    arr = check_mask(masks)
    packed = np.packbits(arr.reshape(arr.shape[0], -1), axis=1)
    return [row.tobytes() for row in packed]


def unpack_masks(bits: Sequence[bytes] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`: ``(N, H, W)`` uint8 0/1 masks from packed rows."""
    nbytes = (height * width + 7) // 8
    if isinstance(bits, np.ndarray) and bits.dtype == np.uint8 and bits.ndim == 2:
        buf = bits
    else:
        joined = b"".join(bits)
        if len(joined) != nbytes * len(bits):
            raise MaskcryptError(
                f"mask bits: expected {nbytes} bytes per mask for {height}x{width}, "
                f"got {len(joined)} bytes for {len(bits)} masks"
            )
        buf = np.frombuffer(joined, dtype=np.uint8).reshape(len(bits), nbytes)
    out = np.unpackbits(buf, axis=1, count=height * width)
    return out.reshape(-1, height, width)


def mask_sha256(mask: np.ndarray) -> str:
    """Identity of one mask: sha256 over its shape and packed bits, never over a file.

    The same mask read from a PNG or made by the generator gets the same digest, so
    import dedupes on it and serving verifies it.
    """
    arr = check_mask(mask)
    if arr.ndim != 2:
        raise MaskcryptError(f"mask: expected a 2-D H x W array, got shape {arr.shape}")
    h, w = arr.shape
    digest = hashlib.sha256(_HASH_TAG)
    digest.update(struct.pack("<II", h, w))
    digest.update(np.packbits(arr, axis=None).tobytes())
    return digest.hexdigest()


def overlay(images: ArrayT, masks: ArrayT) -> ArrayT:
    """Encrypt ``images`` (uint8 ``N x C x H x W``) with one ``H x W`` mask or ``N`` masks.

    Returns ``images * mask`` broadcast over channels, as one new array of the images'
    dtype and device (numpy or torch alike); neither input is copied or modified.
    A mask must be 0/1 (0 = occluded); shapes are checked so a transposed or resized
    mask fails loudly instead of broadcasting into nonsense.
    """
    if images.ndim != 4:
        raise MaskcryptError(f"images: expected N x C x H x W, got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    if tuple(masks.shape[-2:]) != (h, w):
        raise MaskcryptError(
            f"masks: expected height x width {h}x{w} to match the images, got "
            f"{tuple(masks.shape[-2:])} (rebuild the library with --size)"
        )
    if masks.ndim == 2:
        view = masks[None, None]
    elif masks.ndim == 3 and masks.shape[0] == n:
        view = masks[:, None]
    else:
        raise MaskcryptError(
            f"masks: expected one H x W mask or {n} masks (N x H x W), got shape {tuple(masks.shape)}"
        )
    if isinstance(images, np.ndarray):
        out = np.empty_like(images)
        np.multiply(images, view, out=out, casting="unsafe")
        return out
    return images * view.to(images.dtype)
