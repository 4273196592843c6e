"""What a determination reads, opened once: the run's models, test set, mask library, and its parts key.

:func:`open_determination` checks everything before any Ray work starts (models that
belong together, a test set that matches them, a library of the run's size) and refuses
per-mask parts computed from other inputs, naming what changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import AdaptivePlan, AttackConfig, DetermineConfig, EvalSettings, check_same_training
from maskcrypt.config.runconfig import section
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import write_json, write_parquet
from maskcrypt.core.rundir import Run, RunPaths
from maskcrypt.data import SourceSplit, labelled, source_split
from maskcrypt.data.identity import describe_change
from maskcrypt.evaluation.testset import TestSet, choose_scoring, prepare_test
from maskcrypt.masks import MaskLibrary, bucket_label
from maskcrypt.models.checkpoint import find_checkpoint, sha256_file
from maskcrypt.selection.rules import Thresholds

#: What the count tables hold, in the parts key: parts of another format are refused (or recomputed with
#: ``--redetermine``), never mixed. 2: per-identity counts (``idc:``/``idn``) beside the sums.
COUNTS_FORMAT = 2


@dataclass
class Determination:
    """What the stages of one determination share: the run, its settings, the test set, the library."""

    run: Run
    config: DetermineConfig
    thresholds: Thresholds
    settings: EvalSettings
    adaptive: AdaptivePlan
    test: TestSet
    test_spec: str
    test_images: int
    library: Any
    models: dict[str, Path]
    inpainter: Path
    key: dict[str, Any]
    log: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    attack: AttackConfig = field(default_factory=AttackConfig)
    redo: bool = False
    test_source: Any = None  # the test data's SourceSplit and its decoded rows: the attackers' content guard
    test_rows: np.ndarray | None = None

    def test_digests(self) -> np.ndarray | None:
        """A content digest per test image (None when the source kind has none), for the attackers' leak guard."""
        if self.test_source is None or self.test_rows is None:
            return None
        found = self.test_source.item_digests(self.paths.file_digests)
        return None if found is None else found[self.test_rows]

    @property
    def paths(self) -> RunPaths:
        return self.run.paths

    @property
    def labels(self) -> dict[int, str]:
        return {0: "no mask", **{b: bucket_label(b, self.library.edges) for b in range(1, len(self.library.edges))}}

    @property
    def splits(self) -> list[str]:
        return ["selection", "confirmation"] if self.config.confirm_fraction > 0 else ["selection"]

    @property
    def present(self) -> list[int]:
        """Buckets that hold masks (bucket -1, outside every bucket, is counted, never measured)."""
        return sorted({int(b) for b in self.library.column("bucket")} - {-1})

    @property
    def out_of_range(self) -> int:
        """Masks of the library outside every bucket (bucket -1): kept, counted, never measured."""
        return sum(int(b) == -1 for b in self.library.column("bucket"))

    @property
    def parts(self) -> Path:
        return self.paths.results / "per_mask.parts"

    def write(self, df: pd.DataFrame, name: str) -> pd.DataFrame:
        write_parquet(df, self.paths.results / f"{name}.parquet")
        return df

    def cached(self, name: str, settings: dict[str, Any],
               compute: Callable[[], tuple[pd.DataFrame, dict[str, Any]]]) -> tuple[pd.DataFrame, dict[str, Any], bool]:
        """A stage's counts, kept under ``results/cache/`` and reused by a relaunch with the same inputs.

        Sampled Table 1 and the adaptive race are not resumable parts like full mode's, and
        a relaunch that only changes thresholds or attackers would redo them (minutes). The
        key is the parts key (models, test data, library, precision, seed) plus the stage's
        own ``settings``; the record is written after the table and names its sha256, so a
        table without a matching record is never read. ``redo`` recomputes. Returns the
        table, the stage's extra record and whether it was reused.
        """
        table, record = self.paths.results / "cache" / f"{name}.parquet", self.paths.results / "cache" / f"{name}.json"
        key = json.loads(json.dumps({**{k: v for k, v in self.key.items() if k != "inpainter_sha256"}, name: settings},
                                    sort_keys=True, default=str))
        if not self.redo and table.exists() and record.exists():
            saved = json.loads(record.read_text())
            if saved.get("key") == key and saved.get("sha256") == sha256_file(table):
                return pd.read_parquet(table), saved.get("extra", {}), True
        df, extra = compute()
        write_parquet(df, table)
        write_json(record, {"key": key, "sha256": sha256_file(table), "extra": extra})
        return df, extra, False


def _library_sha(lib: Any) -> str:
    """Identity of a library's content: its masks' hashes and bucket edges, order-free."""
    h = hashlib.sha256(json.dumps(list(lib.edges)).encode())
    for digest in sorted(lib.column("sha256")):
        h.update(digest.encode())
    return h.hexdigest()


def _check_parts_key(parts: Path, key: dict[str, Any], redo: bool,
                     explain: Callable[[dict[str, Any]], str] = lambda before: "") -> None:
    """Per-mask parts are reused only when computed from the same inputs; else refuse or discard.

    ``explain(before)`` names how the test data differs from the recorded one, if it does.
    """
    key_file = parts / "_key.json"
    if parts.exists() and not key_file.exists():
        shutil.rmtree(parts)  # written before its key: nothing in it can be trusted
    if key_file.exists():
        before = json.loads(key_file.read_text())
        diff = sorted(k for k in set(before) | set(key) if before.get(k) != key.get(k))
        if diff and not redo:
            why = explain(before)
            raise MaskcryptError(
                f"per-mask results in {parts} were computed with other inputs or settings (differ: "
                f"{', '.join(diff)}{'; ' + why if why else ''}); pass --redetermine to discard them and start the "
                "determination over"
            )
        if diff or redo:
            shutil.rmtree(parts)
    if not key_file.exists():
        write_json(key_file, key)


