"""RFR-Net's training losses, with the published weights as defaults.

``total = 1 * L1(valid) + 6 * L1(hole) + 0.1 * TV(hole) + 0.05 * perceptual + 120 * style``

Perceptual and style terms compare VGG16 pool1-3 features of the output and of the
composite (known pixels from the input, hole from the output) against the target's.
VGG16 weights cannot be downloaded at run time: :func:`load_vgg16_features` reads a
local torchvision ``vgg16`` state-dict file. Without one, training uses the pixel terms
only and the run records ``feature_losses: false`` so reports can say so: a weak
inpainter understates the attack.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskcrypt.core.errors import MaskcryptError


@dataclass(frozen=True)
class InpaintLossWeights:
    valid: float = 1.0
    hole: float = 6.0
    tv: float = 0.1
    perceptual: float = 0.05
    style: float = 120.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class VGG16Features(nn.Module):
    """VGG16 up to pool1, pool2 and pool3 (frozen), with ImageNet normalization inside."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.slices = nn.ModuleList([features[:5], features[5:10], features[10:17]])
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out


def load_vgg16_features(path: str | os.PathLike[str]) -> VGG16Features:
    """Build VGG16 feature slices from a local torchvision ``vgg16`` state dict (e.g. vgg16-397923af.pth)."""
    import torchvision

    if not os.path.isfile(path):
        raise MaskcryptError(f"--vgg-weights {path}: file not found (a torchvision vgg16 state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MaskcryptError(f"--vgg-weights {path}: not a readable torch state dict ({exc})") from None
    net = torchvision.models.vgg16(weights=None)
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        net.features.load_state_dict(feats)
    except RuntimeError as exc:
        raise MaskcryptError(f"--vgg-weights {path}: not VGG16 feature weights ({str(exc)[:200]})") from None
    return VGG16Features(net.features).eval()


def _gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def total_variation(x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbours, where either neighbour is in ``region``."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs()
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs()
    ry = torch.maximum(region[:, :, 1:, :], region[:, :, :-1, :])
    rx = torch.maximum(region[:, :, :, 1:], region[:, :, :, :-1])
    return (dy * ry).mean() + (dx * rx).mean()


def inpaint_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: InpaintLossWeights = InpaintLossWeights(),
    vgg: VGG16Features | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RFR-Net loss for images in [0, 1]; ``mask`` is N x 1 x H x W with 1 = known."""
    output, target = output.float(), target.float()
    mask = mask.float()
    hole = 1.0 - mask
    terms = {
        "valid": F.l1_loss(output * mask, target * mask),
        "hole": F.l1_loss(output * hole, target * hole),
    }
    comp = target * mask + output * hole
    terms["tv"] = total_variation(comp, hole)
    if vgg is not None:
        f_out, f_comp, f_tgt = vgg(output), vgg(comp), vgg(target)
        terms["perceptual"] = sum(F.l1_loss(a, t) + F.l1_loss(b, t) for a, b, t in zip(f_out, f_comp, f_tgt))
        terms["style"] = sum(F.l1_loss(_gram(a), _gram(t)) + F.l1_loss(_gram(b), _gram(t))
                             for a, b, t in zip(f_out, f_comp, f_tgt))
    w = weights.to_dict()
    total = sum(w[k] * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


def hole_psnr(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) over hole pixels only, per image, for images in [0, 1]."""
    hole = (1.0 - mask.float()).expand_as(target)
    se = ((output.float() - target.float()) ** 2 * hole).flatten(1).sum(1)
    n = hole.flatten(1).sum(1).clamp_min(1.0)
    return 10.0 * torch.log10(1.0 / (se / n).clamp_min(1e-10))


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The baseline inpainting: every hole pixel gets the image's mean known colour (images in [0, 1])."""
    m = mask.float()
    known = (image * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)
    return known.expand_as(image)
