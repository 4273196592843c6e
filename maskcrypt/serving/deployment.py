"""The Ray Serve deployment: mask, then recognize over HTTP (FastAPI ingress, batched E).

:class:`RecognitionService` is one replica: it loads E into a
:class:`~maskcrypt.models.predictor.Predictor` (device and precision resolved there) and
the run's target masks, and answers the endpoints docs/serving.md lists. Requests are gathered
by ``@serve.batch`` into one forward: each carries its image and the mask to apply (or
none for a premasked upload), and the predictor overlays and recognizes the batch. The
request handling itself (decoding, limits, mask choice, ranking) is
:mod:`maskcrypt.serving.requests`, tested without Serve.

FastAPI resolves the endpoints' annotations at run time from this module's globals:
hence no postponed annotations here and its imports at the top.
"""

import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.models.predictor import Predictor
from maskcrypt.runtime.cluster import check_gpus
from maskcrypt.serving.gallery import Gallery, check_identity, entry_from
from maskcrypt.serving.requests import (
    ServiceConfig,
    ServiceError,
    check_top_k,
    choose_mask,
    decode_upload,
    load_targets,
    mask_payload,
    rank,
    read_images,
)
from maskcrypt.serving.scaling import replicas_at_start

api = FastAPI(title="maskcrypt", description="Mask, then recognize.")


@api.exception_handler(ServiceError)
async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"error": str(exc)})


