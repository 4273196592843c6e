"""A picture of a mask library: a few masks per bucket (or chosen ids), holes in black."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from maskcrypt.masks.library import MaskLibrary
from maskcrypt.report import auto_scale, grid_image


def mask_grid(library: MaskLibrary, ids: Sequence[str] | None = None, per_bucket: int = 8) -> Image.Image:
    """Tile masks with id and ratio captions: the chosen ``ids``, or ``per_bucket`` per bucket (rows)."""
    if ids:
        batches = [library.get(list(ids))]
        ncol = min(len(ids), 8)
    else:
        batches = []
        for b in [*range(1, len(library.edges)), -1]:
            batch = next(library.iter_batches(per_bucket, buckets=[b]), None)
            if batch is not None and len(batch):
                batches.append(batch)
        ncol = per_bucket
    masks = np.concatenate([b.masks[:, None] * 255 for b in batches]) if batches else np.zeros((0, 1, 1, 1))
    captions = [f"b{int(bk)} {r:.3f}" if not ids else f"{mid} {r:.2f}"
                for b in batches for mid, bk, r in zip(b.mask_ids, b.buckets, b.ratios)]
    # Rows per bucket: pad each bucket's run to a full row so buckets start on new rows.
    if not ids:
        tiles, caps = [], []
        pos = 0
        for b in batches:
            n = len(b)
            tiles.append(masks[pos:pos + n])
            caps.extend(captions[pos:pos + n])
            pad = (-n) % ncol
            if pad:
                tiles.append(np.full((pad, 1, library.height, library.width), 255, np.uint8))
                caps.extend([""] * pad)
            pos += n
        masks, captions = (np.concatenate(tiles), caps) if tiles else (masks, captions)
    return grid_image(masks.astype(np.uint8), captions, ncol=ncol, scale=auto_scale(library.height))
