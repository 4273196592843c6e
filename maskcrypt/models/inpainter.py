"""The inpainting attacker R: RFR-Net (Li et al., CVPR 2020, "Recurrent Feature Reasoning").

The structure follows the paper; only width and iteration count are parameters
(``width=64, iterations=6`` is the published network, ~31M parameters):

1. **Head**: two partial convolutions (7x7 stride 2, then 7x7) lift the masked image
   to ``width`` feature maps at half resolution and update the mask.
2. **Recurrent feature reasoning**, ``iterations`` times with shared parameters:
   *area identification* - two partial convolutions that fill the rim of the hole and
   shrink it (the updated mask says what is known now) - then *feature reasoning* - an
   encoder (``w -> 2w -> 4w -> 8w``, stride 2, then three dilated convolutions) and a
   decoder with skip connections and **knowledge-consistent attention** at quarter
   resolution. The attention compares every position with every other (patch size 1),
   propagates the scores over a 3x3 neighbourhood, and blends them with the previous
   iteration's scores through a learned ratio where the previous mask was known, so
   successive iterations agree on what they borrow.
3. **Merge**: the features of all iterations are averaged, each position weighted by
   whether that iteration knew it (mask-weighted mean).
4. **Tail**: a transposed convolution back to full resolution, concatenation with the
   input image, a partial convolution, a bottleneck block, and an output convolution;
   a sigmoid puts the image in [0, 1].

Polarity: the mask is 1 = known (kept), 0 = hole, as everywhere in maskcrypt.
Inputs and outputs of :meth:`Inpainter.inpaint` are uint8 N x C x H x W; training
uses :meth:`Inpainter.forward` on floats in [0, 1]. H and W must be multiples of 16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.models.checkpoint import load_model


@dataclass(frozen=True)
class InpainterConfig:
    """RFR-Net size. The published network is ``width=64, iterations=6`` at 256 px."""

    width: int = 16
    iterations: int = 3
    channels: int = 3
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.width < 4 or self.iterations < 1:
            raise MaskcryptError(f"inpainter: needs width >= 4 and iterations >= 1, got {self.width}, "
                                 f"{self.iterations}")
        if self.image_size % 16:
            raise MaskcryptError(f"inpainter: image size must be a multiple of 16, got {self.image_size}")
        if self.channels not in (1, 3):
            raise MaskcryptError(f"inpainter: channels must be 1 or 3, got {self.channels}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InpainterConfig:
        return cls(**d)


class PartialConv2d(nn.Module):
    """Partial convolution (Liu et al. 2018), multi-channel mask variant.

    The output at a position is the convolution over its known inputs only, rescaled by
    (window size / known inputs); the mask becomes 1 wherever any input was known.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
        self.register_buffer("ones", torch.ones(1, cin, kernel, kernel), persistent=False)
        self.window = float(cin * kernel * kernel)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            m = mask.expand(-1, x.shape[1], -1, -1) if mask.shape[1] == 1 else mask
            known = F.conv2d(m.to(self.ones.dtype), self.ones, stride=self.stride, padding=self.padding)
            new_mask = known.clamp(0, 1)
            ratio = self.window / (known + 1e-8) * new_mask
        out = self.conv(x * m.to(x.dtype))
        bias = self.conv.bias
        if bias is not None:
            b = bias.view(1, -1, 1, 1)
            out = ((out - b) * ratio.to(out.dtype) + b) * new_mask.to(out.dtype)
        else:
            out = out * ratio.to(out.dtype)
        return out, new_mask.expand(-1, out.shape[1], -1, -1)


#: What one iteration's attention hands the next: its scores and the mask it saw.
AttState = tuple[torch.Tensor, torch.Tensor]


