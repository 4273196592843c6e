"""The selection thresholds: one frozen, validated section, shared by the config and the selection rules.

Kept in the config layer so a run's configuration (``RunConfig.thresholds``) can hold it
without the configuration depending on the rules that read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError


@dataclass(frozen=True)
class Thresholds:
    """Selection thresholds (fractions) and list sizes; defaults are the source's examples."""

    t_enc: float = 0.80  # basic rule: E accuracy above this
    t_orig: float = 0.50  # basic rule: O accuracy below this
    t_gap: float = 0.30  # first threshold: first - second accuracy of a target bucket
    t_drop: float = 0.07  # second threshold: fourth - fifth accuracy of a target mask
    top_k: int = 3  # candidates per target bucket (at least 2)
    #: Masks per target bucket that the attack stage measures (>= top_k): the candidates by default; raise it to
    #: let the threshold search try a larger top_k without new model runs.
    attack_top: int = 3
    confidence: float = 0.95  # level of every interval
    #: Optional: a target's worst attacker accuracy (selection split, results/attacks.parquet) must be below it.
    t_attack: float | None = None
    #: Optional: a target's worst linkage (the outsider's Recall@1, selection split, results/linkage.parquet) must be
    #: below it.
    t_link: float | None = None

    def __post_init__(self) -> None:
        for name in ("t_enc", "t_orig", "t_gap", "t_drop", "t_attack", "t_link"):
            v = getattr(self, name)
            if name in ("t_attack", "t_link") and v is None:
                continue
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise MaskcryptError(
                    f"threshold {name}: expected a fraction in [0, 1], got {v!r} (write 0.07 for 7 points)"
                )
        if self.top_k < 2:
            raise MaskcryptError(f"top_k: the method keeps at least two candidates per bucket, got {self.top_k}")
        if self.attack_top < self.top_k:
            raise MaskcryptError(f"attack_top ({self.attack_top}) must be >= top_k ({self.top_k})")
        if not 0.5 <= self.confidence < 1.0:
            raise MaskcryptError(f"confidence: expected a level in [0.5, 1), got {self.confidence}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Thresholds:
        """Read thresholds from a JSON or YAML file (keys as the fields); unknown keys are errors."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise MaskcryptError(f"--thresholds {p}: cannot read ({exc})") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:
            raise MaskcryptError(f"--thresholds {p}: not valid {p.suffix.lstrip('.') or 'JSON'} ({exc})") from None
        if not isinstance(data, dict):
            raise MaskcryptError(f"--thresholds {p}: expected a mapping of threshold names to values")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MaskcryptError(f"--thresholds {p}: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{**data, **overrides})
