"""A Python client that masks on its side, so the service never sees clean pixels.

The operator hands out the run's ``targets.parquet`` (the target masks in library
format); :class:`Client` verifies every mask's sha256, masks each image locally with the
chosen mask (after the same centre crop and resize as the service), and sends the
encrypted image with ``premasked=true``::

    from maskcrypt.client import Client
    c = Client("http://127.0.0.1:8000", targets="targets.parquet", api_key="...")
    c.recognize("face.jpg")          # or a uint8 C x H x W array; mask="best", "random" or an id
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.errors import MaskcryptError


class Client:
    def __init__(self, url: str, targets: str | os.PathLike[str], api_key: str = "", timeout: float = 30.0,
                 crop: str = "center"):
        import pyarrow.parquet as pq

        from maskcrypt.masks import mask_sha256, unpack_masks

        table = pq.read_table(targets)
        height = json.loads((table.schema.metadata or {}).get(b"maskcrypt.height", b"0"))
        width = json.loads((table.schema.metadata or {}).get(b"maskcrypt.width", b"0"))
        if not height or not width:
            raise MaskcryptError(f"{targets}: not a maskcrypt targets file (no mask size in its metadata)")
        self.ids = table.column("mask_id").to_pylist()
        self.masks = unpack_masks(table.column("bits").to_pylist(), height, width)
        for mid, mask, digest in zip(self.ids, self.masks, table.column("sha256").to_pylist()):
            if mask_sha256(mask) != digest:
                raise MaskcryptError(f"{targets}: mask {mid} does not match its sha256")
        if not self.ids:
            raise MaskcryptError(f"{targets}: holds no mask")
        self.url, self.api_key, self.timeout, self.crop = url.rstrip("/"), api_key, timeout, crop
        self.rng = np.random.default_rng()

    def _image(self, image: Any) -> np.ndarray:
        """A path, bytes or uint8 C x H x W array -> uint8 3 x H x W at the masks' size."""
        from PIL import Image

        from maskcrypt.data.images import to_chw

        size = self.masks.shape[1:]
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.dtype != np.uint8:
                raise MaskcryptError(f"client: expected a uint8 C x H x W image, got {image.dtype} {image.shape}")
            pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)).squeeze())
        else:
            data = Path(image).read_bytes() if isinstance(image, (str, os.PathLike)) else image
            pil = Image.open(io.BytesIO(data))
        return to_chw(pil, (int(size[0]), int(size[1])), 3, self.crop)

    def recognize(self, image: Any, mask: str = "best", top_k: int = 5) -> dict[str, Any]:
        """Mask ``image`` locally, send it premasked, return the service's answer with our mask id."""
        from PIL import Image

        if mask == "best":
            k = 0
        elif mask == "random":
            k = int(self.rng.integers(len(self.ids)))
        elif mask in self.ids:
            k = self.ids.index(mask)
        else:
            raise MaskcryptError(f"client: unknown mask id {mask!r}; have {self.ids}")
        encrypted = self._image(image) * self.masks[k][None]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(encrypted.transpose(1, 2, 0))).save(buf, format="PNG")
        req = urllib.request.Request(f"{self.url}/v1/recognize?premasked=true&top_k={top_k}", data=buf.getvalue(),
                                     headers={"Content-Type": "image/png", "X-API-Key": self.api_key})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise MaskcryptError(f"service answered {exc.code}: {exc.read().decode(errors='replace')}") from None
        return {**answer, "mask_id": self.ids[k]}
