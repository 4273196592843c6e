"""Mask, then recognize: THE step every stage runs (docs/method.md, "Recognition with a target mask").

A :class:`Predictor` holds one or more recognizers (E, O, an attacker's model) and
optionally the inpainter R on one device at one precision, and owns everything between
uint8 pixels and a decision:

* device placement and memory layout (channels_last where it pays, see
  :mod:`maskcrypt.core.precision`), and the autocast region;
* the overlay (:func:`maskcrypt.masks.overlay`: ``image * mask``, 0 = occluded), done
  once per chunk and shared by every model, and a fill of the holes when asked (an
  attacker's view): by R, or by OpenCV's Telea or Navier-Stokes method
  (:mod:`maskcrypt.models.classical`, no training);
* batching in chunks of ``chunk`` images;
* the outputs: logits (closed set) or unit embeddings (open set);
* the judgement: closed set, top-1 of the classifier against the label (score: the
  label's probability); open set, top-1 cosine against unit centroids (score: the
  cosine to the true centroid).

The Ray Data scorer, the Serve deployment, training-time evaluation, the training
report and every throughput baseline use this class, so "mask, then recognize" has one
definition and a speed figure always measures the code that serves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import autocast, channels_last, default_chunk, use_bf16
from maskcrypt.masks.core import overlay
from maskcrypt.models.classical import classical_inpaint
from maskcrypt.models.fidelity import fill_fidelity
from maskcrypt.models.inpainter import Inpainter
from maskcrypt.models.losses import hole_psnr, mean_fill
from maskcrypt.models.recognizer import Recognizer

#: Masks for a forward: none, one H x W mask for every image, one per image (N x H x W),
#: or a function ``(start, stop) -> mask(s)`` for images ``start:stop`` (built per chunk).
Masks = None | np.ndarray | torch.Tensor | Callable[[int, int], Any]
#: Who fills the holes before recognition (``outputs(fill=...)``): R (the run's RFR-Net), or classical inpainting.
FILLERS = ("R", "telea", "ns")


class Predictor:
    """Recognizers (and optionally R) on one device at one precision: mask, fill, recognize, judge."""

    def __init__(self, models: Recognizer | Mapping[str, Recognizer], device: str | torch.device = "cpu",
                 precision: str = "auto", chunk: int = 0, inpainter: Any = None):
        if chunk < 0:
            raise MaskcryptError(f"predictor: chunk must be >= 1 image (0 = the device's default), got {chunk}")
        self.device = torch.device(device)
        self.bf16 = use_bf16(precision, self.device.type)
        self.channels_last = channels_last(self.device.type, self.bf16)
        named = {"model": models} if isinstance(models, torch.nn.Module) else dict(models)
        if not named:
            raise MaskcryptError("predictor: needs at least one recognizer")
        self.models = {name: self._place(m) for name, m in named.items()}
        self.inpainter = self._place(inpainter) if inpainter is not None else None
        size = max(int(getattr(getattr(m, "config", None), "image_size", 32)) for m in named.values())
        self.chunk = int(chunk) or default_chunk(self.device.type, size)

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.eval()

    @classmethod
    def from_checkpoints(cls, paths: Mapping[str, str | os.PathLike[str]], device: str | torch.device = "cpu",
                         precision: str = "auto", chunk: int = 0,
                         inpainter: str | os.PathLike[str] | None = None) -> Predictor:
        """Recognizers from checkpoint folders (newest complete checkpoint each), R from its folder if given."""
        models = {name: Recognizer.from_checkpoint(p) for name, p in paths.items()}
        r = None
        if inpainter is not None:

            r = Inpainter.from_checkpoint(inpainter)
        return cls(models, device, precision, chunk, r)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        precision: str = "auto", chunk: int = 0) -> Predictor:
        """One recognizer (named ``model``): what serving and a benchmark need."""
        return cls.from_checkpoints({"model": path}, device, precision, chunk)

    # -- what the models are ---------------------------------------------------------------------------
    def model(self, name: str | None = None) -> Recognizer:
        if name is None:
            if len(self.models) != 1:
                raise MaskcryptError(f"predictor: holds {sorted(self.models)}, name the model")
            return next(iter(self.models.values()))
        try:
            return self.models[name]
        except KeyError:
            raise MaskcryptError(f"predictor: no model {name!r}; holds {sorted(self.models)}") from None

    def meta(self, name: str | None = None) -> dict[str, Any]:
        """The checkpoint's meta.json (class names, image size, TrainConfig hash...), {} for a bare model."""
        return dict(getattr(self.model(name), "checkpoint_meta", {}))

    # -- tensors ---------------------------------------------------------------------------------------
    def to_device(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W on the device, in the layout the models run in (kept resident by callers)."""
        x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if x.dim() != 4:
            raise MaskcryptError(f"predictor: expected N x C x H x W images, got shape {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _masks(self, masks: Masks, start: int, stop: int) -> torch.Tensor | None:
        if masks is None:
            return None
        m = masks(start, stop) if callable(masks) else masks
        if isinstance(m, np.ndarray):
            m = torch.from_numpy(m)
        if m.dim() == 3 and m.shape[0] != 1 and not callable(masks):
            m = m[start:stop]
        return m.to(self.device, non_blocking=True)

    # -- mask, fill, recognize ---------------------------------------------------------------------------
    @torch.inference_mode()
    def outputs(self, images: np.ndarray | torch.Tensor, masks: Masks = None, *, embed: bool = False,
                fill: bool | str = False, names: Sequence[str] | None = None,
                flip: bool = False, fidelity: bool = False) -> dict[str, torch.Tensor]:
        """Per model: float32 logits (``embed=False``) or unit embeddings of ``images`` under ``masks``.

        ``masks`` (see :data:`Masks`) are overlaid once per chunk and shared by every
        model; ``fill`` fills the holes first (an attacker's view): ``True`` or ``"R"``
        by the inpainter R, ``"telea"`` or ``"ns"`` by OpenCV (see :data:`FILLERS`). ``flip``
        (embeddings only): the face-verification convention, ``embed(x) + embed(x
        mirrored left-right)`` normalized after the sum; the mirror is of the image the
        model gets (masked, and filled when ``fill``), which is all a server holding
        encrypted images can compute. ``fidelity`` (with ``fill``): the fill's PSNR and SSIM
        against the unmasked image too, per image (:func:`~maskcrypt.models.fidelity.fill_fidelity`),
        as the keys ``fidelity:psnr_hole``, ``fidelity:ssim_hole``, ``fidelity:psnr_image`` and
        ``fidelity:ssim_image``: computed from the very fill the models judge, in the same pass.
        Returns one N x K tensor per name (N per fidelity key), on the device.
        """
        if flip and not embed:
            raise MaskcryptError("predictor: flip=True sums embeddings; it needs embed=True")
        names = list(self.models) if names is None else list(names)
        filler = "R" if fill is True else (fill or None)
        if filler is not None and filler not in FILLERS:
            raise MaskcryptError(f"predictor: fill must be one of {', '.join(FILLERS)} (or True for R), got {fill!r}")
        if filler == "R" and self.inpainter is None:
            raise MaskcryptError("predictor: fill=True needs an inpainter")
        if filler is not None and masks is None:
            raise MaskcryptError("predictor: fill=True needs masks (the holes to fill)")
        if fidelity and filler is None:
            raise MaskcryptError("predictor: fidelity=True measures a fill; it needs fill")
        n = int(images.shape[0])
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            x = original = self.to_device(images[s:e])
            m = self._masks(masks, s, e)
            if m is not None:
                x = overlay(x, m)
            if filler in ("telea", "ns"):
                x = classical_inpaint(x, m, filler)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device.type, self.bf16):
                if filler == "R":
                    holes = m[None].expand(e - s, -1, -1) if m.dim() == 2 else m
                    x = self.inpainter.inpaint(x, holes)
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
            if fidelity:
                for key, v in fill_fidelity(original, x, m).items():
                    outs.setdefault(f"fidelity:{key}", []).append(v)
            with autocast(self.device.type, self.bf16):
                mirrored = x.flip(3) if flip else None
                for k in names:
                    model = self.model(k)
                    if embed:
                        e = model.embed(x).float()
                        if mirrored is not None:
                            e = e + model.embed(mirrored).float()
                        outs[k].append(F.normalize(e, dim=1))
                    else:
                        outs[k].append(model(x).float())
        return {k: torch.cat(v) if v else torch.empty(0, device=self.device) for k, v in outs.items()}

    @torch.inference_mode()
    def fill_psnr(self, images: np.ndarray | torch.Tensor, masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: PSNR (dB) inside the hole of R's fill, and of filling the hole with the mean known colour.

        R gets the masked image (the holes zero) and the mask, as in its training; the
        figure is over hole pixels only (the known pixels would be copied by any attacker).
        The training report's and R's per-epoch fidelity figure, in chunks on the device.
        """
        if self.inpainter is None:
            raise MaskcryptError("predictor: fill_psnr needs an inpainter")
        n = int(images.shape[0])
        r_out, base = [], []
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            x = self.to_device(images[s:e]).float() / 255.0
            m = self._masks(masks, s, e)
            m = (m[None].expand(e - s, -1, -1) if m.dim() == 2 else m)[:, None].to(x.dtype)
            with autocast(self.device.type, self.bf16):
                filled = self.inpainter(x * m, m).float()
            r_out.append(hole_psnr(filled, x, m))
            base.append(hole_psnr(mean_fill(x, m), x, m))
        return torch.cat(r_out), torch.cat(base)

    def logits(self, images: np.ndarray | torch.Tensor, masks: Masks = None, name: str | None = None) -> torch.Tensor:
        """One model's float32 logits of the masked images."""
        key = self._one(name)
        return self.outputs(images, masks, names=[key])[key]

    def embeddings(self, images: np.ndarray | torch.Tensor, masks: Masks = None,
                   name: str | None = None) -> torch.Tensor:
        """One model's unit embeddings of the masked images."""
        key = self._one(name)
        return self.outputs(images, masks, embed=True, names=[key])[key]

    def probabilities(self, images: np.ndarray | torch.Tensor, masks: Masks = None,
                      name: str | None = None) -> torch.Tensor:
        """One model's class probabilities of the masked images (closed set)."""
        return torch.softmax(self.logits(images, masks, name), dim=1)

    def _one(self, name: str | None) -> str:
        if name is not None:
            return name
        if len(self.models) != 1:
            raise MaskcryptError(f"predictor: holds {sorted(self.models)}, name the model")
        return next(iter(self.models))

    # -- judgement -------------------------------------------------------------------------------------------
    @staticmethod
    def centroids(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
        """Unit mean embedding per identity (a gallery's centroids; identities without images stay 0)."""
        cent = torch.zeros(classes, embeddings.shape[1], device=embeddings.device, dtype=embeddings.dtype)
        cent.index_add_(0, labels.to(embeddings.device), embeddings)
        return F.normalize(cent, dim=1)

    @staticmethod
    def judge(outputs: torch.Tensor, labels: torch.Tensor,
              centroids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: (recognized, score).

        Closed set (``centroids`` None): ``outputs`` are logits; recognized when the top-1
        class is the label; the score is the label's probability. Open set: ``outputs``
        are unit embeddings; recognized when the nearest centroid (cosine) is the label's;
        the score is the cosine to the label's centroid.
        """
        y = labels.to(outputs.device)[:, None]
        if centroids is None:
            return outputs.argmax(1) == y[:, 0], torch.softmax(outputs, 1).gather(1, y)[:, 0]
        sims = outputs @ centroids.T
        return sims.argmax(1) == y[:, 0], sims.gather(1, y)[:, 0]

    @torch.inference_mode()
    def accuracy(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, masks: Masks = None,
                 name: str | None = None) -> float:
        """Closed-set top-1 accuracy of one model on the masked images (training reports)."""
        y = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
        correct, _ = self.judge(self.logits(images, masks, name), y)
        return float(correct.float().mean()) if len(y) else float("nan")
