"""Recognition behind the target masks on Ray Serve: mask, then recognize (METHOD.md, "Recognition").

The pure parts come first and are tested without Serve: :func:`load_targets` (the run's
target masks, every sha256 verified), :func:`decode_upload` (bytes from a client to a
uint8 image at the model's size, with a clear 400/413 for anything else),
:func:`choose_mask` and :func:`rank`. :func:`build_app` wraps them in a FastAPI ingress
deployment whose ``@serve.batch`` method runs E on batches of masked images.

Closed-set runs answer with E's classes. Open-set runs (the run's scoring, or
``scoring="open"``) answer from the gallery enrolled through ``/v1/enroll``
(:mod:`maskcrypt.gallery`): embeddings only, stored in the run directory.

FastAPI resolves the endpoints' annotations at run time from this module's globals:
hence no postponed annotations here and its imports at the top.
"""

import base64
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
    api_key: str = ""  # "" = $MASKCRYPT_API_KEY of the replica, if set; else open. X-API-Key on all but /healthz
    max_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    crop: str = "center"
    precision: str = "auto"
    top_k: int = 5
    scoring: str = "auto"  # auto = the run's (targets.json); "open" serves E's embeddings against a gallery
    share_masks: bool = False  # GET /v1/masks?pixels=true hands the target masks to clients
    max_enroll_images: int = 16
    min_score: float = -1.0  # open set: a best cosine below it answers identity null (unknown face)

    def __post_init__(self) -> None:
        if self.scoring not in ("auto", "closed", "open"):
            raise MaskcryptError(f"serving config: scoring={self.scoring!r}, expected auto, closed or open")
        if not -1.0 <= self.min_score <= 1.0:
            raise MaskcryptError(f"serving config: min_score={self.min_score} is a cosine, expected [-1, 1]")
        for name in ("max_bytes", "max_pixels", "top_k", "max_enroll_images"):
            if getattr(self, name) < 1:
                raise MaskcryptError(f"serving config: {name}={getattr(self, name)}, expected >= 1")

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
    scoring: str = "closed"  # how the run was scored (targets.json)
    sha256: list[str] = field(default_factory=list)


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


