"""Write a source's images as an image folder (``ROOT/<class>/<n>.jpg``): real files for real-path tests.

``maskcrypt data export SPEC --out DIR`` turns any source (the synthetic faces, an npz)
into the layout ``imagefolder:`` reads, so the file path of training and evaluation
(decode, crop and resize in Ray Data tasks) can be measured and tested with data of any
size. The folder is built under a temporary name and renamed when complete, so a
folder that exists holds every image.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.stream import SourceSplit


def write_imagefolder(split: SourceSplit, out: str | os.PathLike[str], fmt: str = "jpg", quality: int = 95,
                      chunk: int = 512) -> int:
    """Every image of ``split`` as ``out/<class name>/<position>.<fmt>``; returns how many were written."""
    if fmt not in ("jpg", "png"):
        raise MaskcryptError(f"--format: expected jpg or png, got {fmt!r}")
    target = Path(out)
    if target.exists():
        raise MaskcryptError(f"--out {target}: already exists (choose a new folder)")
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name in set(split.class_names[i] for i in np.unique(split.labels)):
            (tmp / name).mkdir(parents=True)
        for start in range(0, len(split), chunk):
            positions = np.arange(start, min(start + chunk, len(split)))
            for pos, image in zip(positions, split.read(positions)):
                pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)).squeeze())
                path = tmp / split.class_names[split.labels[pos]] / f"{pos:07d}.{fmt}"
                pil.save(path, quality=quality) if fmt == "jpg" else pil.save(path)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(split)
