"""Recognition behind the target masks (docs/method.md): the request handling, without Serve.

Pure parts, tested without a server: :class:`ServiceConfig` (the deployment's
``user_config``), :func:`load_targets` (the run's target masks, every sha256 verified),
:func:`decode_upload` (bytes from a client to a uint8 image at the model's size, with a
clear 400/413 for anything else), :func:`choose_mask`, :func:`rank` and the upload
parser. The Ray Serve deployment that wires them to E is :mod:`maskcrypt.serving.deployment`.

Closed-set runs answer with E's classes. Open-set runs (the run's scoring, or
``scoring="open"``) answer from the gallery enrolled through ``/v1/enroll``
(:mod:`maskcrypt.serving.gallery`): embeddings only, stored in the run directory.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import check_precision
from maskcrypt.data.images import ImageTooLarge, UnreadableImage, open_image, to_chw
from maskcrypt.masks import MaskLibrary, mask_sha256, unpack_masks

FORMATS = ("PNG", "JPEG")


class ServiceError(MaskcryptError):
    """A request the service refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceConfig:
    """What a replica serves and how; the deployment's ``user_config`` (changes apply without a restart)."""

    run: str = "runs/default"
    allow_candidates: bool = False  # serve the best candidates when the run found no target mask
    api_key: str = ""  # "" = $MASKCRYPT_API_KEY of the replica, if set; else open. X-API-Key on all but /healthz
    max_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    crop: str = "center"
    precision: str = "auto"
    top_k: int = 5
    scoring: str = "auto"  # auto = the run's (targets.json); "open" serves E's embeddings against a gallery
    share_masks: bool = False  # GET /v1/masks?pixels=true hands the target masks to clients
    max_enroll_images: int = 16
    max_batch_images: int = 64  # images in one POST /v1/recognize/batch
    min_score: float = -1.0  # open set: a best cosine below it answers identity null (unknown face)
    max_batch_size: int = 0  # images per forward, across requests (@serve.batch); 0 = by device (16 CPU, 128 GPU)
    batch_wait_timeout_s: float = 0.002

    def __post_init__(self) -> None:
        if self.scoring not in ("auto", "closed", "open"):
            raise MaskcryptError(f"serving config: scoring={self.scoring!r}, expected auto, closed or open")
        if not -1.0 <= self.min_score <= 1.0:
            raise MaskcryptError(f"serving config: min_score={self.min_score} is a cosine, expected [-1, 1]")
        check_precision(self.precision, "serving config: precision")
        if self.batch_wait_timeout_s < 0:
            raise MaskcryptError(f"serving config: batch_wait_timeout_s={self.batch_wait_timeout_s}, expected >= 0")
        if self.max_batch_size < 0:
            raise MaskcryptError(f"serving config: max_batch_size={self.max_batch_size}, expected >= 1 (0 = auto)")
        for name in ("max_bytes", "max_pixels", "top_k", "max_enroll_images", "max_batch_images"):
            if getattr(self, name) < 1:
                raise MaskcryptError(f"serving config: {name}={getattr(self, name)}, expected >= 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise MaskcryptError(f"serving config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class Targets:
    """The masks a service may apply, best first, with their pre-tested figures."""

    ids: list[str]
    masks: np.ndarray  # uint8 n x H x W, 0 = occluded
    figures: list[dict[str, Any]] = field(default_factory=list)
    source: str = "targets"  # or "candidates" (allow_candidates on a run without targets)
    scoring: str = "closed"  # how the run was scored (targets.json)
    sha256: list[str] = field(default_factory=list)


def load_targets(run: str | os.PathLike[str], allow_candidates: bool = False) -> Targets:
    """Read ``targets.json`` + ``targets.parquet`` and verify every mask's sha256 against both.

    A run with no target mask is refused, naming the rule that emptied the set, unless
    ``allow_candidates``: then the candidates (``results/candidates.parquet``) are
    served, best first, and ``source`` says so.
    """
    import pyarrow.parquet as pq

    root = Path(run)
    meta_path = root / "targets.json"
    if not meta_path.exists():
        raise MaskcryptError(f"run {root}: no targets.json (run the determination first: jobs/select.py)")
    meta = json.loads(meta_path.read_text())
    if meta["targets"]:
        table = pq.read_table(root / "targets.parquet")
        ids = table.column("mask_id").to_pylist()
        if ids != [t["mask_id"] for t in meta["targets"]]:
            raise MaskcryptError(f"run {root}: targets.parquet and targets.json list different masks")
        lib = MaskLibrary.open(str(root / "masks"))
        masks = unpack_masks(table.column("bits").to_pylist(), lib.height, lib.width)
        for mid, mask, stored, t in zip(ids, masks, table.column("sha256").to_pylist(), meta["targets"]):
            digest = mask_sha256(mask)
            if digest != stored or digest != t["sha256"]:
                raise MaskcryptError(f"run {root}: target mask {mid} does not match its sha256 (file changed?)")
        return Targets(ids, masks, meta["targets"], "targets", meta.get("scoring", "closed"),
                       [t["sha256"] for t in meta["targets"]])
    why = (meta.get("reason") or {}).get("message", "no reason recorded")
    if not allow_candidates:
        raise MaskcryptError(f"run {root}: no target mask ({why}); pass --allow-candidates to serve the best "
                             "candidates instead")
    cands_path = root / "results" / "candidates.parquet"
    if not cands_path.exists():
        raise MaskcryptError(f"run {root}: no target mask and no candidates ({why})")
    import pandas as pd

    cands = pd.read_parquet(cands_path).sort_values(["third", "mask_id"], ascending=[False, True])
    lib = MaskLibrary.open(str(root / "masks"))
    batch = lib.get(cands["mask_id"].tolist())
    figures = [{"mask_id": r.mask_id, "bucket": int(r.bucket), "third": float(r.third)} for r in cands.itertuples()]
    return Targets(batch.mask_ids, batch.masks, figures, "candidates", meta.get("scoring", "closed"),
                   [mask_sha256(m) for m in batch.masks])


def decode_upload(data: bytes, size: tuple[int, int], channels: int, config: ServiceConfig) -> np.ndarray:
    """Client bytes -> uint8 ``C x H x W`` at the model's size (cropped and resized as in training)."""
    from PIL import Image

    if not data:
        raise ServiceError(400, "empty body: send a PNG or JPEG image")
    if len(data) > config.max_bytes:
        raise ServiceError(413, f"image of {len(data)} bytes exceeds the limit of {config.max_bytes}")
    try:
        # The pixel limit is checked on the header, before decoding; PIL's own bomb check
        # (DecompressionBombError, raised inside open above ~179 M pixels) ends up here too.
        img = open_image(io.BytesIO(data), config.max_pixels, "upload")
    except ImageTooLarge as exc:
        raise ServiceError(413, str(exc)) from None
    except UnreadableImage as exc:
        raise ServiceError(400, f"not an image ({exc.kind}); send PNG or JPEG") from None
    with img:
        if img.format not in FORMATS:
            raise ServiceError(400, f"unsupported format {img.format}; send PNG or JPEG")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ServiceError(400, f"truncated or corrupt {img.format} ({type(exc).__name__})") from None
        if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I"):
            raise ServiceError(400, f"unsupported image mode {img.mode}")
        return to_chw(img, size, channels, config.crop)


def choose_mask(policy: str, targets: Targets, rng: np.random.Generator, premasked: bool = False) -> int:
    """Index of the mask to apply: ``best`` (first), ``random`` (per request) or a mask id.

    For a premasked image the policy names the mask the client used; ``random`` is then
    meaningless (the server cannot know the client's draw).
    """
    if policy == "best":
        return 0
    if policy == "random":
        if premasked:
            raise ServiceError(400, "premasked=true with mask=random: name the mask the client applied")
        return int(rng.integers(len(targets.ids)))
    try:
        return targets.ids.index(policy)
    except ValueError:
        raise ServiceError(404, f"unknown mask id {policy!r}; served: {targets.ids}") from None


def check_top_k(top_k: int | None, default: int) -> int:
    """The number of answers a request asks for: ``default`` when absent, a 400 below 1."""
    if top_k is None:
        return default
    if top_k < 1:
        raise ServiceError(400, f"top_k={top_k}: expected an integer >= 1 (or leave it out for {default})")
    return int(top_k)


def rank(scores: np.ndarray, names: list[str], k: int) -> list[tuple[int, str, float]]:
    """The ``k`` best (index, name, score), best first; ties broken by index for stable answers."""
    order = np.lexsort((np.arange(len(scores)), -scores))[:max(1, min(k, len(scores)))]
    return [(int(i), names[int(i)], float(scores[i])) for i in order]


def mask_payload(targets: Targets) -> list[dict[str, Any]]:
    """The served masks as JSON a client can verify: packed bits (base64), size and sha256."""
    h, w = targets.masks.shape[1:]
    return [{"mask_id": mid, "height": int(h), "width": int(w), "sha256": digest,
             "bits": base64.b64encode(np.packbits(mask.reshape(-1) > 0).tobytes()).decode()}
            for mid, mask, digest in zip(targets.ids, targets.masks, targets.sha256)]


async def read_images(request: Request, limit: int) -> tuple[list[bytes], dict[str, str]]:
    """Image bytes of a raw body (one) or of every multipart field named ``image``, plus text fields."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        return [await request.body()], {}
    try:
        form = await request.form(max_files=limit + 1)
    except Exception as exc:  # malformed multipart: the client's fault, never a 500
        detail = str(getattr(exc, "detail", "") or exc)
        if "Too many files" in detail:  # starlette stops parsing past max_files
            raise ServiceError(413, f"more than {limit} images in one request; the limit is {limit}") from None
        raise ServiceError(400, f"malformed multipart body ({type(exc).__name__}: {detail})") from None
    uploads = [u for u in form.getlist("image") if not isinstance(u, str)]
    if not uploads:
        raise ServiceError(400, "multipart body without a file field named 'image'")
    if len(uploads) > limit:
        raise ServiceError(413, f"{len(uploads)} images in one request; the limit is {limit}")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return [await u.read() for u in uploads], fields
