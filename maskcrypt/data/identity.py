"""What a file source's images *are*: the sha256 of every file's bytes, cached by path, size and mtime.

A file source's index (paths and labels) does not say whether an image was edited or
replaced under the same name; the models, tables and per-mask parts computed from it
must not be reused then. So a file split's fingerprint covers each file's content. Hashing
a data set's bytes on every launch would cost minutes at VGGFace2's size (36 GB), so the
digests are cached in the run (``RUN/cache/files.parquet``) keyed by path, size and
modification time: a relaunch stats every file and reads only those whose size or mtime
moved (a ``touch`` re-reads the file and finds the same content). Large lists are
hashed in Ray tasks when Ray runs.

Every fingerprint taken with a run's cache also leaves that split's *manifest* in the run
(``RUN/cache/splits/<fingerprint>.parquet``: path, size, mtime, sha256, label), so a
relaunch that finds other data can name the difference: how many files changed, were
added or removed, and one of each by name (:func:`describe_change`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskcrypt.core.fileio import sha256_file, write_parquet

#: More files than this are hashed in Ray tasks (when Ray is initialized), in chunks of :data:`CHUNK` files.
HASH_IN_RAY_ABOVE = 4096
CHUNK = 2048

#: Digests already known in this process, by (path, size, mtime_ns): each file is read at most once per launch.
_KNOWN: dict[tuple[str, int, int], str] = {}


def _hash_many(paths: Sequence[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=8) as pool:  # reading files: threads overlap the I/O
        return list(pool.map(sha256_file, paths))


def stat_files(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Size and mtime (ns) of every file; a missing file is (-1, -1) (decoding names it later)."""
    def one(p: str) -> tuple[int, int]:
        try:
            st = os.stat(p)
        except OSError:
            return -1, -1
        return st.st_size, st.st_mtime_ns

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = list(pool.map(one, paths, chunksize=256))
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _hash_in_ray(paths: Sequence[str], chunk: int) -> list[str]:
    import ray

    task = ray.remote(num_cpus=1)(_hash_many)
    refs = [task.remote(list(paths[i:i + chunk])) for i in range(0, len(paths), chunk)]
    return [d for part in ray.get(refs) for d in part]


def content_digests(paths: Sequence[str], cache: Path | None = None, ray_above: int = HASH_IN_RAY_ABOVE,
                    chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sha256 of each file's bytes (a missing file: ""), its size and its mtime; reads only what the cache lacks.

    ``cache`` (a Parquet file: path, size, mtime_ns, sha256) is read first and rewritten
    atomically with what was hashed; entries of other paths are kept (several splits of a
    run share it).
    """
    import pandas as pd

    paths = [str(p) for p in paths]
    sizes, mtimes = stat_files(paths)
    known = dict(_KNOWN)
    old = None
    if cache is not None and cache.exists():
        try:
            old = pd.read_parquet(cache)
            known.update({(p, int(s), int(m)): d for p, s, m, d in
                          zip(old["path"], old["size"], old["mtime_ns"], old["sha256"])})
        except Exception:  # an unreadable cache is only a cache: rebuild it
            old = None
    digests = np.asarray([known.get((p, int(s), int(m)), "") for p, s, m in zip(paths, sizes, mtimes)],
                         dtype=object)
    todo = [i for i in range(len(paths)) if not digests[i] and sizes[i] >= 0]
    if todo:
        names = [paths[i] for i in todo]
        use_ray = False
        if len(names) > ray_above:
            import ray

            use_ray = ray.is_initialized()
        got = _hash_in_ray(names, chunk) if use_ray else _hash_many(names)
        for i, d in zip(todo, got):
            digests[i] = d
    for p, s, m, d in zip(paths, sizes, mtimes, digests):
        if d:
            _KNOWN[(p, int(s), int(m))] = d
    if cache is not None and (todo or old is None):
        frame = pd.DataFrame({"path": paths, "size": sizes, "mtime_ns": mtimes, "sha256": digests.astype(str)})
        frame = frame[frame["size"] >= 0]
        if old is not None:
            frame = pd.concat([old[~old["path"].isin(set(paths))], frame], ignore_index=True)
        write_parquet(frame, cache)
    return digests, sizes, mtimes


def write_manifest(folder: Path, fingerprint: str, paths: Sequence[str], labels: np.ndarray, digests: np.ndarray,
                   sizes: np.ndarray, mtimes: np.ndarray) -> Path:
    """The split's files as they were when ``fingerprint`` was taken: what a later relaunch compares with."""
    import pandas as pd

    out = folder / f"{fingerprint}.parquet"
    if not out.exists():
        write_parquet(pd.DataFrame({"path": list(paths), "size": sizes, "mtime_ns": mtimes,
                                    "sha256": np.asarray(digests).astype(str),
                                    "label": np.asarray(labels, np.int64)}), out)
    return out


@dataclass(frozen=True)
class Change:
    """How one file list differs from another: changed content, added and removed files, relabelled files."""

    changed: list[str]
    added: list[str]
    removed: list[str]
    relabelled: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.removed or self.relabelled)

    def describe(self) -> str:
        parts = []
        for word, files in (("changed", self.changed), ("added", self.added), ("removed", self.removed),
                            ("relabelled", self.relabelled)):
            if files:
                parts.append(f"{len(files)} file(s) {word} (e.g. {files[0]})")
        return ", ".join(parts) if parts else "the same files"


def compare(old_paths: Sequence[str], old_sha: Sequence[str], old_labels: Sequence[int], new_paths: Sequence[str],
            new_sha: Sequence[str], new_labels: Sequence[int]) -> Change:
    """The difference between two manifests (pure)."""
    before = {p: (d, int(lab)) for p, d, lab in zip(old_paths, old_sha, old_labels)}
    after = {p: (d, int(lab)) for p, d, lab in zip(new_paths, new_sha, new_labels)}
    common = [p for p in new_paths if p in before]
    return Change(changed=[p for p in common if before[p][0] != after[p][0]],
                  added=[p for p in new_paths if p not in before],
                  removed=[p for p in old_paths if p not in after],
                  relabelled=[p for p in common if before[p][0] == after[p][0] and before[p][1] != after[p][1]])


def describe_change(manifests: Path, old_fingerprint: str, split: object) -> str:
    """One phrase saying how ``split``'s files differ from those recorded under ``old_fingerprint``.

    ``split`` is a :class:`maskcrypt.data.stream.SourceSplit` whose fingerprint was taken
    with this run's cache. Without a recorded manifest (a run from before content
    identity, or a source that is not files) the phrase says what it can.
    """
    import pandas as pd

    old_file = manifests / f"{old_fingerprint}.parquet"
    paths = getattr(split, "paths", None)
    if paths is None:
        return "its images differ (a source that is not files: options, items or pixels)"
    if not old_file.exists():
        return ("the data it was computed from was not recorded file by file (a run from before maskcrypt identified "
                "files by content, or another run directory)")
    old = pd.read_parquet(old_file)
    new = pd.read_parquet(manifests / f"{split.fingerprint()}.parquet")  # type: ignore[attr-defined]
    change = compare(list(old["path"]), list(old["sha256"]), list(old["label"]), list(new["path"]),
                     list(new["sha256"]), list(new["label"]))
    return change.describe() if change else "the same files under other options (size, crop, split)"


def content_overlap(first: Sequence[str], second: Sequence[str]) -> tuple[int, str]:
    """How many items of ``first`` have a content digest that ``second`` also has, and one such digest ("")."""
    shared = set(map(str, first)) & set(map(str, second))
    common = [d for d in map(str, first) if d in shared]
    return len(common), (common[0] if common else "")
