"""Weights trained elsewhere: maskcrypt's own, torchvision's ImageNet ResNets, insightface's IR-ResNets.

Users bring pretrained backbones (``--init-original``, ``--init-encrypted``,
:meth:`Recognizer.from_weights`). The layout is read from the state dict's keys:

* **maskcrypt** - our own ``model.pt`` (``backbone.*``, ``bn.*``, ``classifier.*``);
* **torchvision** - ``torchvision.models.resnet18/34/50`` state dicts (``conv1``, ``bn1``,
  ``layer1..4``, ``fc``): mapped onto our torchvision backbone (``backbone.0`` =
  ``conv1``, ``backbone.1`` = ``bn1``, ``backbone.4..7`` = ``layer1..4``); ``fc`` (the
  ImageNet classifier) is skipped; ``conv1`` is kept at >= 96 px and explicitly
  re-initialized below, where our stem is a 3x3 stride-1 conv;
* **insightface** - arcface_torch ``backbone.pth`` (``conv1``, ``bn1``, ``prelu``,
  ``layer1..4`` of ``IBasicBlock``s, ``bn2``, ``fc``, ``features``): loaded key for key
  into the ``insightface`` layout (:class:`~maskcrypt.models.recognizer.InsightfaceIResNet`).

:func:`config_for_weights` adjusts a :class:`RecognizerConfig` to what the weights are
(architecture, layout, input normalization) before the model is built;
:func:`load_weights` loads them. A mismatch names the first differing key and both
shapes, so a wrong architecture never loads half-way.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.models.checkpoint import unwrap

LAYOUTS = ("maskcrypt", "torchvision", "insightface")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision ResNets by blocks per stage (ResNet-50's blocks are bottlenecks with a conv3).
_TV_ARCHS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50"}
_IF_ARCHS = {(2, 2, 2, 2): "iresnet18", (3, 4, 6, 3): "iresnet34", (3, 4, 14, 3): "iresnet50",
             (3, 13, 30, 3): "iresnet100"}
#: torchvision module -> our backbone Sequential index.
_TV_MAP = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def read_state_dict(path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, or nested under ``state_dict``/``model``; a DDP ``module.`` prefix removed.

    Read with ``weights_only=True``: a pickle that needs code to load is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise MaskcryptError(f"{what}: file not found (a torch state dict: maskcrypt, torchvision ResNet or "
                             "insightface IR-ResNet)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MaskcryptError(f"{what}: not a readable torch state dict ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MaskcryptError(f"{what}: expected a state dict (names -> tensors), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_layout(state: dict[str, torch.Tensor], what: str = "weights") -> str:
    """``maskcrypt``, ``torchvision`` or ``insightface``, from the key names."""
    keys = set(state)
    if any(k.startswith("backbone.") for k in keys):
        return "maskcrypt"
    stages = {"layer1.0.conv1.weight", "layer4.0.conv1.weight", "conv1.weight", "fc.weight"}
    if stages <= keys and {"prelu.weight", "bn2.weight", "features.running_mean"} <= keys:
        return "insightface"
    if stages <= keys and "bn1.weight" in keys:
        return "torchvision"
    first = ", ".join(sorted(keys)[:6])
    raise MaskcryptError(
        f"{what}: not a known layout (maskcrypt: backbone.*; torchvision ResNet: conv1, layer1-4, fc; "
        f"insightface IR-ResNet: conv1, prelu, layer1-4, bn2, fc, features); its keys begin {first}"
    )


def blocks_per_stage(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks in ``layer1..layer4`` (torchvision and insightface names)."""
    found: dict[int, set[int]] = {}
    for k in state:
        m = re.match(r"layer(\d+)\.(\d+)\.", k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(found.get(i, ())) for i in range(1, 5))


def infer_arch(state: dict[str, torch.Tensor], layout: str, what: str = "weights") -> str:
    """The architecture of torchvision or insightface weights, from their blocks per stage."""
    blocks = blocks_per_stage(state)
    if layout == "torchvision":
        arch = _TV_ARCHS.get((blocks, "layer1.0.conv3.weight" in state))
        known = "ResNet-18 (2,2,2,2), -34 (3,4,6,3), -50 (3,4,6,3 bottlenecks)"
    else:
        arch = _IF_ARCHS.get(blocks)
        known = "IR-ResNet-18 (2,2,2,2), -34 (3,4,6,3), -50 (3,4,14,3), -100 (3,13,30,3)"
    if arch is None:
        raise MaskcryptError(f"{what}: {layout} weights with {blocks} blocks per stage; supported: {known}")
    return arch


