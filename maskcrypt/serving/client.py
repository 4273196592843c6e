"""A Python client that masks on its side, so the service never sees clean pixels.

The masks come from the run's ``targets.parquet`` (handed out by the operator) or, when
the operator enabled it (``share_masks``), from ``GET /v1/masks?pixels=true``.
:class:`Client` verifies every mask's sha256, masks each image locally with the chosen
mask (after the same centre crop and resize as the service), and sends the encrypted
image with ``premasked=true`` and the id of the mask it used::

    from maskcrypt.serving.client import Client
    c = Client("http://127.0.0.1:8000", targets="targets.parquet", api_key="...")  # targets=None: fetch
    c.recognize("face.jpg")          # or a uint8 C x H x W array; mask="best", "random" or an id
    c.enroll("alice", ["a1.jpg", "a2.jpg"])   # open-set services: one premasked upload per mask

Recognition is idempotent, so :meth:`Client.recognize` (and the mask fetch) retries a
connection error, a timeout or a 5xx answer ``retries`` times with exponential backoff
and jitter: when a replica dies, the requests it held fail once and succeed on a
replica Serve still has or starts. Enrollment is not idempotent (a retried request
whose first try did land would add the images twice) and is never retried.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.images import decode_image, to_chw
from maskcrypt.masks import mask_sha256, unpack_masks
from maskcrypt.masks.core import overlay


@dataclass(frozen=True)
class RetryPolicy:
    """How an idempotent request is retried: ``retries`` more tries after the first.

    Try ``n`` (1, 2, ...) waits ``min(max_delay_s, backoff_s * 2 ** (n - 1))`` times a
    random factor in [0.5, 1] (jitter: clients that failed together do not return
    together), or what a 503's ``Retry-After`` asks, capped at ``max_delay_s``.
    """

    retries: int = 3
    backoff_s: float = 0.25
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_delay_s < 0:
            raise MaskcryptError(f"client retry policy: expected retries, backoff_s, max_delay_s >= 0, got {self}")

    def delay(self, attempt: int, rng: random.Random, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(self.max_delay_s, float(retry_after))
        return min(self.max_delay_s, self.backoff_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


#: Failures worth another try of an idempotent request: the service or the way to it, not the request.
RETRY_STATUS = frozenset({500, 502, 503, 504})
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def retryable(exc: BaseException) -> bool:
    """A 5xx answer, a refused or dropped connection, or a timeout; never a 4xx (the request is wrong)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in RETRY_STATUS
    return isinstance(exc, NETWORK_ERRORS)


