"""Resuming training: skip a model this very job completed, refuse one trained on other settings or data.

A relaunch must never silently reuse a model trained on images that have since changed;
the refusal names the files that differ (from the split manifests) and the flag to pass."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.identity import describe_change
from maskcrypt.models.checkpoint import find_checkpoint


def data_changes(before: dict[str, str], inputs: Any, manifests: Path) -> list[str]:
    """What differs between the data a model was trained on (its recorded input hashes) and ``inputs``, named.

    ``inputs`` is the driver's :class:`~maskcrypt.train.driver.TrainInputs` (its splits and their hashes).
    """
    out = []
    for key, split in (("train_data", inputs.train), ("val_data", inputs.val)):
        if before.get(key) and before.get(key) != inputs.hashes.get(key):
            what = "training data" if key == "train_data" else "held-out data"
            out.append(f"its {what} {split.spec.text} changed: {describe_change(manifests, before[key], split)}")
    return out


def complete_model(folder: Path, kind: str, job_sha: str, retrain: bool,
                   changed: Callable[[dict[str, Any]], list[str]] = lambda meta: []) -> dict[str, Any] | None:
    """The meta of a complete model trained by this very job (to skip), after refusing or clearing others.

    ``changed(meta)`` names how the data differs from the one the model was trained on,
    for the refusal.
    """
    if not folder.exists():
        return None
    try:
        _, meta = find_checkpoint(folder, kind=kind)
    except MaskcryptError:
        meta = None
    if retrain:
        shutil.rmtree(folder)
        return None
    if meta is not None and meta.get("job_sha256") != job_sha:
        named = changed(meta)
        if named:
            raise MaskcryptError(f"model {folder}: {'; '.join(named)}; nothing trained on the old images is reused: "
                                 "pass --retrain to train it again on the current files")
        raise MaskcryptError(f"model {folder}: was trained with other settings or inputs; pass --retrain to train "
                             "it again")
    if meta is not None and meta.get("epoch") == meta.get("epochs"):
        return meta
    return None
