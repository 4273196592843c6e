"""How faithful a fill is: PSNR and SSIM of an inpainted image against the original, in the hole and overall.

Papers on inpainting and on privacy-preserving recognition report reconstruction
quality as PSNR and SSIM. The hole figures are the primary ones: every attacker copies
the known pixels, so over the whole image a fill scores well however poor its hole is.
These figures measure fidelity, not privacy: identity can leak from a blurry fill, and a
sharp fill can be of the wrong face.

Pure torch on whatever device the images are (the evaluation actors' GPU or CPU), in
float64: SSIM's variances are differences of squares of 8-bit values, which float32
rounds at ~1e-4 of SSIM; the work is small beside the recognizers'. SSIM follows
scikit-image's ``structural_similarity`` with its defaults for 8-bit images (a 7 x 7
uniform window, ``data_range`` 255, K1 0.01, K2 0.03, the sample covariance, borders
mirrored as ``scipy.ndimage``'s ``reflect`` mode), per channel;
``tests/unit/test_fidelity.py`` checks every figure against scikit-image itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: SSIM's window side (scikit-image's default for 2-D images).
WIN = 7
#: Pixel range of 8-bit images: PSNR's peak and SSIM's ``data_range``.
PEAK = 255.0
#: PSNR of a perfect fill (zero error) is infinite; it is capped here, as the training report's hole PSNR is.
PSNR_CAP = 100.0


def _reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two axes by repeating the edge mirror-wise (``d c b a | a b c d``): scipy's ``reflect``."""
    x = torch.cat([x[..., :pad].flip(-1), x, x[..., -pad:].flip(-1)], dim=-1)
    return torch.cat([x[..., :pad, :].flip(-2), x, x[..., -pad:, :].flip(-2)], dim=-2)


def _box(x: torch.Tensor, win: int) -> torch.Tensor:
    """The mean over a ``win`` x ``win`` window centred on every pixel (N x C x H x W), borders reflected."""
    n, c, h, w = x.shape
    padded = _reflect(x, win // 2)
    return F.avg_pool2d(padded.reshape(n * c, 1, *padded.shape[-2:]), win, stride=1).reshape(n, c, h, w)


def ssim_map(a: torch.Tensor, b: torch.Tensor, win: int = WIN, data_range: float = PEAK) -> torch.Tensor:
    """The SSIM map of two image batches (N x C x H x W, any dtype, values in ``[0, data_range]``), per channel."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim_map: expected two N x C x H x W batches of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if min(a.shape[-2:]) < win:
        raise ValueError(f"ssim_map: images of {tuple(a.shape[-2:])} px are smaller than the {win} x {win} window")
    x, y = a.double(), b.double()
    ux, uy = _box(x, win), _box(y, win)
    norm = win * win / (win * win - 1)  # the sample covariance
    vx = norm * (_box(x * x, win) - ux * ux)
    vy = norm * (_box(y * y, win) - uy * uy)
    vxy = norm * (_box(x * y, win) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _psnr(se: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    mse = se / count.clamp_min(1.0)
    return (10.0 * torch.log10(PEAK**2 / mse.clamp_min(1e-12))).clamp_max(PSNR_CAP)


def fill_fidelity(original: torch.Tensor, filled: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: ``psnr_hole``, ``ssim_hole``, ``psnr_image``, ``ssim_image`` of ``filled`` against ``original``.

    ``original``, ``filled``: N x C x H x W, 8-bit values (uint8 or float); ``mask``: the
    encryption mask (1 keeps, 0 hides), H x W or N x H x W. Hole figures: the squared
    error and the SSIM map averaged over the hole's pixels of every channel (the map is
    computed on the whole image, so a hole pixel's window sees its known neighbours).
    Image figures: PSNR over every pixel; SSIM as scikit-image's mean (the map without
    the window's half-width at each border, averaged over channels). An image whose mask
    hides nothing gets the perfect scores (PSNR at :data:`PSNR_CAP`, SSIM 1): nothing
    was there to reconstruct.
    """
    x, y = original.double(), filled.double()
    m = mask if mask.dim() == 3 else mask[None].expand(x.shape[0], -1, -1)
    hole = (m == 0)[:, None].expand_as(x).double()
    se = (x - y) ** 2
    s = ssim_map(x, y)
    pad = WIN // 2
    n_hole = hole.flatten(1).sum(1)
    ssim_hole = torch.where(n_hole > 0, (s * hole).flatten(1).sum(1) / n_hole.clamp_min(1.0),
                            torch.ones_like(n_hole))
    return {
        "psnr_hole": _psnr((se * hole).flatten(1).sum(1), n_hole),
        "ssim_hole": ssim_hole,
        "psnr_image": _psnr(se.flatten(1).sum(1), torch.full_like(n_hole, float(se[0].numel()))),
        "ssim_image": s[..., pad:s.shape[-2] - pad, pad:s.shape[-1] - pad].flatten(1).mean(1),
    }