@dataclass(frozen=True)
class LoadedTest:
    """A determination's test set, loaded and split, with the entries of the parts key that identify it."""

    test: TestSet
    source: SourceSplit  # the split as indexed (names how its files changed since a recorded fingerprint)
    images: int  # images that decoded (unreadable ones are left out)
    key: dict[str, Any]  # test_data, its sha256 and fingerprint, size, scoring, confirm_fraction, enroll, seed
    kept: np.ndarray | None = None  # the source's items decoded (the test images' rows of ``source``)

    @property
    def spec(self) -> str:
        return str(self.key["test_data"])


def load_test(spec: str, e_meta: dict[str, Any], config: DetermineConfig, file_digests: Path | None,
              log: Callable[[str], None]) -> LoadedTest:
    """Decode ``spec``'s test split at E's size into the object store and split it as ``config`` says.

    The one place a test set is made the way a determination scores it (open or closed set,
    gallery, selection/confirmation split, seed), so that whatever else measures E on it
    (the capacity job) scores the same images the same way and records the same
    fingerprint. A closed set E cannot score is refused before any image is decoded.
    ``file_digests`` caches the files' content hashes (``None``: hash them all).
    """
    raw = source_split(spec, default_split="test", size=int(e_meta["image_size"]),
                       channels=int(e_meta.get("channels", 3)))
    trained = e_meta.get("trained_classes")
    choose_scoring(sorted({str(raw.class_names[i]) for i in np.unique(raw.labels)}),
                   e_meta["class_names"] if trained is None else trained, config.scoring)
    # Decoded by Ray tasks into the object store: the driver holds references and labels only.
    images, kept = raw.to_object_store()
    if kept.size < len(raw):
        log(f"test data {labelled(raw.spec)} {len(raw) - kept.size} unreadable image(s) left out")
    test = prepare_test(images, raw.labels[kept], raw.class_names, e_meta["class_names"], scoring=config.scoring,
                        confirm_fraction=config.confirm_fraction, enroll=config.enroll, seed=config.seed,
                        trained_classes=trained)
    log(f"test data {labelled(raw.spec)} {kept.size} images, {len(test.classes)} identities, {test.scoring}-set scoring"
        + (f" (gallery {int(test.gallery.sum())} images, {config.enroll} per identity)" if test.scoring == "open"
           else "")
        + f"; selection {test.probes('selection')} / confirmation {test.probes('confirmation')} probe images"
        + (f"; dropped identities with too few images: {test.dropped}" if test.dropped else ""))
    fingerprint = raw.fingerprint(file_digests)
    key = {"test_data": raw.spec.text, "test_data_sha256": hashlib.sha256(fingerprint.encode() + kept.tobytes()
                                                                          ).hexdigest(),
           "test_data_fingerprint": fingerprint, "size": int(e_meta["image_size"]), "scoring": test.scoring,
           "confirm_fraction": config.confirm_fraction, "enroll": config.enroll, "seed": config.seed}
    return LoadedTest(test, raw, int(kept.size), key, kept)


def recorded_determination(run: Run) -> tuple[DetermineConfig, Thresholds] | None:
    """The settings of the run's last determination (``run.json``, ``stages.determine``); None before one.

    What another measurement of the run (the capacity job) needs to score its test set as
    the determination did and to race with its ``attack_top``.
    """
    recorded = run.recorded("stages").get("determine")
    if not isinstance(recorded, dict):
        return None
    where = f"{run.paths.run_json}: stages.determine"
    return (section(DetermineConfig, recorded.get("config", {}), f"{where}.config"),
            section(Thresholds, recorded.get("thresholds", {}), f"{where}.thresholds"))


def open_determination(run: str | os.PathLike[str] | Run, config: DetermineConfig, thresholds: Thresholds,
                       settings: EvalSettings, adaptive: AdaptivePlan, redo: bool,
                       log: Callable[[str], None]) -> Determination:
    """Check the models, load and split the test set, open the library, key the resumable parts."""
    run = Run.open(run)
    paths = run.paths
    models = {"E": paths.models / "encrypted", "O": paths.models / "original"}
    metas = {k: find_checkpoint(p, kind="recognizer")[1] for k, p in models.items()}
    check_same_training(metas["O"], metas["E"])
    _, r_meta = find_checkpoint(paths.models / "inpainter", kind="inpainter")
    loaded = load_test(config.test_data or run.data, metas["E"], config, paths.file_digests, log)
    lib = MaskLibrary.open(str(paths.masks))
    key = {**loaded.key, "precision": settings.precision, "library_sha256": _library_sha(lib),
           "per_image": settings.per_image, "counts_format": COUNTS_FORMAT,
           "inpainter_sha256": r_meta.get("model_sha256"),
           **{f"model_{k}_sha256": m.get("model_sha256") for k, m in metas.items()}}
    d = Determination(run, config, thresholds, settings, adaptive, loaded.test, loaded.spec, loaded.images, lib,
                      models, paths.models / "inpainter", key, log, redo=redo, test_source=loaded.source,
                      test_rows=loaded.kept)
    if not d.present:
        raise MaskcryptError(f"mask library {lib.uri}: no mask in any bucket (empty library)")
    def explain(before: dict[str, Any]) -> str:
        old, raw = before.get("test_data_fingerprint"), loaded.source
        if before.get("test_data") != loaded.spec or old == loaded.key["test_data_fingerprint"]:
            return ""
        return f"test data {loaded.spec} changed: " + (describe_change(paths.manifests, old, raw) if old else
                                                        "its files were not recorded one by one then")

    _check_parts_key(d.parts, {k: v for k, v in key.items() if k != "inpainter_sha256"}, redo, explain)
    return d
