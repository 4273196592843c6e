"""The Ray Train worker loop: one loop for every model, small per-model step functions.

Every rank runs :func:`train_worker` (DDP: gloo on CPU, NCCL on GPU). The loop is the
same for O, E and R: resume from the latest checkpoint, then per epoch a seeded
permutation of the samples (the same on every rank, each rank taking its slice of every
global batch), a step per batch, a report per epoch with a checkpoint from rank 0. What
differs per model lives in a *steps* object:

* :class:`RecognizerSteps` (O and E): cross-entropy (or the ArcFace margin) on clean
  images (O) or on images masked with pool masks (E; masking happens here, on the
  worker's device); held-out accuracy through the :class:`~maskcrypt.models.predictor.Predictor`;
* :class:`InpainterSteps` (R): RFR-Net's losses on masked images with the clean image
  as target, a BatchNorm-frozen fine-tune phase; held-out PSNR in the hole against a
  mean-colour fill.
"""

from __future__ import annotations

import math
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def lr_lambda(tc: dict[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up, then cosine, step (x0.1 at 1/3, 2/3) or constant."""
    total = max(1, tc["epochs"] * steps_per_epoch)
    warm = int(tc.get("warmup_epochs", 0) * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if tc.get("schedule") == "constant":
            return 1.0
        if tc.get("schedule") == "step":
            return 0.1 ** int(3 * step / total)
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def augment_flip(x: np.ndarray, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flips of a freshly gathered batch (faces are left-right symmetric)."""
    if flip:
        sel = rng.random(x.shape[0]) < 0.5
        x[sel] = x[sel][..., ::-1]
    return x


class Steps(ABC):
    """What one model's training needs besides the loop: the model, its optimizer and schedule, a step, a check."""

    def __init__(self, cfg: dict[str, Any], device: Any, bf16: bool, data: dict[str, Any]):
        self.cfg, self.device, self.bf16, self.data = cfg, device, bf16, data
        self.tc = cfg["train_config"]
        self.role = cfg["role"]
        self.k = int(cfg.get("k", 1))
        self.samples = len(data["train_labels"]) * self.k
        self.model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.epochs = int(self.tc["epochs"])

    def to_device(self, a: np.ndarray) -> Any:
        """A numpy batch on the device, channels_last where the model runs so."""
        import torch

        from maskcrypt.precision import channels_last

        t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and channels_last(
            self.device.type, self.bf16) else t

    def mask_picks(self, rng: np.random.Generator) -> np.ndarray | None:
        """Per sample of this epoch, the pool mask it gets (drawn afresh each epoch), or None."""
        return None

    def start_epoch(self, epoch: int) -> None:
        """Per-epoch switches (R's fine-tune phase); the base only notes the epoch."""
        self.epoch = epoch

    def train_mode(self, net: Any) -> None:
        net.train()

    @abstractmethod
    def schedule(self, steps_per_epoch: int) -> None:
        """Create the learning-rate scheduler, once the steps per epoch are known."""

    @abstractmethod
    def loss(self, net: Any, idx: np.ndarray, picks: np.ndarray | None, aug: np.random.Generator) -> Any:
        """The loss of one rank's share of a global batch (sample indices ``idx``)."""

    @abstractmethod
    def evaluate(self, net: Any) -> dict[str, float]:
        """Held-out figures after an epoch (rank 0)."""


class RecognizerSteps(Steps):
    """O on clean images; E on its second training sample (K masked copies of every image)."""

    def __init__(self, cfg: dict[str, Any], device: Any, bf16: bool, data: dict[str, Any]):
        import torch

        from maskcrypt.models.recognizer import Recognizer, RecognizerConfig

        super().__init__(cfg, device, bf16, data)
        self.encrypted = self.role == "encrypted"
        self.fixed = self.encrypted and cfg.get("mask_mode") == "fixed"
        self.model = Recognizer(RecognizerConfig.from_dict(cfg["model_config"]))
        tc = self.tc
        if tc["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=tc["lr"], momentum=tc["momentum"],
                                             weight_decay=tc["weight_decay"], nesterov=True)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
        self.flip = tc.get("augment") == "flip"

    def schedule(self, steps_per_epoch: int) -> None:
        import torch

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.tc, steps_per_epoch))

    def mask_picks(self, rng: np.random.Generator) -> np.ndarray | None:
        if self.encrypted and not self.fixed:
            return rng.integers(0, len(self.data["masks"]), self.samples)
        return None

    def loss(self, net: Any, idx: np.ndarray, picks: np.ndarray | None, aug: np.random.Generator) -> Any:
        import torch
        import torch.nn.functional as F

        from maskcrypt.masks.core import overlay
        from maskcrypt.precision import autocast

        img = idx // self.k
        xb = self.to_device(augment_flip(self.data["train_images"][img], self.flip, aug))
        yb = torch.from_numpy(self.data["train_labels"][img]).to(self.device)
        if self.encrypted:
            masks = self.data["masks"]
            xb = overlay(xb, self.to_device(masks[idx % self.k] if self.fixed else masks[picks[idx]]))
        with autocast(self.device.type, self.bf16):
            logits = net(xb, yb)
        return F.cross_entropy(logits.float(), yb, label_smoothing=self.tc["label_smoothing"])

    def evaluate(self, net: Any) -> dict[str, float]:
        """Held-out accuracy: O on clean images, E under held-out masks (one per image, seeded)."""
        from maskcrypt.models.predictor import Predictor

        d = self.data
        masks = d["eval_masks"] if self.encrypted else None
        predictor = Predictor(net, self.device, "bf16" if self.bf16 else "fp32")
        return {"test_accuracy": predictor.accuracy(d["val_images"], d["val_labels"], masks)}


