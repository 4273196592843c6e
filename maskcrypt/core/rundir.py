"""The run directory: its layout (:class:`RunPaths`), its record ``run.json``, and :class:`Run`, both at once.

A run directory holds everything one determination produces; each stage of the method
adds its outputs here and its summary to ``run.json`` (configuration, code version,
input hashes, per-stage figures). A run refuses to be resumed with another
configuration unless the caller asks to start over.

The pipeline resolves the directory once into a :class:`Run` and hands that object to
every stage; a stage reads the record and writes its summary through it, so the
directory is resolved and ``run.json`` is parsed in one place. Stages still accept a
plain path (the CLI's single-stage commands and tests call them so), which they open
the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcrypt import __version__
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import write_json

RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunPaths:
    """Where each artifact of a run lives (absolute, so jobs work from a temporary working dir)."""

    root: Path

    @classmethod
    def resolve(cls, run: str | os.PathLike[str]) -> RunPaths:
        if "://" in str(run):
            raise MaskcryptError(f"--run {run}: remote run directories are not supported by this stage yet")
        return cls(Path(run).expanduser().resolve())

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def masks_train(self) -> Path:
        return self.root / "masks_train"

    @property
    def masks_heldout(self) -> Path:
        return self.root / "masks_heldout"

    @property
    def masks_attacker(self) -> Path:
        return self.root / "masks_attacker"

    @property
    def attackers(self) -> Path:
        """The adaptive attackers' checkpoints: ``family/`` and one folder per attacked mask."""
        return self.root / "models" / "attackers"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def file_digests(self) -> Path:
        """The content digests of the run's data files, by path, size and mtime (:mod:`maskcrypt.data.identity`)."""
        return self.root / "cache" / "files.parquet"

    @property
    def manifests(self) -> Path:
        """Each data split's files as fingerprinted, one Parquet file per fingerprint."""
        return self.file_digests.parent / "splits"


def code_version() -> str:
    """The package version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def read_run_json(paths: RunPaths) -> dict[str, Any] | None:
    if not paths.run_json.exists():
        return None
    try:
        return json.loads(paths.run_json.read_text())
    except ValueError as exc:
        raise MaskcryptError(f"{paths.run_json}: not valid JSON ({exc}); start over with --restart") from None


def update_record(run_json: Path, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Set ``stages.<stage>`` of ``run.json`` to ``summary`` (the rest kept); returns the whole record."""
    record = json.loads(run_json.read_text()) if run_json.exists() else {}
    record.setdefault("stages", {})[stage] = summary
    write_json(run_json, record)
    return record


@dataclass(frozen=True)
class Run:
    """One run directory, resolved once: where its artifacts live and what ``run.json`` records.

    The record is read from disk on every access (stages running in other processes, a
    relaunch, write it too), and written atomically by :meth:`update`.
    """

    paths: RunPaths

    @classmethod
    def open(cls, run: str | os.PathLike[str] | Run) -> Run:
        """A :class:`Run` for a path (made absolute; remote URIs refused), or ``run`` itself if it is one."""
        return run if isinstance(run, Run) else cls(RunPaths.resolve(run))

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def record(self) -> dict[str, Any]:
        """``run.json`` as a dict; ``{}`` for a run not prepared yet."""
        return read_run_json(self.paths) or {}

    @property
    def exists(self) -> bool:
        """Whether anything was prepared here (a record or a mask library)."""
        return self.paths.run_json.exists() or self.paths.masks.exists()

    def recorded(self, section: str) -> dict[str, Any]:
        """One section of the record (``prepare``, ``config``, ...); ``{}`` if absent."""
        value = self.record.get(section, {})
        return value if isinstance(value, dict) else {}

    @property
    def data(self) -> str:
        """The data spec the run was prepared with (the embedded synthetic faces if none is recorded)."""
        return self.recorded("prepare").get("data", "synthetic:")

    def completed(self) -> list[str]:
        """The stages whose summary the record holds, in the order they were first recorded."""
        return list(self.recorded("stages"))

    def update(self, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
        """Record ``summary`` as ``stages.<stage>`` (the rest kept); returns the whole record."""
        return update_record(self.paths.run_json, stage, summary)

    def set_section(self, key: str, value: Any) -> None:
        """Set a top-level key of the record (``config``, ``prepare``, ...), the rest kept."""
        record = self.record
        record[key] = value
        write_json(self.paths.run_json, record)


def check_resumable(paths: RunPaths, config: Any, restart: bool) -> None:
    """Refuse to add to a run prepared with another configuration, unless ``restart``.

    ``config`` is the prepare section (a dataclass whose defaults are the embedded ones).
    """
    recorded = read_run_json(paths)
    if restart and paths.root.exists():
        for sub in (paths.masks, paths.masks_train, paths.masks_heldout, paths.masks_attacker):
            shutil.rmtree(sub, ignore_errors=True)
        paths.run_json.unlink(missing_ok=True)
        return
    if recorded is None:
        if paths.masks.exists() or paths.masks_train.exists():
            raise MaskcryptError(
                f"run {paths.root}: holds mask libraries but no {RUN_JSON} (an interrupted or foreign run); "
                "pass --restart to rebuild it"
            )
        return
    before = recorded.get("prepare", {})
    now = dataclasses.asdict(config)
    defaults = dataclasses.asdict(type(config)())  # a field added later counts as its default
    diff = {k: (before.get(k, defaults[k]), v) for k, v in now.items() if before.get(k, defaults[k]) != v}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise MaskcryptError(
            f"run {paths.root}: was prepared with other settings ({shown}); use another --run or pass --restart"
        )


