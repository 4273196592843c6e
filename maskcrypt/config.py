"""Configuration objects shared by the stages: frozen dataclasses, defaults = the embedded defaults.

``TrainConfig`` is the one hyperparameter set that trains *both* recognizers: the
method requires E to be trained "with exactly the same hyperparameters and the same
number of epochs as O". Mask sampling for E lives outside it, so the object itself
can be identical; each checkpoint stores its hash, and loading O and E as a pair
with different hashes is refused (:func:`check_same_training`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from maskcrypt.errors import MaskcryptError

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters of a recognizer (O and E share one instance)."""

    epochs: int = 12
    batch_size: int = 128  # global, over all workers
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant, in epochs
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    augment: str = "flip"  # flip | none
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise MaskcryptError(f"--epochs: expected at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise MaskcryptError(f"--batch-size: expected at least 2, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise MaskcryptError(f"--optimizer: expected sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise MaskcryptError(f"--schedule: expected cosine, step or constant, got {self.schedule!r}")
        if self.augment not in ("flip", "none"):
            raise MaskcryptError(f"--augment: expected flip or none, got {self.augment!r}")
        if self.precision not in PRECISIONS:
            raise MaskcryptError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise MaskcryptError("train config: lr must be > 0, weight_decay >= 0, label_smoothing in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def sha256(self) -> str:
        """Hash of every field: equal hashes mean identical hyperparameters."""
        return config_hash(self.to_dict())


def config_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def check_same_training(original: dict[str, Any], encrypted: dict[str, Any]) -> None:
    """Refuse an O/E pair whose checkpoints were trained with different TrainConfigs."""
    a, b = original.get("train_config_sha256"), encrypted.get("train_config_sha256")
    if not a or a != b:
        da, db = original.get("train_config", {}), encrypted.get("train_config", {})
        diff = {k: (da.get(k), db.get(k)) for k in set(da) | set(db) if da.get(k) != db.get(k)}
        raise MaskcryptError(
            "original and encrypted models were trained with different hyperparameters "
            f"(TrainConfig sha256 {str(a)[:12]} vs {str(b)[:12]}; differing: {diff}); the method requires "
            "identical ones: retrain one of them with the other's settings"
        )
