"""The Ray Train worker loop: one loop for every model, small per-model step functions.

Every rank runs :func:`train_worker` (DDP: gloo on CPU, NCCL on GPU). The training
images arrive as a Ray Dataset shard (``ray.train.get_dataset_shard("train")``),
decoded by Ray Data tasks; the driver never holds them. The loop is the same for O, E
and R: resume from the latest checkpoint, then per epoch ``passes`` iterations over the
data (E's second sample is K masked copies of every image: K passes, each image with a
fresh pool mask), a step per batch, a report per epoch with a checkpoint from rank 0.

Two ways to feed the ranks (``sharding``): ``stream`` splits the dataset between the
ranks as Ray Data produces it (Ray Train's streaming split: each image decoded once,
the right thing at scale, but which rank gets which block depends on timing, so two
runs are not bitwise equal); ``replicate`` gives every rank the whole dataset in one
seeded order and each rank takes every ``world``-th batch (bitwise reproducible, each
rank reads everything: the default for data that fits in memory; on a GPU the set is kept
in device memory). Both live in :mod:`maskcrypt.train.feed`.

What differs per model lives in a *steps* object:

* :class:`RecognizerSteps` (O and E): cross-entropy (or the ArcFace margin) on clean
  images (O) or on images masked with pool masks (E; masking happens here, on the
  worker's device); held-out accuracy through the :class:`~maskcrypt.models.predictor.Predictor`;
* :class:`InpainterSteps` (R): RFR-Net's losses on masked images with the clean image
  as target, a BatchNorm-frozen fine-tune phase; held-out PSNR in the hole against a
  mean-colour fill.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import autocast, channels_last, use_bf16
from maskcrypt.masks.core import overlay
from maskcrypt.models.checkpoint import STATE_FILE, load_state, save_checkpoint, unwrap
from maskcrypt.models.inpainter import Inpainter, InpainterConfig
from maskcrypt.models.losses import InpaintLossWeights, hole_psnr, inpaint_loss, load_vgg16_features, mean_fill
from maskcrypt.models.predictor import Predictor
from maskcrypt.models.recognizer import Recognizer, RecognizerConfig
from maskcrypt.models.weights import load_external_weights
from maskcrypt.train.feed import augment_flip, held_out_masks, rank_batches, take_index


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


class Steps(ABC):
    """What one model's training needs besides the loop: the model, its optimizer and schedule, a step, a check."""

    passes = 1  # iterations over the data per epoch

    def __init__(self, cfg: dict[str, Any], device: Any, bf16: bool):
        self.cfg, self.device, self.bf16 = cfg, device, bf16
        self.tc = cfg["train_config"]
        self.role = cfg["role"]
        self.masks: np.ndarray | None = cfg.get("masks")
        self._pool: Any = None
        self.model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.epochs = int(self.tc["epochs"])
        self.epoch = 0

    def to_device(self, a: Any) -> Any:
        """A batch (numpy, or a tensor already there) on the device, channels_last where the model runs so."""
        import torch

        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and channels_last(
            self.device.type, self.bf16) else t

    def batch_masks(self, n: int, rng: np.random.Generator, pass_: int) -> np.ndarray | None:
        """The masks of one batch's images in pass ``pass_``: a fresh pool mask per image, or None."""
        if self.masks is None:
            return None
        pool = self.device_pool()
        return pool[take_index(rng.integers(0, len(self.masks), n), pool)]

    def device_pool(self) -> Any:
        """The training mask pool where batches are masked: on a GPU, copied there once (a batch's masks are
        then gathered on the device instead of crossing the bus every step); the numpy pool elsewhere."""
        if self.device.type != "cuda" or self.masks is None:
            return self.masks
        if self._pool is None:
            import torch

            self._pool = torch.from_numpy(np.ascontiguousarray(self.masks)).to(self.device)
        return self._pool

    def synchronize(self) -> None:
        """Wait for the device's queued work (a GPU runs asynchronously): what a timing point needs."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def start_epoch(self, epoch: int) -> None:
        """Per-epoch switches (R's fine-tune phase); the base only notes the epoch."""
        self.epoch = epoch

    def train_mode(self, net: Any) -> None:
        net.train()

    @abstractmethod
    def schedule(self, steps_per_epoch: int) -> None:
        """Create the learning-rate scheduler, once the steps per epoch are known."""

    @abstractmethod
    def loss(self, net: Any, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
             aug: np.random.Generator) -> Any:
        """The loss of one rank's share of a global batch."""

    @abstractmethod
    def evaluate(self, net: Any, val: Iterator[dict[str, np.ndarray]]) -> dict[str, float]:
        """Held-out figures after an epoch (rank 0), over the held-out batches."""


class RecognizerSteps(Steps):
    """O on clean images; E on its second training sample (K masked copies of every image)."""

    def __init__(self, cfg: dict[str, Any], device: Any, bf16: bool):
        import torch

        super().__init__(cfg, device, bf16)
        self.encrypted = self.role == "encrypted"
        self.fixed = self.encrypted and cfg.get("mask_mode") == "fixed"
        self.passes = int(cfg.get("k", 1)) if self.encrypted else 1
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

    def batch_masks(self, n: int, rng: np.random.Generator, pass_: int) -> np.ndarray | None:
        if not self.encrypted:
            return None
        if self.fixed:  # the source's literal sample: pass j overlays fixed mask j on every image
            pool = self.device_pool()
            one = pool[pass_]
            return np.broadcast_to(one, (n, *one.shape)) if isinstance(one, np.ndarray) else one.expand(n, *one.shape)
        return super().batch_masks(n, rng, pass_)

    def loss(self, net: Any, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
             aug: np.random.Generator) -> Any:
        import torch
        import torch.nn.functional as F

        xb = self.to_device(augment_flip(images, self.flip, aug))
        yb = torch.from_numpy(labels).to(self.device)
        if masks is not None:
            xb = overlay(xb, self.to_device(masks))
        with autocast(self.device.type, self.bf16):
            logits = net(xb, yb)
        return F.cross_entropy(logits.float(), yb, label_smoothing=self.tc["label_smoothing"])

    def evaluate(self, net: Any, val: Iterator[dict[str, np.ndarray]]) -> dict[str, float]:
        """Held-out accuracy: O on clean images, E under held-out masks (one per image, seeded by position)."""
        predictor = Predictor(net, self.device, "bf16" if self.bf16 else "fp32")
        correct = total = 0
        for batch in val:
            masks = held_out_masks(self.cfg, batch["item"]) if self.encrypted else None
            correct += predictor.accuracy(batch["image"], batch["label"], masks) * len(batch["label"])
            total += len(batch["label"])
        return {"test_accuracy": correct / max(total, 1), "held_out_images": total}


class InpainterSteps(Steps):
    """R on masked training images, the clean image the target; a BatchNorm-frozen fine-tune at the end."""

    def __init__(self, cfg: dict[str, Any], device: Any, bf16: bool):
        import torch

        super().__init__(cfg, device, bf16)
        self.model = Inpainter(InpainterConfig.from_dict(cfg["model_config"]))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.tc["lr"])
        self.epochs = int(self.tc["epochs"] + self.tc["finetune_epochs"])
        self.vgg = load_vgg16_features(self.tc["vgg_weights"]).to(device) if self.tc.get("vgg_weights") else None
        self.weights = InpaintLossWeights()
        self.finetune = False

    def schedule(self, steps_per_epoch: int) -> None:
        import torch

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)

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

    def loss(self, net: Any, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
             aug: np.random.Generator) -> Any:
        target = self.to_device(images).float() / 255.0
        m = self.to_device(masks)[:, None].float()
        with autocast(self.device.type, self.bf16):
            pred = net(target * m, m)
            loss, _ = inpaint_loss(pred, target, m, self.weights, self.vgg)
        return loss

    def evaluate(self, net: Any, val: Iterator[dict[str, np.ndarray]]) -> dict[str, float]:
        """PSNR inside the hole on held-out images, and that of filling the hole with the mean known colour."""
        import torch

        psnr, base = [], []
        with torch.inference_mode(), autocast(self.device.type, self.bf16):
            for batch in val:
                img = self.to_device(batch["image"]).float() / 255.0
                m = self.to_device(held_out_masks(self.cfg, batch["item"]))[:, None].float()
                psnr.append(hole_psnr(net(img * m, m).float(), img, m))
                base.append(hole_psnr(mean_fill(img, m), img, m))
        return {"hole_psnr": float(torch.cat(psnr).mean()), "mean_fill_psnr": float(torch.cat(base).mean()),
                "held_out_images": sum(len(p) for p in psnr)}


