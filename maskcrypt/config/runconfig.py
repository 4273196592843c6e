"""One :class:`RunConfig` describes a whole run (prepare -> train -> determine -> tune).

It is built from a YAML file (``--config run.yaml``: the same nested keys as
:meth:`RunConfig.to_dict`), from command-line flags (:mod:`maskcrypt.cli.flags` maps each
flag to a field), or both (flags override the file), and the resolved config is recorded
in ``run.json``. The sections themselves, and what each field means, are in
:mod:`maskcrypt.config`; this module only assembles them and reads them from mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from maskcrypt.config.attack import AttackConfig
from maskcrypt.config.sections import (
    STAGES,
    AdaptivePlan,
    DetermineConfig,
    EvalSettings,
    InpaintTrainConfig,
    MaskSampling,
    ModelSettings,
    PrepareConfig,
    Resources,
    TrainConfig,
    TrainSources,
    TuneConfig,
)
from maskcrypt.config.thresholds import Thresholds
from maskcrypt.core.errors import MaskcryptError

#: RunConfig's sections and their classes: the YAML file's top-level keys.
SECTIONS: dict[str, type] = {
    "prepare": PrepareConfig, "sources": TrainSources, "model": ModelSettings, "train": TrainConfig,
    "inpaint": InpaintTrainConfig, "sampling": MaskSampling, "resources": Resources, "determine": DetermineConfig,
    "evaluation": EvalSettings, "adaptive": AdaptivePlan, "attack": AttackConfig, "thresholds": Thresholds,
    "tune": TuneConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run does, stage by stage; ``until`` is the last stage run."""

    run: str = "runs/default"
    until: str = "determine"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    sources: TrainSources = field(default_factory=TrainSources)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    inpaint: InpaintTrainConfig = field(default_factory=InpaintTrainConfig)
    sampling: MaskSampling = field(default_factory=MaskSampling)
    resources: Resources = field(default_factory=Resources)
    determine: DetermineConfig = field(default_factory=DetermineConfig)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    adaptive: AdaptivePlan = field(default_factory=AdaptivePlan)
    attack: AttackConfig = field(default_factory=AttackConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        if self.until not in STAGES:
            raise MaskcryptError(f"--until: expected one of {', '.join(STAGES)}, got {self.until!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "run config") -> RunConfig:
        """From nested mappings (a YAML file); unknown keys are errors that name the known ones."""
        if not isinstance(data, Mapping):
            raise MaskcryptError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
        top = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - top)
        if unknown:
            raise MaskcryptError(f"{where}: unknown key(s) {unknown}; known: {sorted(top)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS:
                if key == "thresholds" and isinstance(value, str):
                    kwargs[key] = Thresholds.from_file(value)
                else:
                    kwargs[key] = section(SECTIONS[key], value, f"{where}: {key}")
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise MaskcryptError(f"--config {p}: cannot read ({exc})") from None
        except yaml.YAMLError as exc:
            raise MaskcryptError(f"--config {p}: not valid YAML ({exc})") from None
        return cls.from_dict(data, f"--config {p}")

    def with_values(self, values: Mapping[str, Any]) -> RunConfig:
        """A copy with ``{"section.field": value, "run": ...}`` replaced (each section validated again)."""
        return _replace(self, values)

    def with_overrides(self, items: Sequence[str], where: str = "--set") -> RunConfig:
        """A copy with ``SECTION.KEY=VALUE`` settings applied (``--set``), validated as a YAML file is.

        ``VALUE`` is read as a YAML scalar or flow list (``2``, ``0.5``, ``true``, ``[1, 2]``,
        ``null``); it must have the type of the field it sets (an int where a float is
        expected is fine; a string field takes the text as written). Unknown sections and
        keys are refused with the known ones named, the same as in ``--config``.
        """
        data = self.to_dict()
        for item in items:
            dotted, value = parse_override(item, where)
            node: Any = data
            parts = dotted.split(".")
            for depth, part in enumerate(parts[:-1]):
                if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                    known = sorted(k for k, v in node.items() if isinstance(v, dict)) if isinstance(node, dict) else []
                    raise MaskcryptError(f"{where} {item}: {'.'.join(parts[:depth + 1])} is not a section; "
                                         f"known: {known}")
                node = node[part]
            key = parts[-1]
            if key not in node:
                raise MaskcryptError(f"{where} {item}: unknown key {key!r} in {'.'.join(parts[:-1]) or 'the run'}; "
                                     f"known: {sorted(node)}")
            node[key] = _typed(value, node[key], item, where)
        return RunConfig.from_dict(data, where)


def parse_override(item: str, where: str = "--set") -> tuple[str, Any]:
    """``"train.epochs=2"`` -> ``("train.epochs", 2)``: the dotted field and the value read as YAML."""
    import yaml

    dotted, sep, text = item.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted or any(not part.isidentifier() for part in dotted.split(".")):
        raise MaskcryptError(f"{where} {item!r}: expected SECTION.KEY=VALUE (e.g. train.epochs=2)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise MaskcryptError(f"{where} {item}: the value is not valid YAML ({exc})") from None
    return dotted, (text if isinstance(value, (dict, set)) else value)


def _typed(value: Any, current: Any, item: str, where: str) -> Any:
    """``value`` checked against the type of the field's current value (what the YAML path leaves to the sections)."""
    def refuse(expected: str) -> MaskcryptError:
        return MaskcryptError(f"{where} {item}: expected {expected}, got {value!r}")

    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise refuse("true or false")
    elif isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse("an integer")
    elif isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse("a number")
        return float(value)
    elif isinstance(current, str):
        return value if isinstance(value, str) else item.partition("=")[2].strip()
    elif isinstance(current, (list, tuple)) and not isinstance(value, list):
        value = [value]
    return value


def _replace(obj: Any, changes: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` that follows dotted names into nested sections (``budget.o_masked``)."""
    flat: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = _replace(getattr(obj, head), sub)
    return dataclasses.replace(obj, **flat)


def section(cls: type, value: Any, where: str) -> Any:
    """One config section from a mapping: unknown keys named, lists turned into the tuples fields expect."""
    if not isinstance(value, Mapping):
        raise MaskcryptError(f"{where}: expected a mapping of settings, got {value!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise MaskcryptError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    defaults = cls()
    kwargs = {}
    for k, v in value.items():
        default = getattr(defaults, k)
        if dataclasses.is_dataclass(default):
            v = section(type(default), v, f"{where}.{k}")
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise MaskcryptError(f"{where}: {exc}") from None
