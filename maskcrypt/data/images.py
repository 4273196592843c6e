"""Decode one image file into a uint8 ``C x H x W`` array: crop box, then resize.

Faces in the usual data sets are not framed alike: LFW's 250 x 250 images hold the
face in the middle (a centre box comes first), CelebA's aligned 178 x 218 images are
portrait (a centre square). Cropping before resizing keeps the face's proportions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskcrypt.core.errors import MaskcryptError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
#: Refuse absurd images before decoding them (decompression bombs).
MAX_PIXELS = 64_000_000


class UnreadableImage(MaskcryptError):
    """An image file that could not be decoded (corrupt, truncated, not an image); ``kind``: the decoder's error."""

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


class ImageTooLarge(UnreadableImage):
    """An image whose header declares more pixels than the limit (a decompression bomb, or just too big).

    ``pixels`` is the declared count, ``limit`` the limit that refused it; ``size`` is
    ``(width, height)`` when known (PIL's own bomb check reports the count only).
    """

    def __init__(self, what: str, pixels: int | None, limit: int, size: tuple[int, int] | None = None):
        self.pixels, self.limit, self.size = pixels, limit, size
        declared = (f"{size[0]}x{size[1]} = {pixels} pixels" if size
                    else f"{pixels} pixels" if pixels is not None else "more pixels than the decoder allows")
        super().__init__(f"{what}: image of {declared} exceeds the limit of {limit} pixels "
                         "(refused before decoding: a decompression bomb?)", "ImageTooLarge")


_PIL_BOMB = re.compile(r"\((\d+) pixels\)")


def open_image(source: str | os.PathLike[str] | IO[bytes], max_pixels: int = MAX_PIXELS,
               what: str | None = None) -> Image.Image:
    """``PIL.Image.open`` with the pixel limit checked on the header, before any pixel is decoded.

    PIL itself refuses images above ``2 * Image.MAX_IMAGE_PIXELS`` (~179 M) inside
    ``open`` with ``DecompressionBombError``, which is no ``OSError``; both that and our
    own, lower ``max_pixels`` become :class:`ImageTooLarge`, anything PIL cannot
    identify :class:`UnreadableImage`. The caller closes the image (``with``).
    """
    what = what or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as exc:
        found = _PIL_BOMB.search(str(exc))
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
        raise ImageTooLarge(what, int(found.group(1)) if found else None, min(max_pixels, pil_limit)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"{what}: unreadable image ({type(exc).__name__}: {exc})", type(exc).__name__) from None
    if img.width * img.height > max_pixels:
        size = (img.width, img.height)
        img.close()
        raise ImageTooLarge(what, size[0] * size[1], max_pixels, size)
    return img


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


def decode_image(source: str | os.PathLike[str] | IO[bytes], size: tuple[int, int], channels: int, crop: str,
                 max_pixels: int = MAX_PIXELS, what: str | None = None) -> np.ndarray:
    """Decode a file or stream as uint8 ``C x H x W``; anything PIL cannot fully decode raises :class:`UnreadableImage`.

    Images over ``max_pixels`` are refused from their header (:class:`ImageTooLarge`).
    """
    what = what or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    with open_image(source, max_pixels, what) as img:
        try:
            img.load()
            return to_chw(img, size, channels, crop)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise UnreadableImage(f"{what}: unreadable image ({type(exc).__name__}: {exc})",
                                  type(exc).__name__) from None


def decode_file(path: str | os.PathLike[str], size: tuple[int, int], channels: int, crop: str) -> np.ndarray:
    """Read one file as uint8 ``C x H x W``; a file PIL cannot fully decode raises :class:`UnreadableImage`."""
    return decode_image(path, size, channels, crop)


def probe_file(path: str | os.PathLike[str]) -> tuple[int, int, str]:
    """(width, height, PIL mode) of an image file, without decoding its pixels.

    An image over :data:`MAX_PIXELS` raises :class:`ImageTooLarge` (it could not be decoded anyway).
    """
    with open_image(path) as img:
        return img.width, img.height, img.mode


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
