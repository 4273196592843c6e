"""Writers of small data sets in the real on-disk layouts, for the loader tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def face(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 5, corrupt: bool = False,
                      empty_class: bool = False) -> Path:
    for c in range(classes):
        d = root / f"person_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(face(c * 100 + i)).save(d / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    if corrupt:
        (root / "person_0" / "zzz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    if empty_class:
        (root / "person_empty").mkdir()
    return root


def write_lfw(root: Path) -> Path:
    names = {"Alice_Smith": 3, "Bob_Jones": 2, "Carol_White": 1}
    for name, n in names.items():
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(face(hash(name) % 1000 + i, (250, 250))).save(root / name / f"{name}_{i:04d}.jpg")
    (root / "pairs.txt").write_text(
        "2\t1\n"
        "Alice_Smith\t1\t2\n"
        "Alice_Smith\t1\tBob_Jones\t1\n"
        "Bob_Jones\t1\t2\n"
        "Carol_White\t1\tAlice_Smith\t9\n"  # refers to a missing image: dropped
    )
    return root


def write_celeba(root: Path, official_layout: bool = False) -> Path:
    img = root / "img_align_celeba"
    img.mkdir(parents=True)
    ident, part = [], []
    for i in range(1, 13):
        name = f"{i:06d}.jpg"
        Image.fromarray(face(i, (218, 178))).save(img / name)
        ident.append(f"{name} {100 + i % 3}")
        part.append(f"{name} {0 if i <= 8 else (1 if i <= 10 else 2)}")
    anno = root / "Anno" if official_layout else root
    ev = root / "Eval" if official_layout else root
    anno.mkdir(exist_ok=True)
    ev.mkdir(exist_ok=True)
    (anno / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    (ev / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return root


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx(root: Path, gz: bool = True, n_train: int = 20, n_test: int = 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr, dims in (("images", x, "idx3"), ("labels", y, "idx1")):
            data = _idx_bytes(arr)
            name = f"{prefix}-{kind}-{dims}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root
