"""Pictures and tables for people: image grids now, the run report as the method grows.

Pictures are written with :func:`save_png` (temp name, then rename), so a PNG that
exists is complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def grid_image(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    ncol: int = 8,
    scale: int = 1,
    pad: int = 2,
) -> Image.Image:
    """Tile uint8 ``N x C x H x W`` images (C = 1 or 3) into one RGB picture with captions.

    Small images are enlarged by ``scale`` (nearest) so a 32 px face stays legible;
    captions, when given, go under each tile in PIL's built-in font.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"grid_image: expected N x C x H x W with C in (1, 3), got {arr.shape}")
    n, c, h, w = arr.shape
    ncol = max(1, min(ncol, n))
    nrow = max(1, -(-n // ncol))
    th, tw = h * scale, w * scale
    cap_h = 12 if captions else 0
    canvas = Image.new("RGB", (ncol * (tw + pad) + pad, nrow * (th + cap_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(n):
        tile = arr[i].transpose(1, 2, 0)
        tile = np.repeat(tile, 3, axis=2) if c == 1 else tile
        img = Image.fromarray(np.ascontiguousarray(tile))
        if scale != 1:
            img = img.resize((tw, th), Image.NEAREST)
        x = pad + (i % ncol) * (tw + pad)
        y = pad + (i // ncol) * (th + cap_h + pad)
        canvas.paste(img, (x, y))
        if captions:
            draw.text((x, y + th), str(captions[i])[: max(4, tw // 6)], fill=(0, 0, 0), font=font)
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save ``image`` as PNG via a temporary name, so a partial file never looks complete."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, target)
    return target


def auto_scale(height: int, target: int = 96) -> int:
    """Integer enlargement that brings a tile of ``height`` pixels near ``target`` pixels."""
    return max(1, target // max(height, 1))
