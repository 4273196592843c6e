"""The enrolled gallery of an open-set service: embeddings, never pixels, in ``RUN/gallery/``.

Open-set scoring (docs/determination.md, "Scoring") identifies a probe by the top-1 cosine similarity of E's
embedding to per-identity centroids (the normalized mean of unit embeddings), with the
gallery masked by the *same* mask as the probe. The service keeps that rule: an
enrollment stores the embedding of every enrolled image under every served mask, so a
probe under mask ``m`` is compared with centroids built under ``m`` whichever policy
(best, random, an id) chose it. A premasked enrollment is stored under its one mask;
identities with no embedding under a probe's mask fall back to their centroid over all
masks and are reported as such.

One file per identity (``<sha256(name)[:24]>.npz``), written to a dot-name and renamed,
so several replicas on shared storage see whole entries only, and a delete is one
unlink. Entries carry the model version they were embedded with; after a retrain they
are stale (listed, never matched) until re-enrolled.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskcrypt.core.errors import MaskcryptError

MAX_NAME = 200


def check_identity(name: str) -> str:
    """A usable identity name: 1-200 printable characters, no surrounding spaces."""
    if not isinstance(name, str) or not name.strip():
        raise MaskcryptError("identity name is empty: give 1-200 printable characters")
    if name != name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise MaskcryptError(f"identity name {name[:40]!r}: expected 1-{MAX_NAME} printable characters "
                             "without leading or trailing spaces")
    return name


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norm == 0, 1, norm)).astype(np.float32)


@dataclass
class Entry:
    """One identity: rows of (image, mask) embeddings, unit length."""

    identity: str
    model_version: str
    mask_ids: list[str]  # the masks named by ``mask_index``
    mask_index: np.ndarray  # int32 per row
    embeddings: np.ndarray  # float32 rows x D

    @property
    def images(self) -> int:
        """Enrolled images: the most embeddings held under one mask (premasked uploads come per mask)."""
        return int(np.bincount(self.mask_index).max()) if len(self.mask_index) else 0

    def centroid(self, mask_id: str) -> tuple[np.ndarray, bool]:
        """Unit centroid under ``mask_id``; ``False`` when it falls back to all masks."""
        if mask_id in self.mask_ids:
            rows = self.mask_index == self.mask_ids.index(mask_id)
            return unit(self.embeddings[rows].sum(0)), True
        return unit(self.embeddings.sum(0)), False

    def merged(self, other: Entry) -> Entry:
        """This entry with ``other``'s images appended (same model version)."""
        ids = list(self.mask_ids) + [m for m in other.mask_ids if m not in self.mask_ids]
        remap = np.array([ids.index(m) for m in other.mask_ids], np.int32)
        return Entry(self.identity, self.model_version, ids,
                     np.concatenate([self.mask_index, remap[other.mask_index]]).astype(np.int32),
                     np.concatenate([self.embeddings, other.embeddings]).astype(np.float32))


def entry_from(identity: str, model_version: str, mask_ids: list[str], embeddings: np.ndarray) -> Entry:
    """An entry from an ``images x masks x D`` block of embeddings."""
    n, m, d = embeddings.shape
    if m != len(mask_ids) or n == 0:
        raise MaskcryptError(f"enrollment of {identity!r}: {n} image(s) x {m} mask(s) of embeddings for "
                             f"{len(mask_ids)} mask id(s)")
    return Entry(check_identity(identity), model_version, list(mask_ids),
                 np.tile(np.arange(m, dtype=np.int32), n),
                 unit(embeddings.reshape(n * m, d)))


class Gallery:
    """The identities enrolled in one run directory; re-read only when the folder changes."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, Entry] = {}
        self._read_at = 0
        self._matrices: dict[tuple[str, str], tuple[list[str], np.ndarray, list[str]]] = {}

    def _path(self, identity: str) -> Path:
        return self.root / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.npz"

    def _read(self, path: Path) -> Entry:
        try:
            with np.load(path, allow_pickle=False) as z:
                return Entry(str(z["identity"]), str(z["model_version"]), [str(m) for m in z["mask_ids"]],
                             z["mask_index"], z["embeddings"])
        except (OSError, KeyError, ValueError) as exc:
            raise MaskcryptError(f"gallery entry {path} is unreadable ({exc}); delete it and re-enroll") from None

    def entries(self) -> dict[str, Entry]:
        """Every entry by identity, re-read when the folder's listing changed (another replica wrote)."""
        try:
            st = self.root.stat()
        except FileNotFoundError:
            self._stamp, self._entries, self._matrices = None, {}, {}
            return self._entries
        stamp = (st.st_mtime_ns, st.st_ino)
        # A folder's mtime ticks coarsely (ms on ext4, s on some NFS): a listing read within
        # a second of the last change may miss a write in the same tick, so it is not trusted.
        if stamp != self._stamp or self._read_at - st.st_mtime_ns < 1_000_000_000:
            read_at = time.time_ns()
            found = {}
            for path in sorted(self.root.glob("[!.]*.npz")):
                entry = self._read(path)
                found[entry.identity] = entry
            self._matrices = {}
            self._stamp, self._entries, self._read_at = stamp, found, read_at
        return self._entries

    def add(self, entry: Entry) -> tuple[Entry, bool]:
        """Store ``entry``, merged with the identity's current one; ``True`` when a stale one was replaced."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(entry.identity)
        replaced = False
        if path.exists():
            old = self._read(path)
            if old.model_version == entry.model_version:
                entry = old.merged(entry)
            else:
                replaced = True
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, identity=np.array(entry.identity), model_version=np.array(entry.model_version),
                 mask_ids=np.array(entry.mask_ids), mask_index=entry.mask_index,
                 embeddings=entry.embeddings)
        os.replace(tmp, path)
        return entry, replaced

    def remove(self, identity: str) -> bool:
        try:
            self._path(identity).unlink()
        except FileNotFoundError:
            return False
        return True

    def matrix(self, mask_id: str, model_version: str) -> tuple[list[str], np.ndarray, list[str]]:
        """Identities, their unit centroids under ``mask_id`` (rows), and those that fell back to all masks.

        Entries embedded by another model version are left out: their embeddings live in
        another space. Cached until the gallery changes: recognition asks for it on every
        request.
        """
        entries = self.entries()
        key = (mask_id, model_version)
        if key in self._matrices:
            return self._matrices[key]
        names, rows, fallback = [], [], []
        for name, entry in sorted(entries.items()):
            if entry.model_version != model_version:
                continue
            c, exact = entry.centroid(mask_id)
            names.append(name)
            rows.append(c)
            if not exact:
                fallback.append(name)
        result = names, (np.stack(rows) if rows else np.zeros((0, 0), np.float32)), fallback
        self._matrices[key] = result
        return result
