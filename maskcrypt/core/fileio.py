"""Atomic writes: an artifact that exists is complete.

Every file maskcrypt writes for others to read (tables, JSON records, pictures, the
report, checkpoints' meta.json, gallery entries) is written under a temporary sibling
name and renamed over the target in one step, so a reader, a relaunch or a crash never
sees half a file. This is the one implementation; it needs a POSIX-like rename (local
disks, EFS/NFS), which is why run directories on object stores are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; renamed over ``path`` on success, removed on failure.

    ``suffix`` keeps an extension that a writer insists on (``np.savez`` appends ``.npz``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any, indent: int = 1) -> Path:
    """JSON with sorted keys; numpy scalars and paths written as their plain values."""
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=True, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_parquet(df: Any, path: str | os.PathLike[str]) -> Path:
    """A pandas DataFrame or a pyarrow Table as one Parquet file."""
    with atomic_path(path) as tmp:
        if hasattr(df, "to_parquet"):
            df.to_parquet(tmp, index=False)
        else:
            import pyarrow.parquet as pq

            pq.write_table(df, tmp)
    return Path(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 1 MB blocks (checkpoints, data files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_figure(fig: Any, path: Path) -> Path:
    """A matplotlib figure as PNG, closed after."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