def _steps_per_pass(cfg: dict[str, Any], world: int, per_rank: int) -> int:
    """Steps of one pass: the same on every rank (DDP), from the training images every rank can count on."""
    n = int(cfg["train_size"])
    return n // (per_rank * world)


@dataclass
class EpochStats:
    """What one epoch of one rank did: summed loss, samples, seconds, and the steady state after 10% of it."""

    loss_sum: float
    seen: int
    seconds: float
    steady_seen: int
    steady_seconds: float
    rows_read: int


def train_epoch(steps: Steps, net: Any, epoch: int, per_pass: int,
                batches: Callable[[int, dict[str, int]], Iterator[dict[str, np.ndarray]]],
                rank: int = 0) -> EpochStats:
    """One epoch of ``steps`` on ``net``: ``steps.passes`` passes of ``per_pass`` steps over ``batches(pass, read)``.

    Each batch gets its masks (E: a fresh pool mask per image; fixed mode: the pass's
    mask) and flips from one seeded generator per (epoch, pass, step, rank). The Ray
    Train worker feeds it Ray Data batches (:func:`rank_batches`) and the attackers'
    Tune trials in-memory arrays (:func:`array_batches`), so every recognizer in the
    project trains by this one definition.
    """
    seed = steps.tc["seed"]
    steps.start_epoch(epoch)
    steps.train_mode(net)
    t0 = time.perf_counter()
    # The loss is summed on the device and read once at the end: reading it every step would
    # make the host wait for the GPU each step, with no next batch queued meanwhile.
    loss_sum: Any = 0.0
    seen = 0
    # Steady state: from the step that ends the first 10% of the epoch (start-up, first decodes) on.
    warm_step, step_no, t_warm, seen_warm = max(1, (per_pass * steps.passes) // 10), 0, t0, 0
    read: dict[str, int] = {}
    for pass_ in range(steps.passes):
        for i, batch in enumerate(batches(pass_, read)):
            rng = np.random.default_rng([seed, 0xA06, epoch, pass_, i, rank])
            masks = steps.batch_masks(len(batch["label"]), rng, pass_)
            loss = steps.loss(net, batch["image"], np.asarray(batch["label"], dtype=np.int64), masks, rng)
            steps.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            steps.optimizer.step()
            steps.scheduler.step()
            loss_sum = loss_sum + loss.detach().double() * len(batch["label"])
            seen += len(batch["label"])
            step_no += 1
            if step_no == warm_step:
                steps.synchronize()
                t_warm, seen_warm = time.perf_counter(), seen
    total = float(loss_sum)  # waits for the last step
    now = time.perf_counter()
    return EpochStats(total, seen, now - t0, seen - seen_warm, now - t_warm,
                      read.get("rows", 0) // max(steps.passes, 1))


@contextlib.contextmanager
def named_failure(role: str, epoch: int, epochs: int, rank: int, doing: str) -> Iterator[None]:
    """Any error inside becomes one :class:`MaskcryptError` line: which model, which epoch, doing what, what failed.

    The driver (:func:`maskcrypt.train.driver._fit`) prints that line and writes the whole
    traceback beside the model's checkpoints; Ray's own log keeps it too.
    """
    try:
        yield
    except MaskcryptError:
        raise
    except Exception as exc:
        raise MaskcryptError(f"training {role}: epoch {epoch}/{epochs} failed while {doing} on rank {rank}: "
                             f"{type(exc).__name__}: {exc}") from exc


def train_worker(cfg: dict[str, Any]) -> None:
    """Ray Train loop for one model; every rank runs it (DDP)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tc = cfg["train_config"]
    device = ray.train.torch.get_device()
    bf16 = use_bf16(tc["precision"], device.type)
    torch.manual_seed(tc["seed"] + 1000 * rank)
    for key in ("masks", "eval_masks"):  # pools arrive as object refs
        if isinstance(cfg.get(key), ray.ObjectRef):
            cfg[key] = ray.get(cfg[key])
    steps = (InpainterSteps if cfg["role"] == "inpainter" else RecognizerSteps)(cfg, device, bf16)
    if cfg.get("init_weights"):
        load_external_weights(steps.model, cfg["init_weights"], cfg["init_flag"])
    model = steps.model.to(device)
    if channels_last(device.type, bf16):
        model = model.to(memory_format=torch.channels_last)
    per_rank = max(1, tc["batch_size"] // world)
    per_pass = _steps_per_pass(cfg, world, per_rank)
    steps.schedule(per_pass * steps.passes)

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
        with named_failure(cfg["role"], epoch, steps.epochs, rank, "training"):
            stats = train_epoch(steps, net, epoch, per_pass,
                                lambda pass_, read, e=epoch: rank_batches(cfg, rank, world, per_rank, per_pass, e,
                                                                          pass_, read, device), rank)
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": steps.epochs,
                                   "loss": stats.loss_sum / max(stats.seen, 1),
                                   "images_per_s": stats.seen * world / max(stats.seconds, 1e-9),
                                   "images_per_s_steady": stats.steady_seen * world / max(stats.steady_seconds, 1e-9),
                                   "lr": steps.optimizer.param_groups[0]["lr"], "rank": rank,
                                   "rows_read": stats.rows_read, "sharding": cfg["sharding"]}
        if rank != 0:
            ray.train.report(metrics)
            continue
        val = ray.train.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="numpy")
        with named_failure(cfg["role"], epoch, steps.epochs, rank, "evaluating the held-out images"):
            metrics.update(steps.evaluate(unwrap(net), val))
        history.append({**metrics, "resumed": epoch == start_epoch and ckpt is not None})
        with tempfile.TemporaryDirectory() as tmp:
            meta = {**cfg["meta"], "epoch": epoch, "epochs": steps.epochs, "metrics": metrics, "history": history,
                    "precision_used": "bf16" if bf16 else "fp32", "world_size": world}
            save_checkpoint(tmp, net, meta, {"optimizer": steps.optimizer.state_dict(),
                                             "scheduler": steps.scheduler.state_dict(), "epoch": epoch,
                                             "history": history})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
