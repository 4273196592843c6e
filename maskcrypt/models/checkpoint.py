"""Checkpoint IO shared by training, evaluation and serving.

A checkpoint is a directory::

    model.pt         the model's state dict (DDP wrapper removed)
    train_state.pt   optimizer, scheduler and epoch, for resuming (optional)
    meta.json        what the model is: kind, role, architecture config, TrainConfig and
                     its sha256, class names, image size and channels, training-input
                     hashes, epoch, metrics; plus the size and sha256 of model.pt

``meta.json`` is written last and names model.pt's digest, so a checkpoint whose copy
was cut short is recognised as incomplete and skipped. A *model folder* is Ray Train's
output for one model (``RUN/models/original/``): :func:`find_checkpoint` takes the
newest complete ``checkpoint_*`` inside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import sha256_file

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / compiled wrappers."""
    return getattr(model, "module", model)


def save_checkpoint(directory: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory; meta.json last, with model.pt's size and digest."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, d / MODEL_FILE)
    if train_state is not None:
        torch.save(train_state, d / STATE_FILE)
    full = {**meta, "model_bytes": (d / MODEL_FILE).stat().st_size, "model_sha256": sha256_file(d / MODEL_FILE)}
    tmp = d / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(full, indent=1, sort_keys=True, default=str))
    os.replace(tmp, d / META_FILE)
    return d


def read_meta(checkpoint: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """meta.json of one checkpoint directory, after checking model.pt is the file it names."""
    d = Path(checkpoint)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise MaskcryptError(f"checkpoint {d}: no {META_FILE} (not a maskcrypt checkpoint, or incomplete)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise MaskcryptError(f"checkpoint {d}: {META_FILE} is not valid JSON ({exc})") from None
    model = d / MODEL_FILE
    if not model.is_file():
        raise MaskcryptError(f"checkpoint {d}: {MODEL_FILE} is missing (incomplete checkpoint)")
    if verify and (model.stat().st_size != meta.get("model_bytes")
                   or sha256_file(model) != meta.get("model_sha256")):
        raise MaskcryptError(f"checkpoint {d}: {MODEL_FILE} does not match {META_FILE} (incomplete copy)")
    return meta


def list_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """Complete checkpoints under a model folder, oldest first (by epoch, then name)."""
    out = []
    for d in sorted(Path(folder).glob("checkpoint_*")):
        try:
            out.append((d, read_meta(d)))
        except MaskcryptError:
            continue
    return sorted(out, key=lambda item: (int(item[1].get("epoch", 0)), item[0].name))


def find_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Resolve a checkpoint directory or a model folder to (checkpoint dir, meta).

    A model folder resolves to its newest complete checkpoint. ``kind`` ("recognizer" or
    "inpainter") is checked so a wrong model type fails by name.
    """
    p = Path(path)
    if not p.exists():
        raise MaskcryptError(f"checkpoint {p}: does not exist (train the model first: maskcrypt train)")
    if (p / META_FILE).exists():
        found = (p, read_meta(p))
    else:
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise MaskcryptError(
                f"checkpoint {p}: no complete checkpoint_* folder inside (an interrupted or empty training run?)"
            )
        found = ckpts[-1]
    if kind is not None and found[1].get("kind") != kind:
        raise MaskcryptError(f"checkpoint {found[0]}: holds a {found[1].get('kind')!r} model, expected {kind!r}")
    return found


def load_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / MODEL_FILE, map_location="cpu", weights_only=True)


def load_model(path: str | os.PathLike[str], kind: str, build: Callable[[dict[str, Any]], nn.Module],
               device: str | torch.device = "cpu") -> nn.Module:
    """Resolve ``path``, build the model from its recorded config, load the weights; eval mode.

    The model carries ``checkpoint_meta`` (class names, image size, TrainConfig hash, ...)
    and ``checkpoint_path``, so later stages can check what they were given.
    """
    ckpt, meta = find_checkpoint(path, kind=kind)
    model = build(meta["model_config"])
    model.load_state_dict(load_state(ckpt))
    model.checkpoint_meta = meta
    model.checkpoint_path = ckpt
    return model.eval().to(device)
