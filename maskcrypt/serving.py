"""Recognition behind the target masks on Ray Serve: mask, then recognize (METHOD.md, "Recognition").

The pure parts come first and are tested without Serve: :func:`load_targets` (the run's
target masks, every sha256 verified), :func:`decode_upload` (bytes from a client to a
uint8 image at the model's size, with a clear 400/413 for anything else) and
:func:`choose_mask`. :func:`build_app` wraps them in a FastAPI ingress deployment whose
``@serve.batch`` method recognizes masked images in batches with E.

FastAPI resolves the endpoints' annotations at run time from this module's globals:
hence no postponed annotations here and its imports at the top. This first version
answers closed-set runs (E's classifier); open-set galleries (``/v1/enroll``) are not
built yet.
"""

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from maskcrypt.errors import MaskcryptError

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
    api_key: str = ""  # "" = open; else every endpoint but /healthz needs header X-API-Key
    max_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    crop: str = "center"
    precision: str = "auto"
    top_k: int = 5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServiceConfig":
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


def load_targets(run: str | os.PathLike[str], allow_candidates: bool = False) -> Targets:
    """Read ``targets.json`` + ``targets.parquet`` and verify every mask's sha256 against both.

    A run with no target mask is refused, naming the rule that emptied the set, unless
    ``allow_candidates``: then the candidates (``results/candidates.parquet``) are
    served, best first, and ``source`` says so.
    """
    import pyarrow.parquet as pq

    from maskcrypt.masks import MaskLibrary, mask_sha256, unpack_masks

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
        return Targets(ids, masks, meta["targets"], "targets")
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
    return Targets(batch.mask_ids, batch.masks, figures, "candidates")


def decode_upload(data: bytes, size: tuple[int, int], channels: int, config: ServiceConfig) -> np.ndarray:
    """Client bytes -> uint8 ``C x H x W`` at the model's size (cropped and resized as in training)."""
    from PIL import Image, UnidentifiedImageError

    from maskcrypt.data.images import to_chw

    if not data:
        raise ServiceError(400, "empty body: send a PNG or JPEG image")
    if len(data) > config.max_bytes:
        raise ServiceError(413, f"image of {len(data)} bytes exceeds the limit of {config.max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as exc:
        raise ServiceError(400, f"not an image ({type(exc).__name__}); send PNG or JPEG") from None
    with img:
        if img.format not in FORMATS:
            raise ServiceError(400, f"unsupported format {img.format}; send PNG or JPEG")
        if img.width * img.height > config.max_pixels:
            raise ServiceError(413, f"image of {img.width}x{img.height} pixels exceeds the limit of "
                                    f"{config.max_pixels}")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ServiceError(400, f"truncated or corrupt {img.format} ({type(exc).__name__})") from None
        if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I"):
            raise ServiceError(400, f"unsupported image mode {img.mode}")
        return to_chw(img, size, channels, config.crop)


def choose_mask(policy: str, targets: Targets, rng: np.random.Generator) -> int:
    """Index of the mask to apply: ``best`` (first), ``random`` (per request) or a mask id."""
    if policy == "best":
        return 0
    if policy == "random":
        return int(rng.integers(len(targets.ids)))
    try:
        return targets.ids.index(policy)
    except ValueError:
        raise ServiceError(404, f"unknown mask id {policy!r}; served: {targets.ids}") from None


def build_app(config: ServiceConfig | dict[str, Any], max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01,
              num_replicas: int | str = 1) -> Any:
    """The Serve application: a FastAPI ingress deployment over E and the run's target masks."""
    from ray import serve

    cfg = ServiceConfig.from_dict(config) if isinstance(config, dict) else config
    cfg = ServiceConfig(**{**asdict(cfg), "run": str(Path(cfg.run).resolve())})
    load_targets(cfg.run, cfg.allow_candidates)  # refuse to start on a bad run, before any replica
    api = FastAPI(title="maskcrypt", description="Mask, then recognize.")

    @api.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    @serve.deployment(num_replicas=num_replicas, max_ongoing_requests=64, health_check_period_s=10)
    @serve.ingress(api)
    class RecognitionService:
        def __init__(self) -> None:
            self.ready = False  # Serve calls reconfigure(user_config) right after construction

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            """Load E and the targets; Serve calls this again when ``user_config`` changes."""
            import torch

            from maskcrypt.models import Recognizer
            from maskcrypt.train import use_bf16

            new = ServiceConfig.from_dict(user_config)
            targets = load_targets(new.run, new.allow_candidates)
            model = Recognizer.from_checkpoint(Path(new.run) / "models" / "encrypted")
            self.bf16 = use_bf16(new.precision, "cpu")
            self.model = model.to(memory_format=torch.channels_last) if self.bf16 else model
            self.config, self.targets = new, targets
            self.version = model.checkpoint_meta.get("model_sha256", "")[:12]
            self.classes = list(model.checkpoint_meta["class_names"])
            self.size = (model.config.image_size, model.config.image_size)
            self.channels = model.config.channels
            self.masks = torch.from_numpy(targets.masks)
            self.rng = np.random.default_rng()
            self.ready = True

        def check_health(self) -> None:
            if not self.ready:
                raise RuntimeError("model not loaded")

        def _auth(self, request: Request) -> None:
            if self.config.api_key and request.headers.get("x-api-key") != self.config.api_key:
                raise ServiceError(401, "missing or wrong API key (header X-API-Key)")

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
            """Class probabilities for a batch of already masked uint8 images."""
            import torch

            x = torch.from_numpy(np.stack(images))
            if self.bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                probs = torch.softmax(self.model(x).float(), 1)
            return list(probs.numpy())

        @api.get("/healthz")
        async def healthz(self) -> dict[str, Any]:
            return {"status": "ok" if self.ready else "loading", "masks": len(self.targets.ids),
                    "mask_source": self.targets.source, "model_version": self.version,
                    "scoring": "closed", "classes": len(self.classes)}

        @api.get("/v1/masks")
        async def masks(self, request: Request) -> dict[str, Any]:
            self._auth(request)
            return {"source": self.targets.source, "masks": self.targets.figures}

        @api.post("/v1/recognize")
        async def recognize(self, request: Request, mask: str = "best", premasked: bool = False,
                            top_k: int = 0) -> dict[str, Any]:
            self._auth(request)
            kind = request.headers.get("content-type", "")
            if kind.startswith("multipart/form-data"):
                try:
                    form = await request.form()
                except Exception as exc:  # malformed multipart: the client's fault, never a 500
                    raise ServiceError(400, f"malformed multipart body ({type(exc).__name__})") from None
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise ServiceError(400, "multipart body without a file field named 'image'")
                data = await upload.read()
            else:
                data = await request.body()
            image = decode_upload(data, self.size, self.channels, self.config)
            k = choose_mask(mask, self.targets, self.rng)
            masked = image if premasked else image * self.targets.masks[k][None]
            probs = await self._predict(masked)
            n = max(1, min(top_k or self.config.top_k, len(self.classes)))
            order = np.argsort(-probs)[:n]
            best = int(order[0])
            return {"label": best, "class_name": self.classes[best], "score": float(probs[best]),
                    "top_k": [{"label": int(i), "class_name": self.classes[int(i)], "score": float(probs[i])}
                              for i in order],
                    "mask_id": None if premasked else self.targets.ids[k], "premasked": premasked,
                    "model_version": self.version}

    return RecognitionService.options(user_config=asdict(cfg)).bind()
