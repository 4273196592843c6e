"""Mask images in and out: import a directory of mask files, export masks as PNG or npy.

Polarity on disk differs between sources. The NVIDIA irregular-mask PNGs are 8-bit
with **white (255) = hole**, so the default ``hole_value=255`` inverts them into our
0 = occluded convention; ``hole_value=0`` reads files where black is the hole.
Exported PNGs use white = hole again, so tools written for NVIDIA's files read them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks.core import check_mask
from maskcrypt.masks.library import AppendResult, MaskLibrary

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
#: Pixels strictly between these levels count as "mid-grey" (neither hole nor kept).
_GREY_LO, _GREY_HI = 32, 224


class NotAMaskError(MaskcryptError):
    """A readable image that is not a binary mask (too many mid-grey pixels)."""


@dataclass
class ImportReport:
    """Outcome of an import: what was added, deduplicated, refused and unreadable."""

    added: int = 0
    duplicates: int = 0
    not_masks: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.not_masks + self.unreadable


def read_mask_file(
    path: str | os.PathLike[str],
    size: tuple[int, int],
    hole_value: int = 255,
    max_grey_fraction: float = 0.05,
) -> np.ndarray:
    """Read one mask image as uint8 ``(H, W)`` with 0 = occluded, resized (nearest) to ``size``.

    The image is binarized at 128. A file where more than ``max_grey_fraction`` of the
    pixels are mid-grey is not a mask (a photo, an anti-aliased drawing) and is refused
    with its name; so is a file PIL cannot decode.
    """
    if hole_value not in (0, 255):
        raise MaskcryptError(f"--hole-value: expected 0 or 255, got {hole_value}")
    try:
        with Image.open(path) as img:
            img.load()
            grey = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MaskcryptError(f"{path}: not a readable image ({exc})") from None
    mid = np.count_nonzero((grey > _GREY_LO) & (grey < _GREY_HI)) / max(grey.size, 1)
    if mid > max_grey_fraction:
        raise NotAMaskError(
            f"{path}: not a binary mask ({mid:.0%} of pixels are mid-grey, expected at most "
            f"{max_grey_fraction:.0%} of values away from 0 and 255)"
        )
    h, w = size
    if grey.shape != (h, w):
        grey = np.asarray(Image.fromarray(grey).resize((w, h), Image.NEAREST))
    white = grey >= 128
    kept = ~white if hole_value == 255 else white
    return kept.astype(np.uint8)


def _mask_files(src: Path) -> list[Path]:
    if not src.is_dir():
        raise MaskcryptError(f"mask import: {src} is not a directory")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in MASK_EXTENSIONS)
    if not files:
        raise MaskcryptError(f"mask import: no {'/'.join(MASK_EXTENSIONS)} files under {src}")
    return files


def import_masks(
    src_dir: str | os.PathLike[str],
    library: MaskLibrary,
    hole_value: int = 255,
    strict: bool = False,
    chunk: int = 2000,
    max_grey_fraction: float = 0.05,
) -> ImportReport:
    """Import every mask image under ``src_dir`` into ``library`` in one commit.

    The id of a mask is its path relative to ``src_dir`` without the extension
    (``00007`` for NVIDIA's ``00007.png``); the source column keeps the relative file
    name. Duplicates (same sha256) are skipped and counted. Unreadable files and
    non-masks are listed in the report, or abort the import with ``strict``.
    """
    src = Path(src_dir)
    files = _mask_files(src)
    report = ImportReport()
    size = (library.height, library.width)

    def batches() -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
        for start in range(0, len(files), chunk):
            masks, ids, sources = [], [], []
            for path in files[start:start + chunk]:
                rel = path.relative_to(src)
                try:
                    masks.append(read_mask_file(path, size, hole_value, max_grey_fraction))
                except MaskcryptError as exc:
                    if strict:
                        raise
                    listing = report.not_masks if isinstance(exc, NotAMaskError) else report.unreadable
                    listing.append((str(rel), str(exc)))
                    continue
                ids.append(rel.with_suffix("").as_posix())
                sources.append(rel.as_posix())
            if masks:
                yield np.stack(masks), ids, sources

    result: AppendResult = library.append(batches())
    report.added, report.duplicates = result.added, result.duplicates
    if report.skipped:
        warnings.warn(f"mask import: skipped {len(report.skipped)} file(s) under {src}", stacklevel=2)
    return report


def _safe_name(mask_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in mask_id)


def export_masks(
    library: MaskLibrary,
    out_dir: str | os.PathLike[str],
    mask_ids: Sequence[str] | None = None,
    fmt: str = "png",
) -> list[Path]:
    """Write masks as ``<id>.png`` (white = hole, 8-bit) or ``<id>.npy`` (uint8, 0 = occluded)."""
    if fmt not in ("png", "npy"):
        raise MaskcryptError(f"--format: expected png or npy, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batches = [library.get(list(mask_ids))] if mask_ids else library.iter_batches()
    written: list[Path] = []
    for batch in batches:
        for mid, mask in zip(batch.mask_ids, batch.masks):
            target = out / f"{_safe_name(mid)}.{fmt}"
            tmp = target.with_name(f".{target.name}.tmp")
            if fmt == "png":
                Image.fromarray(np.where(mask == 0, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
            else:
                with open(tmp, "wb") as f:
                    np.save(f, check_mask(mask))
            os.replace(tmp, target)
            written.append(target)
    return written
