"""Fill fidelity (maskcrypt.models.fidelity) against scikit-image's maintained PSNR and SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from maskcrypt.models.fidelity import PSNR_CAP, fill_fidelity, ssim_map


def _pair(seed: int, size: tuple[int, int] = (20, 23)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (3, *size), dtype=np.uint8)
    a[:, 5:12] = 200  # a flat band: SSIM's smooth-region branch
    noise = rng.integers(-40, 41, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    mask = (rng.random(size) > 0.35).astype(np.uint8)
    b = np.where(mask[None] == 1, a, b)  # a fill keeps the known pixels
    return a, b, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_figure_equals_scikit_image_per_image(seed):
    a, b, mask = _pair(seed)
    got = fill_fidelity(torch.from_numpy(a)[None], torch.from_numpy(b)[None], torch.from_numpy(mask))
    mean, full = structural_similarity(a, b, data_range=255, channel_axis=0, full=True)
    hole = np.broadcast_to(mask[None] == 0, a.shape)
    assert float(got["ssim_image"][0]) == pytest.approx(mean, abs=1e-9)
    assert float(got["ssim_hole"][0]) == pytest.approx(full[hole].mean(), abs=1e-9)
    assert float(got["psnr_image"][0]) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert float(got["psnr_hole"][0]) == pytest.approx(
        peak_signal_noise_ratio(a[hole], b[hole], data_range=255), abs=1e-9)
    # The map itself, pixel by pixel (borders included: where the window's mirroring shows).
    assert np.allclose(ssim_map(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0].numpy(), full, atol=1e-9)


def test_a_batch_is_its_images_one_by_one_and_per_image_masks_work():
    pairs = [_pair(s) for s in range(3)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    m = torch.from_numpy(np.stack([p[2] for p in pairs]))
    batch = fill_fidelity(a, b, m)
    for i in range(3):
        one = fill_fidelity(a[i:i + 1], b[i:i + 1], m[i])
        for k, v in one.items():
            assert float(batch[k][i]) == pytest.approx(float(v[0]), abs=1e-6), k


def test_perfect_fills_and_masks_that_hide_nothing_score_the_cap_and_one():
    a, _, mask = _pair(4)
    x = torch.from_numpy(a)[None]
    same = fill_fidelity(x, x, torch.from_numpy(mask))
    assert float(same["psnr_hole"][0]) == PSNR_CAP and float(same["ssim_hole"][0]) == pytest.approx(1.0)
    nothing_hidden = fill_fidelity(x, x.flip(-1), torch.ones(mask.shape, dtype=torch.uint8))
    assert float(nothing_hidden["psnr_hole"][0]) == PSNR_CAP and float(nothing_hidden["ssim_hole"][0]) == 1.0
    assert float(nothing_hidden["psnr_image"][0]) < 30  # the image figures still see the flipped pixels


def test_wrong_shapes_and_images_below_the_window_are_named():
    with pytest.raises(ValueError, match="one shape"):
        ssim_map(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="smaller than the 7 x 7 window"):
        ssim_map(torch.zeros(1, 3, 6, 8), torch.zeros(1, 3, 6, 8))