@serve.deployment(name="RecognitionService", max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class RecognitionService:
    """One replica: E, the target masks and (open set) the gallery; reloaded when ``user_config`` changes."""

    def __init__(self) -> None:
        self.ready = False  # Serve calls reconfigure(user_config) right after construction

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load E and the targets; Serve calls this again when ``user_config`` changes."""
        import torch

        new = ServiceConfig.from_dict(user_config)
        targets = load_targets(new.run, new.allow_candidates)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a replica sees a GPU only when given one
        batch = new.max_batch_size or default_batch_size(device == "cuda")
        predictor = Predictor.from_checkpoint(Path(new.run) / "models" / "encrypted", device, new.precision,
                                              chunk=batch)
        self._infer.set_max_batch_size(batch)
        self._infer.set_batch_wait_timeout_s(new.batch_wait_timeout_s)
        meta = predictor.meta()
        self.config, self.targets, self.predictor = new, targets, predictor
        self.api_key = new.api_key or os.environ.get("MASKCRYPT_API_KEY", "")
        self.scoring = targets.scoring if new.scoring == "auto" else new.scoring
        self.open = self.scoring == "open"
        self.gallery = Gallery(Path(new.run) / "gallery")
        self.version = meta.get("model_sha256", "")[:12]
        self.classes = list(meta["class_names"])
        model = predictor.model()
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

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _infer(self, items: list[tuple[np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
        """E on uint8 ``n x C x H x W`` stacks, each under its masks (None: premasked), batched across requests.

        Closed set: class probabilities; open set: unit embeddings (one row per image).
        """
        import torch

        images = np.concatenate([x for x, _ in items])
        ones = np.ones(self.size, np.uint8)
        masks = np.concatenate([m if m is not None else np.broadcast_to(ones, (len(x), *self.size))
                                for x, m in items])
        out = self.predictor.outputs(images, masks, embed=self.open)["model"]
        out = out if self.open else torch.softmax(out, 1)
        return list(np.split(out.cpu().numpy(), np.cumsum([len(x) for x, _ in items])[:-1]))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        answer = {"status": "ok" if self.ready else "loading", "masks": len(self.targets.ids),
                  "mask_source": self.targets.source, "model_version": self.version, "scoring": self.scoring,
                  "device": str(self.predictor.device)}
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

    def _answer(self, out: np.ndarray, k: int, n: int, premasked: bool) -> dict[str, Any]:
        """One image's answer from E's output under served mask ``k``: classes, or the gallery (open set)."""
        answer: dict[str, Any] = {"mask_id": self.targets.ids[k], "premasked": premasked,
                                  "model_version": self.version, "scoring": self.scoring}
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

    async def _recognize(self, request: Request, limit: int, mask: str, premasked: bool,
                         top_k: int | None) -> list[dict[str, Any]]:
        self._auth(request)
        n = check_top_k(top_k, self.config.top_k)
        blobs, _ = await read_images(request, limit)
        images = np.stack([self._decode(b) for b in blobs])
        ks = [choose_mask(mask, self.targets, self.rng, premasked) for _ in blobs]
        masks = None if premasked else self.targets.masks[ks]
        out = await self._infer((images, masks))
        return [self._answer(o, k, n, premasked) for o, k in zip(out, ks)]

    @api.post("/v1/recognize")
    async def recognize(self, request: Request, mask: str = "best", premasked: bool = False,
                        top_k: int | None = None) -> Response:
        # A prepared JSON response: FastAPI's encoder would walk the answer again (measured: docs/benchmarks.md).
        return JSONResponse((await self._recognize(request, 1, mask, premasked, top_k))[0])

    @api.post("/v1/recognize/batch")
    async def recognize_batch(self, request: Request, mask: str = "best", premasked: bool = False,
                              top_k: int | None = None) -> Response:
        """Several images in one multipart request (fields ``image``, up to ``max_batch_images``): one answer each."""
        return JSONResponse({"results": await self._recognize(request, self.config.max_batch_images, mask,
                                                              premasked, top_k)})

    @api.post("/v1/enroll")
    async def enroll(self, request: Request, identity: str = "", mask: str = "",
                     premasked: bool = False) -> dict[str, Any]:
        """Embed one or more images of ``identity`` and add them to the gallery.

        By default under every served mask, so whichever mask a later probe gets, its
        gallery was masked the same way; ``mask=ID|best`` stores one mask's. Premasked
        uploads are stored under the mask the client names (default ``best``).
        """
        self._auth(request)
        if not self.open:
            raise ServiceError(409, "this service scores closed set (E's classes); enrollment needs an "
                                    "open-set service (scoring=open)")
        blobs, fields = await read_images(request, self.config.max_enroll_images)
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
            item = (images, None)
        else:
            ks = list(range(len(self.targets.ids))) if mask == "all" else [choose_mask(mask, self.targets, self.rng)]
            # Every image under every mask: image-major, so the embeddings reshape to images x masks.
            item = (np.repeat(images, len(ks), axis=0), np.tile(self.targets.masks[ks], (len(images), 1, 1)))
        emb = (await self._infer(item)).reshape(len(images), len(ks), -1)
        entry, replaced = self.gallery.add(entry_from(name, self.version, [self.targets.ids[k] for k in ks], emb))
        return {"identity": name, "images": entry.images, "added": len(images), "masks": entry.mask_ids,
                "replaced_stale": replaced, "model_version": self.version}

    @api.delete("/v1/enroll/{identity}")
    async def unenroll(self, request: Request, identity: str) -> dict[str, Any]:
        self._auth(request)
        if not self.gallery.remove(identity):
            raise ServiceError(404, f"unknown identity {identity!r}: not enrolled")
        return {"identity": identity, "deleted": True}

    @api.get("/v1/gallery")
    async def gallery_list(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        served = set(self.targets.ids)
        return {"model_version": self.version, "identities": [
            {"identity": e.identity, "images": e.images, "masks": e.mask_ids,
             "stale": e.model_version != self.version, "missing_masks": sorted(served - set(e.mask_ids))}
            for _, e in sorted(self.gallery.entries().items())]}


def default_batch_size(gpu: bool) -> int:
    """Images per forward when the config leaves it to the device: a GPU wants large batches, a CPU small ones."""
    return 128 if gpu else 16


def build_app(config: ServiceConfig | dict[str, Any], max_batch_size: int | None = None,
              batch_wait_timeout_s: float | None = None, num_replicas: int | str = 1, num_cpus: float = 1.0,
              autoscaling_config: dict[str, Any] | None = None, num_gpus: float = 0.0) -> Any:
    """The Serve application over a run: checked before any replica starts, then bound with its options.

    ``num_gpus`` per replica (``maskcrypt serve --gpus``, or ``num_gpus`` in the Serve
    config's args): a cluster without GPUs is refused at once, instead of replicas that
    wait forever for one. Precision and batch size follow the replica's device. The check
    covers the replicas that must start at once: the fixed count, or the autoscaler's
    ``min_replicas`` (at least one: the first request starts one). Replicas the autoscaler
    adds above that wait for a GPU to free or a node to join, as Serve intends.
    """
    check_gpus("--gpus (per replica)", num_gpus, replicas_at_start(num_replicas, autoscaling_config))
    cfg = ServiceConfig.from_dict(config) if isinstance(config, dict) else config
    changes: dict[str, Any] = {"run": str(Path(cfg.run).resolve())}
    if max_batch_size:
        changes["max_batch_size"] = max_batch_size
    elif not cfg.max_batch_size:
        changes["max_batch_size"] = default_batch_size(num_gpus > 0)
    if batch_wait_timeout_s is not None:
        changes["batch_wait_timeout_s"] = batch_wait_timeout_s
    cfg = replace(cfg, **changes)
    load_targets(cfg.run, cfg.allow_candidates)  # refuse to start on a bad run, before any replica
    scaling: dict[str, Any] = ({"autoscaling_config": autoscaling_config} if autoscaling_config
                               else {"num_replicas": num_replicas})
    return RecognitionService.options(
        user_config=asdict(cfg), max_ongoing_requests=max(64, 4 * cfg.max_batch_size),
        ray_actor_options={"num_cpus": num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})},
        **scaling).bind()