class InpainterSteps(Steps):
    """R on masked training images, the clean image the target; a BatchNorm-frozen fine-tune at the end."""

    def __init__(self, cfg: dict[str, Any], device: Any, bf16: bool, data: dict[str, Any]):
        import torch

        from maskcrypt.models.inpainter import Inpainter, InpainterConfig
        from maskcrypt.models.losses import InpaintLossWeights, load_vgg16_features

        super().__init__(cfg, device, bf16, data)
        self.model = Inpainter(InpainterConfig.from_dict(cfg["model_config"]))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.tc["lr"])
        self.epochs = int(self.tc["epochs"] + self.tc["finetune_epochs"])
        self.vgg = load_vgg16_features(self.tc["vgg_weights"]).to(device) if self.tc.get("vgg_weights") else None
        self.weights = InpaintLossWeights()
        self.finetune = False

    def schedule(self, steps_per_epoch: int) -> None:
        import torch

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)

    def mask_picks(self, rng: np.random.Generator) -> np.ndarray | None:
        return rng.integers(0, len(self.data["masks"]), self.samples)

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self.finetune = epoch > self.tc["epochs"]
        if epoch == self.tc["epochs"] + 1:
            # RFR-Net's fine-tune: lower learning rate, BatchNorm statistics frozen.
            for g in self.optimizer.param_groups:
                g["lr"] = self.tc["finetune_lr"]

    def train_mode(self, net: Any) -> None:
        import torch

        net.train()
        if self.finetune:
            for mod in net.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.eval()

    def loss(self, net: Any, idx: np.ndarray, picks: np.ndarray | None, aug: np.random.Generator) -> Any:
        from maskcrypt.models.losses import inpaint_loss
        from maskcrypt.precision import autocast

        target = self.to_device(self.data["train_images"][idx // self.k]).float() / 255.0
        m = self.to_device(self.data["masks"][picks[idx]])[:, None].float()
        with autocast(self.device.type, self.bf16):
            pred = net(target * m, m)
            loss, _ = inpaint_loss(pred, target, m, self.weights, self.vgg)
        return loss

    def evaluate(self, net: Any) -> dict[str, float]:
        """PSNR inside the hole on held-out images, and that of filling the hole with the mean known colour."""
        import torch

        from maskcrypt.models.losses import hole_psnr, mean_fill
        from maskcrypt.precision import autocast

        d = self.data
        psnr, base = [], []
        with torch.inference_mode(), autocast(self.device.type, self.bf16):
            for s in range(0, len(d["val_labels"]), 64):
                img = self.to_device(d["val_images"][s:s + 64]).float() / 255.0
                m = self.to_device(d["eval_masks"][s:s + 64])[:, None].float()
                psnr.append(hole_psnr(net(img * m, m).float(), img, m))
                base.append(hole_psnr(mean_fill(img, m), img, m))
        return {"hole_psnr": float(torch.cat(psnr).mean()), "mean_fill_psnr": float(torch.cat(base).mean())}


def _data(cfg: dict[str, Any]) -> dict[str, Any]:
    """The shared arrays of this training (object references resolved), and the held-out masks per image."""
    import ray

    data = {k: ray.get(cfg[k]) if cfg.get(k) is not None else None
            for k in ("train_images", "train_labels", "test_images", "test_labels", "masks", "eval_masks")}
    n = min(len(data["test_labels"]), int(cfg.get("eval_limit", 2000)))
    data["val_images"], data["val_labels"] = data.pop("test_images")[:n], data.pop("test_labels")[:n]
    held_out = data["eval_masks"] if data["eval_masks"] is not None else data["masks"]
    if held_out is not None:
        pick = np.random.default_rng([cfg["train_config"]["seed"], 0xE7A1]).integers(0, len(held_out), n)
        data["eval_masks"] = held_out[pick]
    return data


def train_epoch(steps: Steps, net: Any, epoch: int, per_rank: int, n_steps: int, rank: int = 0,
                world: int = 1) -> tuple[float, int, float]:
    """One epoch of ``steps`` on ``net``: this rank's share of ``n_steps`` global batches.

    A seeded permutation of the samples (the same on every rank), the epoch's mask picks,
    a step per batch. Returns the summed loss, the samples seen and the seconds taken.
    Ray Train's worker loop and the attackers' Tune trials (:mod:`maskcrypt.attack`) both
    run it, so every recognizer in the project trains by one definition.
    """
    seed = steps.tc["seed"]
    steps.start_epoch(epoch)
    rng = np.random.default_rng([seed, 0x7A1, epoch])
    perm = rng.permutation(steps.samples)
    picks = steps.mask_picks(rng)
    aug = np.random.default_rng([seed, 0xA06, epoch, rank])
    steps.train_mode(net)
    t0 = time.perf_counter()
    loss_sum, seen = 0.0, 0
    for step in range(n_steps):
        at = step * per_rank * world + rank * per_rank
        idx = perm[at:at + per_rank]
        loss = steps.loss(net, idx, picks, aug)
        steps.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        steps.optimizer.step()
        steps.scheduler.step()
        loss_sum += float(loss.detach()) * len(idx)
        seen += len(idx)
    return loss_sum, seen, time.perf_counter() - t0


def train_worker(cfg: dict[str, Any]) -> None:
    """Ray Train loop for one model; every rank runs it (DDP)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from maskcrypt.models.checkpoint import STATE_FILE, load_external_weights, load_state, save_checkpoint, unwrap
    from maskcrypt.precision import channels_last, use_bf16

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tc = cfg["train_config"]
    device = ray.train.torch.get_device()
    bf16 = use_bf16(tc["precision"], device.type)
    torch.manual_seed(tc["seed"] + 1000 * rank)
    data = _data(cfg)
    steps = (InpainterSteps if cfg["role"] == "inpainter" else RecognizerSteps)(cfg, device, bf16, data)
    if cfg.get("init_weights"):
        load_external_weights(steps.model, cfg["init_weights"], cfg["init_flag"])
    model = steps.model.to(device)
    if channels_last(device.type, bf16):
        model = model.to(memory_format=torch.channels_last)
    per_rank = max(1, tc["batch_size"] // world)
    n_steps = steps.samples // (per_rank * world)
    steps.schedule(n_steps)

    start_epoch, history = 1, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            unwrap(model).load_state_dict(load_state(Path(d)))
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        steps.optimizer.load_state_dict(state["optimizer"])
        steps.scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
    # With one RFR iteration the attention's blend ratio has no previous scores to weigh: unused.
    unused = cfg["role"] == "inpainter" and cfg["model_config"].get("iterations", 2) < 2
    net = ray.train.torch.prepare_model(model, move_to_device=False,
                                        parallel_strategy_kwargs={"find_unused_parameters": unused})

    for epoch in range(start_epoch, steps.epochs + 1):
        loss_sum, seen, train_s = train_epoch(steps, net, epoch, per_rank, n_steps, rank, world)
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": steps.epochs, "loss": loss_sum / max(seen, 1),
                                   "images_per_s": seen * world / max(train_s, 1e-9),
                                   "lr": steps.optimizer.param_groups[0]["lr"], "rank": rank}
        if rank != 0:
            ray.train.report(metrics)
            continue
        metrics.update(steps.evaluate(unwrap(net)))
        history.append({**metrics, "resumed": epoch == start_epoch and ckpt is not None})
        with tempfile.TemporaryDirectory() as tmp:
            meta = {**cfg["meta"], "epoch": epoch, "epochs": steps.epochs, "metrics": metrics, "history": history,
                    "precision_used": "bf16" if bf16 else "fp32", "world_size": world}
            save_checkpoint(tmp, net, meta, {"optimizer": steps.optimizer.state_dict(),
                                             "scheduler": steps.scheduler.state_dict(), "epoch": epoch,
                                             "history": history})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