async def _images(request: Request, limit: int) -> tuple[list[bytes], dict[str, str]]:
    """Image bytes of a raw body (one) or of every multipart field named ``image``, plus text fields."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        return [await request.body()], {}
    try:
        form = await request.form(max_files=limit + 1)
    except Exception as exc:  # malformed multipart: the client's fault, never a 500
        raise ServiceError(400, f"malformed multipart body ({type(exc).__name__}: {exc})") from None
    uploads = [u for u in form.getlist("image") if not isinstance(u, str)]
    if not uploads:
        raise ServiceError(400, "multipart body without a file field named 'image'")
    if len(uploads) > limit:
        raise ServiceError(413, f"{len(uploads)} images in one request; the limit is {limit}")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return [await u.read() for u in uploads], fields


def build_app(config: ServiceConfig | dict[str, Any], max_batch_size: int = 16, batch_wait_timeout_s: float = 0.002,
              num_replicas: int | str = 1, num_cpus: float = 1.0,
              autoscaling_config: dict[str, Any] | None = None) -> Any:
    """The Serve application: a FastAPI ingress deployment over E and the run's target masks."""
    from ray import serve

    cfg = ServiceConfig.from_dict(config) if isinstance(config, dict) else config
    cfg = ServiceConfig(**{**asdict(cfg), "run": str(Path(cfg.run).resolve())})
    load_targets(cfg.run, cfg.allow_candidates)  # refuse to start on a bad run, before any replica
    api = FastAPI(title="maskcrypt", description="Mask, then recognize.")

    @api.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    scaling: dict[str, Any] = ({"autoscaling_config": autoscaling_config} if autoscaling_config
                               else {"num_replicas": num_replicas})

    @serve.deployment(max_ongoing_requests=64, health_check_period_s=10, ray_actor_options={"num_cpus": num_cpus},
                      **scaling)
    @serve.ingress(api)
    class RecognitionService:
        def __init__(self) -> None:
            self.ready = False  # Serve calls reconfigure(user_config) right after construction

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            """Load E and the targets; Serve calls this again when ``user_config`` changes."""
            import torch

            from maskcrypt.gallery import Gallery
            from maskcrypt.models import Recognizer
            from maskcrypt.train import use_bf16

            new = ServiceConfig.from_dict(user_config)
            targets = load_targets(new.run, new.allow_candidates)
            model = Recognizer.from_checkpoint(Path(new.run) / "models" / "encrypted")
            self.bf16 = use_bf16(new.precision, "cpu")
            self.model = model.to(memory_format=torch.channels_last) if self.bf16 else model
            self.config, self.targets = new, targets
            self.api_key = new.api_key or os.environ.get("MASKCRYPT_API_KEY", "")
            self.scoring = targets.scoring if new.scoring == "auto" else new.scoring
            self.open = self.scoring == "open"
            self.gallery = Gallery(Path(new.run) / "gallery")
            self.version = model.checkpoint_meta.get("model_sha256", "")[:12]
            self.classes = list(model.checkpoint_meta["class_names"])
            self.size = (model.config.image_size, model.config.image_size)
            self.channels = model.config.channels
            self.rng = np.random.default_rng()
            self.ready = True

        def check_health(self) -> None:
            if not self.ready:
                raise RuntimeError("model not loaded")

        def _auth(self, request: Request) -> None:
            if self.api_key and request.headers.get("x-api-key") != self.api_key:
                raise ServiceError(401, "missing or wrong API key (header X-API-Key)")

        def _decode(self, data: bytes) -> np.ndarray:
            return decode_upload(data, self.size, self.channels, self.config)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _infer(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
            """E on masked uint8 ``n x C x H x W`` stacks, batched across requests.

            Closed set: class probabilities; open set: unit embeddings (one row per image).
            """
            import torch
            import torch.nn.functional as F

            x = torch.from_numpy(np.concatenate(stacks))
            if self.bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                out = F.normalize(self.model.embed(x).float(), dim=1) if self.open else \
                    torch.softmax(self.model(x).float(), 1)
            return list(np.split(out.numpy(), np.cumsum([len(s) for s in stacks])[:-1]))

        @api.get("/healthz")
        async def healthz(self) -> dict[str, Any]:
            answer = {"status": "ok" if self.ready else "loading", "masks": len(self.targets.ids),
                      "mask_source": self.targets.source, "model_version": self.version, "scoring": self.scoring}
            if self.open:
                answer["identities"] = len(self.gallery.matrix(self.targets.ids[0], self.version)[0])
            else:
                answer["classes"] = len(self.classes)
            return answer

        @api.get("/v1/masks")
        async def masks(self, request: Request, pixels: bool = False) -> dict[str, Any]:
            self._auth(request)
            answer: dict[str, Any] = {"source": self.targets.source, "masks": self.targets.figures}
            if pixels:
                if not self.config.share_masks:
                    raise ServiceError(403, "mask pixels are not shared by this service (operator setting "
                                            "share_masks); ask the operator for targets.parquet")
                answer["pixels"] = mask_payload(self.targets)
            return answer

        @api.post("/v1/recognize")
        async def recognize(self, request: Request, mask: str = "best", premasked: bool = False,
                            top_k: int = 0) -> dict[str, Any]:
            self._auth(request)
            blobs, _ = await _images(request, 1)
            image = self._decode(blobs[0])
            k = choose_mask(mask, self.targets, self.rng, premasked)
            masked = image if premasked else image * self.targets.masks[k][None]
            n = top_k or self.config.top_k
            answer: dict[str, Any] = {"mask_id": self.targets.ids[k], "premasked": premasked,
                                      "model_version": self.version, "scoring": self.scoring}
            out = (await self._infer(masked[None]))[0]
            if not self.open:
                ranked = rank(out, self.classes, n)
                return {**answer, "label": ranked[0][0], "class_name": ranked[0][1], "score": ranked[0][2],
                        "top_k": [{"label": i, "class_name": c, "score": p} for i, c, p in ranked]}
            names, centroids, fallback = self.gallery.matrix(self.targets.ids[k], self.version)
            if not names:
                raise ServiceError(409, "the gallery is empty: enroll identities first (POST /v1/enroll)")
            ranked = rank(centroids @ out, names, n)
            known = ranked[0][2] >= self.config.min_score
            return {**answer, "identity": ranked[0][1] if known else None, "score": ranked[0][2],
                    "top_k": [{"identity": c, "score": p} for _, c, p in ranked],
                    "gallery_size": len(names), "fallback_centroid": ranked[0][1] in fallback}

        @api.post("/v1/enroll")
        async def enroll(self, request: Request, identity: str = "", mask: str = "",
                         premasked: bool = False) -> dict[str, Any]:
            """Embed one or more images of ``identity`` and add them to the gallery.

            By default under every served mask, so whichever mask a later probe gets, its
            gallery was masked the same way; ``mask=ID|best`` stores one mask's. Premasked
            uploads are stored under the mask the client names (default ``best``).
            """
            from maskcrypt.gallery import check_identity, entry_from

            self._auth(request)
            if not self.open:
                raise ServiceError(409, "this service scores closed set (E's classes); enrollment needs an "
                                        "open-set service (scoring=open)")
            blobs, fields = await _images(request, self.config.max_enroll_images)
            try:
                name = check_identity(identity or fields.get("identity", ""))
            except MaskcryptError as exc:
                raise ServiceError(400, str(exc)) from None
            images = np.stack([self._decode(b) for b in blobs])
            mask = mask or ("best" if premasked else "all")
            if premasked:
                if mask in ("all", "random"):
                    raise ServiceError(400, "premasked=true: name the mask the client applied (mask=ID or best)")
                ks = [choose_mask(mask, self.targets, self.rng, True)]
                stack = images
            else:
                ks = list(range(len(self.targets.ids))) if mask == "all" else \
                    [choose_mask(mask, self.targets, self.rng)]
                stack = (images[:, None] * self.targets.masks[ks][None, :, None]).reshape(-1, *images.shape[1:])
            emb = (await self._infer(stack)).reshape(len(images), len(ks), -1)
            entry, replaced = self.gallery.add(entry_from(name, self.version, [self.targets.ids[k] for k in ks],
                                                          emb))
            return {"identity": name, "images": entry.images, "added": len(images), "masks": entry.mask_ids,
                    "replaced_stale": replaced, "model_version": self.version}

        @api.delete("/v1/enroll/{identity}")
        async def unenroll(self, request: Request, identity: str) -> dict[str, Any]:
            self._auth(request)
            if not self.gallery.remove(identity):
                raise ServiceError(404, f"unknown identity {identity!r}: not enrolled")
            return {"identity": identity, "deleted": True}

        @api.get("/v1/gallery")
        async def gallery(self, request: Request) -> dict[str, Any]:
            self._auth(request)
            served = set(self.targets.ids)
            return {"model_version": self.version, "identities": [
                {"identity": e.identity, "images": e.images, "masks": e.mask_ids,
                 "stale": e.model_version != self.version,
                 "missing_masks": sorted(served - set(e.mask_ids))}
                for _, e in sorted(self.gallery.entries().items())]}

    return RecognitionService.options(user_config=asdict(cfg)).bind()