class KnowledgeConsistentAttention(nn.Module):
    """Self-attention at patch size 1 with 3x3 score propagation, blended across iterations."""

    def __init__(self, channels: int):
        super().__init__()
        self.ratio = nn.Parameter(torch.ones(1))
        self.combine = nn.Conv2d(channels * 2, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, prev: AttState | None) -> tuple[torch.Tensor, AttState]:
        n, c, h, w = x.shape
        if mask.shape[-2:] != (h, w):
            mask = F.interpolate(mask, size=(h, w), mode="nearest")
        flat = x.reshape(n, c, h * w)
        keys = flat / (flat.pow(2).sum(1, keepdim=True).sqrt() + 1e-7)  # unit-norm key per position
        scores = torch.bmm(keys.transpose(1, 2), flat).view(n, h * w, h, w)  # (key, query-y, query-x)
        scores = F.avg_pool2d(scores, 3, 1, 1) * 9.0  # propagate over a 3x3 neighbourhood
        att = F.softmax(scores, dim=1)
        if prev is not None:
            prev_att, prev_mask = prev
            r = self.ratio.abs() + 1e-7
            att = (prev_att * prev_mask + att * r) / (prev_mask + r)
        out = torch.bmm(keys, att.view(n, h * w, h * w)).view(n, c, h, w)
        merged = self.combine(torch.cat([out, x], dim=1))
        return merged, (att, mask[:, :1])


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _dec(cin: int, cout: int, up: bool) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False) if up else nn.Conv2d(cin, cout, 3, 1, 2, 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


class RFRModule(nn.Module):
    """The shared encoder-decoder of one reasoning step, with the attention in the decoder."""

    def __init__(self, w: int):
        super().__init__()
        self.enc = nn.ModuleList([_cbr(w, 2 * w, 2), _cbr(2 * w, 4 * w, 2), _cbr(4 * w, 8 * w, 2),
                                  _cbr(8 * w, 8 * w, 1, 2), _cbr(8 * w, 8 * w, 1, 2), _cbr(8 * w, 8 * w, 1, 2)])
        # Decoder steps 5, 4 (dilated, 1/8), 3 (up to 1/4; attention), 2 (1/2), 1 (full).
        self.dec5 = _dec(16 * w, 8 * w, up=False)
        self.dec4 = _dec(16 * w, 8 * w, up=False)
        self.dec3 = _dec(16 * w, 8 * w, up=True)
        self.dec2 = _dec(12 * w, 4 * w, up=True)
        self.dec1 = _dec(6 * w, w, up=True)
        self.att = KnowledgeConsistentAttention(8 * w)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, prev):
        hs = [x]
        for layer in self.enc:
            hs.append(layer(hs[-1]))
        h = hs[6]
        h = self.dec5(torch.cat([h, hs[5]], 1))
        h = self.dec4(torch.cat([h, hs[4]], 1))
        h = self.dec3(torch.cat([h, hs[3]], 1))
        h, prev = self.att(h, mask, prev)
        h = self.dec2(torch.cat([h, hs[2]], 1))
        h = self.dec1(torch.cat([h, hs[1]], 1))
        return h, prev


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 with 4x expansion) with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 4
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class Inpainter(nn.Module):
    """RFR-Net. ``forward(image01, mask)`` -> image in [0, 1]; ``inpaint(uint8, mask)`` -> uint8."""

    def __init__(self, config: InpainterConfig):
        super().__init__()
        self.config = config
        w, c = config.width, config.channels
        self.head1 = PartialConv2d(c, w, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(w)
        self.head2 = PartialConv2d(w, w, 7, 1, 3)
        self.bn2 = nn.BatchNorm2d(w)
        self.area1 = PartialConv2d(w, w, 7, 1, 3)
        self.area2 = PartialConv2d(w, w, 7, 1, 3)
        self.bn_area = nn.BatchNorm2d(w)
        self.rfr = RFRModule(w)
        self.up = nn.ConvTranspose2d(w, w, 4, 2, 1, bias=False)
        self.bn_up = nn.BatchNorm2d(w)
        self.tail1 = PartialConv2d(w + c, 32, 3, 1, 1)
        self.tail2 = Bottleneck(32)
        self.out = nn.Conv2d(64, c, 3, 1, 1, bias=False)

    @classmethod
    def from_checkpoint(cls, path: Any, device: str | torch.device = "cpu") -> Inpainter:
        """Load from a checkpoint dir or a model folder (its newest complete checkpoint), in eval mode."""
        return load_model(path, "inpainter", lambda d: cls(InpainterConfig.from_dict(d)), device)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``image`` float N x C x H x W in [0, 1] (holes may hold anything), ``mask`` N x 1 x H x W (1 = known)."""
        _, _, h, w = image.shape
        if h % 16 or w % 16:
            raise MaskcryptError(f"inpainter: image height and width must be multiples of 16, got {h}x{w}")
        mask = mask.to(image.dtype)
        image = image * mask
        x, m = self.head1(image, mask)
        x = F.relu(self.bn1(x))
        x, m = self.head2(x, m)
        x = F.relu(self.bn2(x))
        feats, masks = [], []
        prev = None
        for _ in range(self.config.iterations):
            x, m = self.area1(x, m)
            x, m = self.area2(x, m)
            x = F.leaky_relu(self.bn_area(x))
            x, prev = self.rfr(x, m[:, :1], prev)
            x = x * m
            feats.append(x)
            masks.append(m)
        fs, ms = torch.stack(feats, 2), torch.stack(masks, 2)
        merged = (fs * ms).mean(2) / (ms.mean(2) + 1e-7)
        x = F.leaky_relu(self.bn_up(self.up(merged)))
        m_full = F.interpolate(masks[-1], scale_factor=2.0, mode="nearest")
        x, _ = self.tail1(torch.cat([image, x], 1), torch.cat([mask.expand(-1, image.shape[1], -1, -1), m_full], 1))
        x = F.leaky_relu(x)
        x = torch.cat([x, self.tail2(x)], 1)
        return torch.sigmoid(self.out(x))

    @torch.inference_mode()
    def inpaint(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """uint8 images (any content in the holes) and 0/1 masks -> uint8 images with the holes filled.

        Known pixels are kept exactly (the output is composited), as an attacker would.
        """
        x = images.float() / 255.0
        m = masks.view(masks.shape[0], 1, *masks.shape[-2:]).to(x.dtype) if masks.dim() == 3 else masks.to(x.dtype)
        if m.shape[0] == 1 and x.shape[0] > 1:
            m = m.expand(x.shape[0], -1, -1, -1)
        out = self.forward(x, m).float()
        comp = x * m + out * (1 - m)
        return (comp * 255.0).round().clamp(0, 255).to(torch.uint8)