def config_for_weights(state: dict[str, torch.Tensor], base: Any, what: str, arch_given: bool = True) -> Any:
    """``base`` (a RecognizerConfig) adjusted to the weights: architecture, layout and input normalization.

    maskcrypt weights keep ``base`` (they fit it or fail to load by name). External
    layouts set the architecture from the weights; ``base.arch`` must then agree, unless
    it is the default ``compact`` and ``arch_given`` is False.
    """
    layout = detect_layout(state, what)
    if layout == "maskcrypt":
        return base
    arch = infer_arch(state, layout, what)
    if base.arch != arch and (arch_given or base.arch != "compact"):
        raise MaskcryptError(f"{what}: holds {layout} {arch} weights, but the architecture is {base.arch!r} "
                             f"(use --arch {arch}, or leave --arch out)")
    if layout == "torchvision":
        return dataclasses.replace(base, arch=arch, mean=IMAGENET_MEAN, std=IMAGENET_STD, layout="maskcrypt")
    return dataclasses.replace(base, arch=arch, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), layout="insightface")


def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> dict[str, Any]:
    """Load ``state`` (any layout) into ``model``; returns what was loaded, skipped and re-initialized."""
    net = unwrap(model)
    own = net.state_dict()
    layout = detect_layout(state, what)
    skipped: list[str] = []
    reinit: list[str] = []
    if layout == "maskcrypt":
        mapped = dict(state)
        # A classifier of another class count (or head) is not loaded: the training classes decide it.
        skipped = [k for k, v in mapped.items() if k.startswith("classifier.") and (k not in own
                                                                                   or own[k].shape != v.shape)]
        new_ok = ("classifier.",)
    elif layout == "torchvision":
        mapped = {}
        for k, v in state.items():
            head, _, rest = k.partition(".")
            if head == "fc":
                skipped.append(k)  # ImageNet's classifier: our embedding neck and classifier follow the pool
            elif head in _TV_MAP:
                mapped[f"backbone.{_TV_MAP[head]}.{rest}"] = v
            else:
                mapped[k] = v  # reported as unexpected below
        stem = "backbone.0.weight"
        if stem in mapped and stem in own and own[stem].shape != mapped[stem].shape:
            # Our stem below 96 px (or for grey input) is another conv: ImageNet's 7x7 does not apply.
            del mapped[stem]
            nn.init.kaiming_normal_(net.backbone[0].weight, mode="fan_out", nonlinearity="relu")
            reinit.append(stem)
        new_ok = ("classifier.", "project.", "bn.")
    else:
        if getattr(net, "pooled", True):
            raise MaskcryptError(f"{what}: insightface weights need the insightface layout (the model was built as "
                                 f"maskcrypt's pooled {net.config.arch}; Recognizer.from_weights and --init-* choose "
                                 "it from the weights)")
        mapped = {f"backbone.{k}": v for k, v in state.items()}
        new_ok = ("classifier.",)
    unexpected = [k for k in mapped if k not in own]
    if unexpected and layout != "maskcrypt":
        raise MaskcryptError(f"{what}: {layout} key {_source_key(unexpected[0], layout)} has no place in the model "
                             f"({len(unexpected)} such keys); not a plain {net.config.arch}?")
    for k, v in mapped.items():
        if k in own and own[k].shape != v.shape and k not in skipped:
            raise MaskcryptError(
                f"{what}: does not fit the configured architecture: key {_source_key(k, layout)} has shape "
                f"{tuple(v.shape)} in the weights, {tuple(own[k].shape)} in the model ({net.config.arch}); check "
                "--arch/--width/--depth/--size"
            )
    missing = [k for k in own if k not in mapped and k not in reinit and not _optional(k)
               and not k.startswith(new_ok)]
    if missing:
        raise MaskcryptError(f"{what}: does not fit the configured architecture: the model's key "
                             f"{_source_key(missing[0], layout)} (shape {tuple(own[missing[0]].shape)}) is missing "
                             f"from the weights ({len(missing)} missing); check --arch/--width/--depth")
    usable = {k: v for k, v in mapped.items() if k in own and k not in skipped}
    net.load_state_dict(usable, strict=False)
    return {"layout": layout, "loaded": len(usable), "skipped": skipped, "reinitialized": reinit,
            "unexpected": unexpected}


def _source_key(key: str, layout: str) -> str:
    """A model key as the weights name it (their layout), for messages."""
    if layout == "insightface":
        return key.removeprefix("backbone.")
    if layout == "torchvision" and key.startswith("backbone."):
        idx, _, rest = key.removeprefix("backbone.").partition(".")
        back = {v: k for k, v in _TV_MAP.items()}
        return f"{back.get(idx, idx)}.{rest}" if idx in back else key
    return key


def load_external_weights(model: nn.Module, path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Load a state dict trained elsewhere into ``model``; a classifier of another size is skipped.

    Accepts a plain state dict or one nested under ``state_dict``/``model``, with or
    without a DDP ``module.`` prefix, in maskcrypt's, torchvision's or insightface's layout
    (the layouts above). Any other missing or mismatching tensor is an error
    naming the first such key and both shapes, so a wrong architecture cannot load
    half-way silently.
    """
    return load_weights(model, read_state_dict(path, f"{what} {path}"), f"{what} {path}")
