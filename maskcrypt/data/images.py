"""Decode one image file into a uint8 ``C x H x W`` array: crop box, then resize.

Faces in the usual data sets are not framed alike: LFW's 250 x 250 images hold the
face in the middle (a centre box comes first), CelebA's aligned 178 x 218 images are
portrait (a centre square). Cropping before resizing keeps the face's proportions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskcrypt.errors import MaskcryptError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
#: Refuse absurd images before decoding them (decompression bombs).
MAX_PIXELS = 64_000_000


class UnreadableImage(MaskcryptError):
    """An image file that could not be decoded (corrupt, truncated, not an image)."""


def crop_box(crop: str, width: int, height: int, target: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box for a crop option on a ``width x height`` image.

    ``none``: no crop; ``center``: the largest centred box with the target's aspect;
    ``S``: a centred ``S x S`` box; ``x0,y0,x1,y1``: that box.
    """
    crop = crop.strip().lower()
    if crop in ("", "none"):
        return None
    if crop == "center":
        th, tw = target
        aspect = tw / th
        if width / height > aspect:
            cw, ch = round(height * aspect), height
        else:
            cw, ch = width, round(width / aspect)
        x0, y0 = (width - cw) // 2, (height - ch) // 2
        return x0, y0, x0 + cw, y0 + ch
    parts = crop.split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise MaskcryptError(f"crop: expected none, center, S or x0,y0,x1,y1, got {crop!r}") from None
    if len(nums) == 1:
        s = min(nums[0], width, height)
        x0, y0 = (width - s) // 2, (height - s) // 2
        return x0, y0, x0 + s, y0 + s
    if len(nums) == 4:
        x0, y0, x1, y1 = nums
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise MaskcryptError(f"crop: box {crop!r} does not fit inside a {width}x{height} image")
        return x0, y0, x1, y1
    raise MaskcryptError(f"crop: expected none, center, S or x0,y0,x1,y1, got {crop!r}")


def to_chw(img: Image.Image, size: tuple[int, int], channels: int, crop: str) -> np.ndarray:
    """Convert a PIL image to uint8 ``C x H x W`` at ``size`` (H, W) with ``channels`` (1 or 3)."""
    img = img.convert("L" if channels == 1 else "RGB")
    box = crop_box(crop, img.width, img.height, size)
    if box is not None:
        img = img.crop(box)
    h, w = size
    if (img.height, img.width) != (h, w):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_file(path: str | os.PathLike[str], size: tuple[int, int], channels: int, crop: str) -> np.ndarray:
    """Read one file as uint8 ``C x H x W``; a file PIL cannot fully decode raises :class:`UnreadableImage`."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise UnreadableImage(f"{path}: {img.width}x{img.height} exceeds {MAX_PIXELS} pixels")
            img.load()
            return to_chw(img, size, channels, crop)
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def probe_file(path: str | os.PathLike[str]) -> tuple[int, int, str]:
    """(width, height, PIL mode) of an image file, without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return img.width, img.height, img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"{path}: unreadable image ({exc})") from None


def decode_many(
    paths: Sequence[str],
    size: tuple[int, int],
    channels: int,
    crop: str,
    threads: int = 4,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode ``paths`` in a thread pool (PIL releases the GIL while decoding).

    Returns the stacked images of the files that decoded, their positions in ``paths``,
    and ``(path, reason)`` for each file that did not.
    """
    def one(p: str) -> np.ndarray | str:
        try:
            return decode_file(p, size, channels, crop)
        except UnreadableImage as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(one, paths, chunksize=64))
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    bad = [(paths[i], str(r)) for i, r in enumerate(results) if isinstance(r, str)]
    h, w = size
    images = (np.stack([results[i] for i in good]) if good
              else np.zeros((0, channels, h, w), dtype=np.uint8))
    return images, good, bad
