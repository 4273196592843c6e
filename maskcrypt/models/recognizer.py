"""The recognizers O and E: residual networks with a 512-d embedding in front of the classifier.

The method (docs/method.md, "Models"): O and E are residual networks whose global-average-pool output is a
512-dimensional embedding in front of the final fully connected classifier. One
:class:`Recognizer` serves every backbone:

* ``compact``: a small residual network of the ResNet design (3x3 stem, four stages
  of basic blocks, widths ``w, 2w, 4w, 8w``) with width and depth configurable: the
  laptop default (torchvision's BasicBlock refuses width multipliers);
* ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's, untrained, with the stem
  adapted below 96 px (3x3 stride-1 conv, no max-pool) so small faces keep resolution;
* ``iresnet18`` / ``iresnet34`` / ``iresnet50`` / ``iresnet100``: insightface's IR-ResNet
  (BN-conv-BN-PReLU-conv-BN blocks, stride in the second conv) for face recognition at
  scale. We pool globally instead of flattening the last map, so any input size works
  and the embedding is a GAP output as the method says.
* ``layout="insightface"`` (IR-ResNets only): insightface arcface_torch's exact network,
  key for key, with its head (BN2d, dropout, flatten, ``fc`` 512*7*7 -> 512, ``features``
  BN1d) instead of pooling: what its published ``backbone.pth`` weights load into
  (:meth:`Recognizer.from_weights`). The flatten needs a 7 x 7 map, so 112 x 112 input
  only. This departs from METHOD's pooled embedding on purpose: it is how those weights
  were trained.

After pooling: a linear projection to 512 where the backbone's width differs
(ResNet-50's 2048), BatchNorm, then the classifier: a plain linear layer (``softmax``
head) or an ArcFace margin head (``arcface``, s=64, m=0.5), whose logits at inference
are the scaled cosines to the class centres.

Inputs are uint8 N x C x H x W; the model normalizes inside, so masks and images stay
compact in transit and "mask, then recognize" is ``model(overlay(x, m))``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.models.checkpoint import load_model
from maskcrypt.models.weights import config_for_weights, detect_layout, load_weights, read_state_dict

ARCHS = ("compact", "resnet18", "resnet34", "resnet50", "iresnet18", "iresnet34", "iresnet50", "iresnet100")
HEADS = ("softmax", "arcface")
#: ``maskcrypt``: our networks (pooled embedding); ``insightface``: arcface_torch's IR-ResNet, key for key.
LAYOUTS = ("maskcrypt", "insightface")
#: insightface's head flattens the last 7 x 7 map of a 112 x 112 face.
INSIGHTFACE_SIZE = 112
EMBED_DIM = 512


@dataclass(frozen=True)
class RecognizerConfig:
    """Architecture of a recognizer (not its training: see ``TrainConfig``)."""

    arch: str = "compact"
    num_classes: int = 2
    channels: int = 3
    image_size: int = 32
    width: int = 32  # compact only: channels of the first stage
    depth: tuple[int, ...] = (1, 1, 1, 1)  # compact only: blocks per stage
    head: str = "softmax"
    arcface_s: float = 64.0
    arcface_m: float = 0.5
    dropout: float = 0.0
    mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    layout: str = "maskcrypt"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise MaskcryptError(f"recognizer: layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.layout == "insightface":
            if not self.arch.startswith("iresnet"):
                raise MaskcryptError(f"recognizer: the insightface layout is an IR-ResNet, got arch {self.arch!r}")
            if self.image_size != INSIGHTFACE_SIZE:
                raise MaskcryptError(
                    f"--size {self.image_size}: insightface IR-ResNet weights need {INSIGHTFACE_SIZE} x "
                    f"{INSIGHTFACE_SIZE} images (their head flattens a 7 x 7 map into fc); use --size "
                    f"{INSIGHTFACE_SIZE}"
                )
        if self.arch not in ARCHS:
            raise MaskcryptError(f"--arch: unknown architecture {self.arch!r}, expected one of {', '.join(ARCHS)}")
        if self.head not in HEADS:
            raise MaskcryptError(f"--head: expected one of {', '.join(HEADS)}, got {self.head!r}")
        if self.num_classes < 2:
            raise MaskcryptError(f"recognizer: needs at least 2 classes, got {self.num_classes}")
        if self.channels not in (1, 3):
            raise MaskcryptError(f"recognizer: channels must be 1 or 3, got {self.channels}")
        if self.width < 4 or not self.depth or min(self.depth) < 1 or len(self.depth) != 4:
            raise MaskcryptError(f"recognizer: compact needs width >= 4 and 4 stage depths >= 1, got "
                                 f"width={self.width} depth={self.depth}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depth"] = list(self.depth)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["layout"] == "maskcrypt":  # the default: absent, so configs (and job hashes) from before it stay equal
            del d["layout"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecognizerConfig:
        d = dict(d)
        for k in ("depth", "mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# -- compact ResNet --------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, as in ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x), inplace=True)


class CompactResNet(nn.Module):
    def __init__(self, channels: int, width: int, depth: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = width
        for i, n in enumerate(depth):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


# -- insightface IR-ResNet -------------------------------------------------------------------
class IRBlock(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus shortcut (insightface's IBasicBlock)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=1e-5), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5), nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


_IR_LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
              "iresnet100": (3, 13, 30, 3)}


class IResNet(nn.Module):
    def __init__(self, channels: int, layers: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks: list[nn.Module] = []
        cin = 64
        for i, n in enumerate(layers):
            cout = 64 * 2**i
            for j in range(n):
                blocks.append(IRBlock(cin, cout, 2 if j == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.body(self.stem(x)))


class InsightfaceBlock(nn.Module):
    """insightface's ``IBasicBlock`` with its attribute names: bn1-conv1-bn2-prelu-conv2(stride)-bn3 + downsample."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class InsightfaceIResNet(nn.Module):
    """arcface_torch's IR-ResNet: stem, four stages of stride 2, then BN2d-dropout-flatten-fc-BN1d = the embedding.

    Module names are insightface's (``conv1``, ``bn1``, ``prelu``, ``layer1..4``, ``bn2``,
    ``fc``, ``features``), so its ``backbone.pth`` state dicts load key for key under the
    ``backbone.`` prefix. ``features``' scale is fixed at 1 and not trained, as there.
    """

    def __init__(self, channels: int, layers: tuple[int, ...], dropout: float = 0.0, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, n in enumerate(layers):
            cout = 64 * 2**i
            blocks = [InsightfaceBlock(cin, cout, 2)] + [InsightfaceBlock(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * 7 * 7, embed_dim)
        self.features = nn.BatchNorm1d(embed_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.out_channels = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if x.shape[-2:] != (7, 7):
            raise MaskcryptError(f"recognizer: the insightface head needs a 7 x 7 map ({INSIGHTFACE_SIZE} px input), "
                                 f"got {tuple(x.shape[-2:])}")
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _torchvision_resnet(arch: str, channels: int, image_size: int) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if image_size < 96 or channels != 3:
        small = image_size < 96
        net.conv1 = nn.Conv2d(channels, 64, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
        if small:
            net.maxpool = nn.Identity()
    width = net.fc.in_features
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return body, width


class ArcFaceHead(nn.Module):
    """Additive angular margin: logits ``s * cos(theta + m)`` for the true class, ``s * cos(theta)`` else."""

    def __init__(self, dim: int, num_classes: int, s: float, m: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)
        self.s, self.m = s, m

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb.float()), F.normalize(self.weight.float())).clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return self.s * cos
        theta = torch.acos(cos)
        target = torch.cos(theta + self.m)
        # Keep the logit monotonic in theta once theta + m passes pi (insightface's easy-margin fallback).
        target = torch.where(theta + self.m < math.pi, target, cos - self.m * math.sin(self.m))
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return self.s * torch.where(onehot, target, cos)


class Recognizer(nn.Module):
    """Backbone -> global average pool -> (projection) -> BN = 512-d embedding -> classifier."""

    def __init__(self, config: RecognizerConfig):
        super().__init__()
        self.config = config
        c = config
        self.pooled = c.layout != "insightface"
        if not self.pooled:  # the backbone ends in insightface's embedding head
            self.backbone: nn.Module = InsightfaceIResNet(c.channels, _IR_LAYERS[c.arch], c.dropout)
            width = self.backbone.out_channels
        elif c.arch == "compact":
            self.backbone = CompactResNet(c.channels, c.width, c.depth)
            width = self.backbone.out_channels
        elif c.arch.startswith("iresnet"):
            self.backbone = IResNet(c.channels, _IR_LAYERS[c.arch])
            width = self.backbone.out_channels
        else:
            self.backbone, width = _torchvision_resnet(c.arch, c.channels, c.image_size)
        self.project = nn.Linear(width, EMBED_DIM, bias=False) if width != EMBED_DIM else nn.Identity()
        self.dropout = nn.Dropout(c.dropout) if c.dropout and self.pooled else nn.Identity()
        self.bn = nn.BatchNorm1d(EMBED_DIM) if self.pooled else nn.Identity()
        self.classifier: nn.Module = (ArcFaceHead(EMBED_DIM, c.num_classes, c.arcface_s, c.arcface_m)
                                      if c.head == "arcface" else nn.Linear(EMBED_DIM, c.num_classes))
        mean = torch.tensor(c.mean[: c.channels] if len(c.mean) >= c.channels else c.mean * c.channels)
        std = torch.tensor(c.std[: c.channels] if len(c.std) >= c.channels else c.std * c.channels)
        self.register_buffer("mean", mean.view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (std.view(1, -1, 1, 1) * 255.0), persistent=False)

    @classmethod
    def from_checkpoint(cls, path: Any, device: str | torch.device = "cpu") -> Recognizer:
        """Load from a checkpoint dir or a model folder (its newest complete checkpoint), in eval mode."""
        return load_model(path, "recognizer", lambda d: cls(RecognizerConfig.from_dict(d)), device)

    @classmethod
    def from_weights(cls, path: Any, arch: str | None = None, image_size: int | None = None, num_classes: int = 2,
                     channels: int = 3, device: str | torch.device = "cpu", **config: Any) -> Recognizer:
        """A recognizer from a state dict trained elsewhere, in eval mode; the layout is read from its keys.

        * maskcrypt's own (``backbone.*``): ``arch`` (and ``width``/``depth`` for compact)
          must be given; the classifier's class count is taken from the weights;
        * torchvision ImageNet ResNet-18/34/50 (``conv1``, ``layer1..4``, ``fc``): the
          arch is read from the blocks; the ImageNet classifier is skipped; the stem is
          kept at >= 96 px and re-initialized below (3x3 stride-1 stem); inputs are
          normalized with ImageNet's mean/std. ``embed()`` is the pooled feature
          (ResNet-18/34: exactly, up to a fresh BatchNorm's constant scale; ResNet-50:
          through a new, untrained 2048 -> 512 projection);
        * insightface arcface_torch IR-ResNet-18/34/50/100 (``conv1``, ``prelu``,
          ``layer1..4``, ``bn2``, ``fc``, ``features``): the ``insightface`` layout at 112 px,
          normalized ``(x/255 - 0.5)/0.5``; ``embed()`` is exactly insightface's embedding.

        ``arch``, when given, must agree with the weights. Unit-normalize ``embed()`` for
        cosine similarity.
        """
        state = read_state_dict(path, f"weights {path}")
        if detect_layout(state, f"weights {path}") == "maskcrypt":
            if arch is None:
                raise MaskcryptError(f"weights {path}: maskcrypt weights do not name their architecture; pass "
                                     "arch=... (or load the checkpoint folder with Recognizer.from_checkpoint)")
            if "classifier.weight" in state:  # the trained classifier comes along
                num_classes = int(state["classifier.weight"].shape[0])
                config.setdefault("head", "softmax" if "classifier.bias" in state else "arcface")
        base = RecognizerConfig(arch=arch or "compact", num_classes=num_classes, channels=channels,
                                image_size=image_size or INSIGHTFACE_SIZE, **config)
        cfg = config_for_weights(state, base, f"weights {path}", arch_given=arch is not None)
        model = cls(cfg)
        load_weights(model, state, f"weights {path}")
        return model.eval().to(device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in 0..255) N x C x H x W -> normalized float, in the weights' dtype."""
        if x.dim() != 4 or x.shape[1] != self.config.channels:
            raise MaskcryptError(
                f"recognizer: expected N x {self.config.channels} x H x W images, got {tuple(x.shape)}"
            )
        return (x.float() - self.mean) * self.inv_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d embedding (after BatchNorm), for open-set identification."""
        feat = self.backbone(self.normalize(x))
        if not self.pooled:
            return feat
        pooled = feat.mean(dim=(2, 3))
        return self.bn(self.project(self.dropout(pooled)))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits; with ``labels`` an ArcFace head applies its margin (training only)."""
        emb = self.embed(x)
        if isinstance(self.classifier, ArcFaceHead):
            return self.classifier(emb, labels)
        return self.classifier(emb)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