class Client:
    """A client of the recognition service; ``retries``, ``backoff_s``, ``max_delay_s``: see :class:`RetryPolicy`."""

    def __init__(self, url: str, targets: str | os.PathLike[str] | None = None, api_key: str = "",
                 timeout: float = 30.0, crop: str = "center", retries: int = 3, backoff_s: float = 0.25,
                 max_delay_s: float = 5.0):
        self.url, self.api_key, self.timeout, self.crop = url.rstrip("/"), api_key, timeout, crop
        self.retry = RetryPolicy(retries, backoff_s, max_delay_s)
        self.retried = 0  # retries done so far (a failure that a retry then recovered is counted here)
        self._sleep: Callable[[float], None] = time.sleep
        self._jitter = random.Random()
        self.ids, self.masks, digests = self._from_parquet(targets) if targets is not None else self._fetch()

        where = targets if targets is not None else f"{self.url}/v1/masks"
        for mid, mask, digest in zip(self.ids, self.masks, digests):
            if mask_sha256(mask) != digest:
                raise MaskcryptError(f"{where}: mask {mid} does not match its sha256")
        if not self.ids:
            raise MaskcryptError(f"{where}: holds no mask")
        self.rng = np.random.default_rng()

    @staticmethod
    def _from_parquet(targets: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, list[str]]:
        import pyarrow.parquet as pq

        table = pq.read_table(targets)
        height = json.loads((table.schema.metadata or {}).get(b"maskcrypt.height", b"0"))
        width = json.loads((table.schema.metadata or {}).get(b"maskcrypt.width", b"0"))
        if not height or not width:
            raise MaskcryptError(f"{targets}: not a maskcrypt targets file (no mask size in its metadata)")
        masks = unpack_masks(table.column("bits").to_pylist(), height, width)
        return table.column("mask_id").to_pylist(), masks, table.column("sha256").to_pylist()

    def _fetch(self) -> tuple[list[str], np.ndarray, list[str]]:
        listed = self._send("GET", "/v1/masks?pixels=true")
        pixels = listed.get("pixels") or []
        if not pixels:
            return [], np.zeros((0, 0, 0), np.uint8), []
        h, w = pixels[0]["height"], pixels[0]["width"]
        masks = unpack_masks([base64.b64decode(p["bits"]) for p in pixels], h, w)
        return [p["mask_id"] for p in pixels], masks, [p["sha256"] for p in pixels]

    def _send(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "image/png", idempotent: bool = True) -> dict[str, Any]:
        """One request, retried per :attr:`retry` when ``idempotent``; failures become a MaskcryptError."""
        headers = {"X-API-Key": self.api_key}
        if body is not None:
            headers["Content-Type"] = content_type
        tries = 1 + (self.retry.retries if idempotent else 0)
        for attempt in range(1, tries + 1):
            req = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except (*NETWORK_ERRORS, ValueError) as exc:
                if not retryable(exc) or attempt == tries:
                    raise self._failure(exc, attempt) from None
                retry_after = exc.headers.get("Retry-After") if isinstance(exc, urllib.error.HTTPError) else None
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()
                self.retried += 1
                self._sleep(self.retry.delay(attempt, self._jitter, retry_after))
        raise AssertionError("unreachable")

    def _failure(self, exc: Exception, tries: int) -> MaskcryptError:
        """The user-facing error for a request that failed for good (an answer, no connection, not JSON)."""
        after = f" (after {tries} tries)" if tries > 1 else ""
        if isinstance(exc, urllib.error.HTTPError):
            return MaskcryptError(f"service answered {exc.code}{after}: {exc.read().decode(errors='replace')}")
        if isinstance(exc, NETWORK_ERRORS):
            reason = getattr(exc, "reason", exc)
            return MaskcryptError(f"could not reach {self.url}{after}: {type(reason).__name__}: {reason}")
        return MaskcryptError(f"{self.url}: the answer is not JSON ({exc})")

    def _index(self, mask: str) -> int:
        if mask == "best":
            return 0
        if mask == "random":
            return int(self.rng.integers(len(self.ids)))
        if mask in self.ids:
            return self.ids.index(mask)
        raise MaskcryptError(f"client: unknown mask id {mask!r}; have {self.ids}")

    def _encrypted_png(self, image: Any, k: int) -> bytes:
        from PIL import Image

        encrypted = overlay(self._image(image)[None], self.masks[k])[0]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(encrypted.transpose(1, 2, 0))).save(buf, format="PNG")
        return buf.getvalue()

    def _image(self, image: Any) -> np.ndarray:
        """A path, bytes or uint8 C x H x W array -> uint8 3 x H x W at the masks' size."""
        from PIL import Image

        size = self.masks.shape[1:]
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.dtype != np.uint8:
                raise MaskcryptError(f"client: expected a uint8 C x H x W image, got {image.dtype} {image.shape}")
            pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)).squeeze())
            return to_chw(pil, (int(size[0]), int(size[1])), 3, self.crop)
        what = str(image) if isinstance(image, (str, os.PathLike)) else "client image"
        data = Path(image).read_bytes() if isinstance(image, (str, os.PathLike)) else image
        # A bomb, a file that is no image or a truncated one: a named UnreadableImage, never a crash.
        return decode_image(io.BytesIO(data), (int(size[0]), int(size[1])), 3, self.crop, what=what)

    def recognize(self, image: Any, mask: str = "best", top_k: int = 5) -> dict[str, Any]:
        """Mask ``image`` locally, send it premasked with the mask's id, return the service's answer."""
        k = self._index(mask)
        query = urllib.parse.urlencode({"premasked": "true", "mask": self.ids[k], "top_k": top_k})
        return self._send("POST", f"/v1/recognize?{query}", self._encrypted_png(image, k))

    def enroll(self, identity: str, images: list[Any]) -> dict[str, Any]:
        """Enroll ``identity`` in an open-set service under every mask, masking on this side.

        One request per mask: each carries the images masked by that mask, so the server
        stores embeddings for every mask a later probe may use and never sees clean pixels.
        """
        if not images:
            raise MaskcryptError(f"client: no image to enroll for {identity!r}")
        answer: dict[str, Any] = {}
        boundary = f"maskcrypt{self.rng.integers(1 << 62):x}"
        for k, mid in enumerate(self.ids):
            parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
                      "Content-Type: image/png\r\n\r\n").encode() + self._encrypted_png(image, k) + b"\r\n"
                     for i, image in enumerate(images)]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            query = urllib.parse.urlencode({"identity": identity, "premasked": "true", "mask": mid})
            answer = self._send("POST", f"/v1/enroll?{query}", body, f"multipart/form-data; boundary={boundary}",
                                idempotent=False)
        return answer
