from __future__ import annotations

import numpy as np
import pytest
import torch

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks import (
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


def _mask_with_holes(h: int, w: int, holes: int) -> np.ndarray:
    m = np.ones(h * w, dtype=np.uint8)
    m[:holes] = 0
    return m.reshape(h, w)


def test_overlay_numpy_one_mask_broadcasts_over_batch_and_channels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    before = images.copy()
    mask = _mask_with_holes(8, 8, 20)
    out = overlay(images, mask)
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out, images * mask[None, None])
    assert (out[:, :, mask == 0] == 0).all()
    np.testing.assert_array_equal(images, before)  # inputs untouched
    assert not np.shares_memory(out, images)


def test_overlay_numpy_and_torch_agree_with_per_image_masks():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 1, 6, 5), dtype=np.uint8)
    masks = rng.integers(0, 2, (3, 6, 5), dtype=np.uint8)
    out_np = overlay(images, masks)
    out_t = overlay(torch.from_numpy(images), torch.from_numpy(masks))
    assert out_t.dtype == torch.uint8
    np.testing.assert_array_equal(out_np, out_t.numpy())
    for i in range(3):
        np.testing.assert_array_equal(out_np[i, 0], images[i, 0] * masks[i])


@pytest.mark.parametrize(
    ("images", "masks", "needle"),
    [
        (np.zeros((2, 3, 8, 8), np.uint8), np.ones((8, 7), np.uint8), "8x8"),
        (np.zeros((2, 3, 8, 8), np.uint8), np.ones((3, 8, 8), np.uint8), "one H x W mask or 2 masks"),
        (np.zeros((3, 8, 8), np.uint8), np.ones((8, 8), np.uint8), "N x C x H x W"),
    ],
)
def test_overlay_rejects_wrong_shapes(images, masks, needle):
    with pytest.raises(MaskcryptError, match=needle):
        overlay(images, masks)


def test_bucket_edges_are_exact():
    # 10 x 10 = 100 pixels: counts map to exact hundredths.
    total = 100
    counts = np.array([0, 1, 2, 10, 11, 20, 21, 50, 51, 60, 61, 100])
    expected = [-1, -1, 1, 1, 2, 2, 3, 5, 6, 6, -1, -1]
    np.testing.assert_array_equal(buckets_from_counts(counts, total), expected)
    # A ratio of exactly 0.1 is in bucket 1 even where float arithmetic is inexact (0.3 = 30/100).
    assert buckets_from_counts(30, 100) == 3
    assert buckets_from_counts(3, 10) == 3
    assert buckets_from_counts(7, 10) == -1
    # Through the mask functions as well.
    assert assign_buckets(_mask_with_holes(10, 10, 10)[None])[0] == 1
    assert assign_buckets(_mask_with_holes(10, 10, 1)[None])[0] == -1  # exactly 0.01: out of range
    assert occlusion_ratio(_mask_with_holes(10, 10, 10)) == 0.1


def test_bucket_labels_and_custom_edges():
    assert bucket_label(0) == "no mask"
    assert bucket_label(-1) == "out of range"
    assert bucket_label(5) == "(0.4,0.5]"
    np.testing.assert_array_equal(buckets_from_counts([0, 25, 26, 100], 100, edges=(0.0, 0.25, 1.0)), [-1, 1, 2, 2])
    with pytest.raises(MaskcryptError, match="strictly increasing"):
        buckets_from_counts([1], 10, edges=(0.5, 0.2))


def test_check_mask_refuses_non_binary_arrays():
    assert check_mask(np.array([[True, False]])).dtype == np.uint8
    with pytest.raises(MaskcryptError, match="0/255"):
        check_mask(np.array([[0, 255]], dtype=np.uint8))
    with pytest.raises(MaskcryptError, match="dtype float"):
        check_mask(np.array([[0.0, 1.0]]))


def test_sha256_depends_on_bits_and_shape_only():
    m = _mask_with_holes(8, 8, 5)
    assert mask_sha256(m) == mask_sha256(m.astype(bool)) == mask_sha256(m.astype(np.int64))
    assert mask_sha256(m) != mask_sha256(_mask_with_holes(8, 8, 6))
    # Same bits, different shape: different masks.
    assert mask_sha256(np.ones((4, 16), np.uint8)) != mask_sha256(np.ones((8, 8), np.uint8))


def test_pack_unpack_roundtrip_odd_sizes():
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 2, (5, 7, 9), dtype=np.uint8)
    packed = pack_masks(masks)
    assert all(len(p) == (7 * 9 + 7) // 8 for p in packed)
    np.testing.assert_array_equal(unpack_masks(packed, 7, 9), masks)
    with pytest.raises(MaskcryptError, match="bytes per mask"):
        unpack_masks([b"\x00"], 7, 9)
