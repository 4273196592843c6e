"""Training of the three models on Ray Train (METHOD.md, "Training").

1. **O** (original recognizer) on the clean training images.
2. **E** (encrypted recognizer) on the *second training sample*: ``K`` masked copies of
   every training image, so an epoch of E covers ``K x N`` masked images. With
   ``mode="fixed"`` it is the source's literal sample: ``K`` masks drawn uniformly from
   the run's training pool ``masks_train/`` (disjoint from the selection library), each
   overlaid on every image. With ``mode="random"`` (the default) each copy gets a mask
   drawn afresh from the pool every epoch: measured on the embedded defaults, E trained
   on 4 fixed masks recognizes only ~21% of faces under *unseen* (0.5,0.6] masks, so
   the fixed sample cannot find target masks in a disjoint library. E is trained with
   the *same* ``TrainConfig`` object as O.
3. **R** (RFR-Net inpainter) on masked training images (random pool masks), the clean
   image being the target.

Each model is one ``TorchTrainer`` run with ``RunConfig(storage_path=RUN/models,
name=<role>)``: DDP over ``workers`` (gloo on CPU, NCCL on GPU), bf16 autocast and
channels_last where the hardware supports it, a checkpoint every epoch, and
``FailureConfig(max_failures)``: a failed worker group restarts from the last
checkpoint, and relaunching an interrupted run resumes it. A model already complete
with the same settings and inputs is not retrained; one trained with other settings
is refused unless ``retrain``.

The training data travels once through the object store (``ray.put``); each worker
reads its shard of every step's indices from the shared arrays, so nothing is copied
per epoch. (Data sets larger than the object store need Ray Data streaming, which
this module does not do yet.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.config import TrainConfig, config_hash
from maskcrypt.errors import MaskcryptError

ROLES = ("original", "encrypted", "inpainter")


@dataclass(frozen=True)
class InpaintTrainConfig:
    """R's training hyperparameters (RFR-Net: Adam 2e-4, then a BN-frozen fine-tune at 5e-5)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-4
    finetune_epochs: int = 0
    finetune_lr: float = 5e-5
    precision: str = "auto"
    seed: int = 0
    vgg_weights: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.finetune_epochs < 0 or self.batch_size < 2 or not self.lr > 0:
            raise MaskcryptError("inpainter training: epochs >= 1, finetune_epochs >= 0, batch_size >= 2, lr > 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise MaskcryptError(f"--precision: expected auto, bf16 or fp32, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MaskSampling:
    """How E's second training sample is built (outside TrainConfig, by design)."""

    k: int = 4
    # random: every image gets K masks drawn afresh from the pool each epoch (default: E must
    # generalize to masks it never saw); fixed: the source's literal sample, the same K masks
    # on every image for the whole training.
    mode: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise MaskcryptError(f"--masks-per-image K: the method samples at least two masks, got {self.k}")
        if self.mode not in ("fixed", "random"):
            raise MaskcryptError(f"--mask-mode: expected fixed or random, got {self.mode!r}")


@dataclass(frozen=True)
class Resources:
    """Where training runs: Ray Train workers and what each one gets."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.max_failures < 0:
            raise MaskcryptError(
                "resources: workers >= 1, cpus_per_worker > 0, gpus_per_worker >= 0, max_failures >= 0"
            )


# -- precision ---------------------------------------------------------------------------------------
def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX), as on our CPUs."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device_type: str) -> bool:
    """Resolve ``auto|bf16|fp32`` for a device: auto = bf16 where the hardware has it."""
    import torch

    if precision == "fp32":
        return False
    supported = torch.cuda.is_bf16_supported() if device_type == "cuda" else cpu_supports_bf16()
    if precision == "bf16" and not supported:
        raise MaskcryptError(f"--precision bf16: this {device_type} has no bf16 support; use auto or fp32")
    return supported


# -- the per-worker loop ------------------------------------------------------------------------------
def lr_lambda(tc: dict[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
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


def train_worker(cfg: dict[str, Any]) -> None:
    """Ray Train loop for one model; every rank runs it (DDP)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from maskcrypt.masks.core import overlay
    from maskcrypt.models.checkpoint import STATE_FILE, load_external_weights, load_state, save_checkpoint, unwrap

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    role = cfg["role"]
    kind = "inpainter" if role == "inpainter" else "recognizer"
    tc = cfg["train_config"]
    device = ray.train.torch.get_device()
    bf16 = use_bf16(tc["precision"], device.type)
    torch.manual_seed(tc["seed"] + 1000 * rank)

    x_train = ray.get(cfg["train_images"])
    y_train = ray.get(cfg["train_labels"])
    x_test = ray.get(cfg["test_images"])
    y_test = ray.get(cfg["test_labels"])
    masks = ray.get(cfg["masks"]) if cfg.get("masks") is not None else None
    held_out_masks = ray.get(cfg["eval_masks"]) if cfg.get("eval_masks") is not None else masks

    if kind == "recognizer":
        from maskcrypt.models.recognizer import Recognizer, RecognizerConfig

        model = Recognizer(RecognizerConfig.from_dict(cfg["model_config"]))
    else:
        from maskcrypt.models.inpainter import Inpainter, InpainterConfig

        model = Inpainter(InpainterConfig.from_dict(cfg["model_config"]))
    if cfg.get("init_weights"):
        load_external_weights(model, cfg["init_weights"], cfg["init_flag"])
    model = model.to(device)
    if device.type == "cuda" or bf16:
        model = model.to(memory_format=torch.channels_last)

    # Samples of one epoch: indices into (image, mask) pairs.
    n = x_train.shape[0]
    k = cfg.get("k", 1)
    fixed_pairs = role == "encrypted" and cfg.get("mask_mode") == "fixed"
    # E's held-out accuracy is measured with pool masks outside its training sample (unseen masks).
    samples = n * k  # E: the second training sample has K masked copies of every image (either mode)
    global_batch = tc["batch_size"]
    per_rank = max(1, global_batch // world)
    steps = samples // (per_rank * world)

    if kind == "recognizer":
        if tc["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=tc["lr"], momentum=tc["momentum"],
                                  weight_decay=tc["weight_decay"], nesterov=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc, steps))
        epochs = tc["epochs"]
        vgg = None
    else:
        from maskcrypt.models.losses import InpaintLossWeights, inpaint_loss, load_vgg16_features

        opt = torch.optim.Adam(model.parameters(), lr=tc["lr"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        epochs = tc["epochs"] + tc["finetune_epochs"]
        vgg = load_vgg16_features(tc["vgg_weights"]).to(device) if tc.get("vgg_weights") else None
        weights = InpaintLossWeights()

    start_epoch = 1
    history: list[dict[str, Any]] = []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            unwrap(model).load_state_dict(load_state(Path(d)))
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
    # With one RFR iteration the attention's blend ratio has no previous scores to weigh: unused.
    unused = kind == "inpainter" and cfg["model_config"].get("iterations", 2) < 2
    model = ray.train.torch.prepare_model(model, move_to_device=False,
                                          parallel_strategy_kwargs={"find_unused_parameters": unused})

    def to_dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and bf16 else t

    eval_idx = np.arange(min(len(y_test), cfg.get("eval_limit", 2000)))
    eval_masks = None
    if held_out_masks is not None:
        pick = np.random.default_rng([tc["seed"], 0xE7A1]).integers(0, len(held_out_masks), eval_idx.size)
        eval_masks = held_out_masks[pick]

    def evaluate() -> dict[str, float]:
        net = unwrap(model)
        net.eval()
        out: dict[str, float] = {}
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if kind == "recognizer":
                correct = 0
                for s in range(0, eval_idx.size, 256):
                    xb = to_dev(x_test[eval_idx[s:s + 256]])
                    if role == "encrypted":
                        xb = overlay(xb, to_dev(eval_masks[s:s + 256]))
                    pred = net(xb).argmax(1).cpu().numpy()
                    correct += int((pred == y_test[eval_idx[s:s + 256]]).sum())
                out["test_accuracy"] = correct / eval_idx.size
            else:
                from maskcrypt.models.losses import hole_psnr

                psnr, base = [], []
                for s in range(0, eval_idx.size, 64):
                    img = to_dev(x_test[eval_idx[s:s + 64]]).float() / 255.0
                    m = to_dev(eval_masks[s:s + 64])[:, None].float()
                    pred = net(img * m, m).float()
                    psnr.append(hole_psnr(pred, img, m))
                    mean_fill = (img * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)
                    base.append(hole_psnr(mean_fill.expand_as(img), img, m))
                out["hole_psnr"] = float(torch.cat(psnr).mean())
                out["mean_fill_psnr"] = float(torch.cat(base).mean())
        net.train()
        return out

    fail = cfg.get("fail_once")
    flip = kind == "recognizer" and tc.get("augment") == "flip"
    for epoch in range(start_epoch, epochs + 1):
        if fail and epoch == fail["epoch"] and rank == world - 1 and not os.path.exists(fail["marker"]):
            Path(fail["marker"]).write_text("failed once\n")
            raise RuntimeError(f"injected failure in epoch {epoch} (test hook)")
        if kind == "inpainter" and epoch == tc["epochs"] + 1:
            # RFR-Net's fine-tune: lower learning rate, BatchNorm statistics frozen.
            for g in opt.param_groups:
                g["lr"] = tc["finetune_lr"]
        rng = np.random.default_rng([tc["seed"], 0x7A1, epoch])
        perm = rng.permutation(samples)
        mask_pick = None
        if (role == "encrypted" and not fixed_pairs) or kind == "inpainter":
            mask_pick = rng.integers(0, len(masks), samples)
        aug_rng = np.random.default_rng([tc["seed"], 0xA06, epoch, rank])
        model.train()
        if kind == "inpainter" and epoch > tc["epochs"]:
            for mod in model.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for step in range(steps):
            idx = perm[step * per_rank * world + rank * per_rank: step * per_rank * world + (rank + 1) * per_rank]
            img_idx = idx // k
            xb = to_dev(augment_flip(x_train[img_idx], flip, aug_rng))
            if fixed_pairs:
                mb = to_dev(masks[idx % k])
            elif mask_pick is not None:
                mb = to_dev(masks[mask_pick[idx]])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if kind == "recognizer":
                    if role == "encrypted":
                        xb = overlay(xb, mb)
                    yb = torch.from_numpy(y_train[img_idx]).to(device)
                    logits = model(xb, yb)
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=tc["label_smoothing"])
                else:
                    target = xb.float() / 255.0
                    m = mb[:, None].float()
                    pred = model(target * m, m)
                    loss, _ = inpaint_loss(pred, target, m, weights, vgg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        train_s = time.perf_counter() - t0
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": epochs, "loss": loss_sum / max(seen, 1),
                                   "images_per_s": seen * world / max(train_s, 1e-9), "lr": opt.param_groups[0]["lr"],
                                   "rank": rank}
        if rank == 0:
            metrics.update(evaluate())
            history.append({**metrics, "resumed": epoch == start_epoch and ckpt is not None})
            with tempfile.TemporaryDirectory() as tmp:
                meta = {**cfg["meta"], "epoch": epoch, "epochs": epochs, "metrics": metrics, "history": history,
                        "precision_used": "bf16" if bf16 else "fp32", "world_size": world}
                save_checkpoint(tmp, model, meta, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                   "epoch": epoch, "history": history})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
        else:
            ray.train.report(metrics)


# -- the driver ------------------------------------------------------------------------------------------
@dataclass
class TrainInputs:
    """Arrays one model trains on; hashes identify them in the checkpoint."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    hashes: dict[str, str]
    masks: np.ndarray | None = None


def _check_gpus(resources: Resources) -> None:
    import ray

    if resources.gpus_per_worker <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have < resources.gpus_per_worker and not os.environ.get("MASKCRYPT_AUTOSCALING_GPUS"):
        raise MaskcryptError(
            f"--gpus-per-worker {resources.gpus_per_worker}: the Ray cluster has {have:g} GPU(s) and none will "
            "appear; use 0 on CPU machines (on an autoscaling cluster whose GPU nodes start on demand, set "
            "MASKCRYPT_AUTOSCALING_GPUS=1)"
        )
    if have and resources.workers * resources.gpus_per_worker > have and not os.environ.get(
            "MASKCRYPT_AUTOSCALING_GPUS"):
        raise MaskcryptError(
            f"--workers {resources.workers} x --gpus-per-worker {resources.gpus_per_worker} needs "
            f"{resources.workers * resources.gpus_per_worker:g} GPUs; the cluster has {have:g}"
        )


def train_model(
    role: str,
    models_dir: str | os.PathLike[str],
    inputs: TrainInputs,
    model_config: dict[str, Any],
    train_config: TrainConfig | InpaintTrainConfig,
    resources: Resources = Resources(),
    sampling: MaskSampling | None = None,
    init_weights: str = "",
    retrain: bool = False,
    fail_once: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model with Ray Train into ``models_dir/<role>``; return its final checkpoint's meta.

    Skips a model already complete with the same job hash; refuses a folder trained
    with other settings unless ``retrain``; resumes an interrupted one.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from maskcrypt.models.checkpoint import find_checkpoint

    if role not in ROLES:
        raise MaskcryptError(f"role: expected one of {ROLES}, got {role!r}")
    if role != "original" and inputs.masks is None:
        raise MaskcryptError(f"training {role}: needs the training mask pool (masks_train/)")
    if inputs.masks is not None and inputs.masks.shape[1:] != inputs.train_images.shape[2:]:
        raise MaskcryptError(
            f"training {role}: masks are {inputs.masks.shape[1]}x{inputs.masks.shape[2]}, images "
            f"{inputs.train_images.shape[2]}x{inputs.train_images.shape[3]} (rebuild the pool with --size)"
        )
    if len(inputs.train_labels) == 0:
        raise MaskcryptError(f"training {role}: the training set is empty")
    kind = "inpainter" if role == "inpainter" else "recognizer"
    tc = train_config.to_dict()
    init_sha = ""
    if init_weights:
        from maskcrypt.models.checkpoint import _sha256_file

        if not Path(init_weights).is_file():
            raise MaskcryptError(f"--init-{'inpainter' if kind == 'inpainter' else 'original'} {init_weights}: "
                                 "file not found")
        init_sha = _sha256_file(Path(init_weights))
    masks = inputs.masks
    eval_masks = masks
    mask_info: dict[str, Any] = {}
    if role == "encrypted":
        assert sampling is not None
        if sampling.mode == "fixed":
            if sampling.k > len(masks):
                raise MaskcryptError(f"--masks-per-image {sampling.k}: the pool holds only {len(masks)} masks")
            pick = np.random.default_rng([sampling.seed, 0x5A3]).choice(len(masks), sampling.k, replace=False)
            masks = masks[np.sort(pick)]
            mask_info["mask_indices"] = np.sort(pick).tolist()
            # Held-out accuracy uses pool masks E never trained with.
            rest = np.setdiff1d(np.arange(len(eval_masks)), pick)
            eval_masks = eval_masks[rest] if rest.size else eval_masks
        mask_info.update(dataclasses.asdict(sampling))
    samples = len(inputs.train_labels) * (sampling.k if role == "encrypted" else 1)
    job = {"role": role, "model_config": model_config, "train_config": tc, "inputs": inputs.hashes,
           "mask_sampling": mask_info, "samples_per_epoch": samples, "init_sha256": init_sha}
    job_sha = config_hash(job)
    folder = Path(models_dir) / role
    if folder.exists():
        try:
            _, meta = find_checkpoint(folder, kind=kind)
        except MaskcryptError:
            meta = None
        if retrain:
            shutil.rmtree(folder)
        elif meta is not None and meta.get("job_sha256") != job_sha:
            raise MaskcryptError(
                f"model {folder}: was trained with other settings or inputs; pass --retrain to train it again"
            )
        elif meta is not None and meta.get("epoch") == meta.get("epochs"):
            log(f"{role}: complete in {folder} (epoch {meta['epoch']}), not retrained")
            return meta
    _check_gpus(resources)
    if samples < tc["batch_size"]:
        raise MaskcryptError(
            f"training {role}: {samples} training samples are fewer than one global batch of {tc['batch_size']}"
            " (lower --batch-size)"
        )

    meta = {
        "kind": kind, "role": role, "model_config": model_config, "train_config": tc,
        "train_config_sha256": config_hash(tc), "job_sha256": job_sha, "class_names": inputs.class_names,
        # The classes it saw; open-set scoring is chosen when test identities are not among them.
        "trained_classes": [inputs.class_names[i] for i in np.unique(inputs.train_labels)],
        "image_size": int(inputs.train_images.shape[2]), "channels": int(inputs.train_images.shape[1]),
        "inputs": inputs.hashes, "mask_sampling": mask_info, "init_weights": init_weights, "init_sha256": init_sha,
        "feature_losses": bool(tc.get("vgg_weights")) if kind == "inpainter" else None,
    }
    cfg = {
        "role": role, "model_config": model_config, "train_config": tc, "meta": meta,
        "train_images": ray.put(inputs.train_images), "train_labels": ray.put(inputs.train_labels),
        "test_images": ray.put(inputs.test_images), "test_labels": ray.put(inputs.test_labels),
        "masks": ray.put(masks) if masks is not None else None,
        "eval_masks": ray.put(eval_masks) if eval_masks is not None else None,
        "k": sampling.k if (role == "encrypted" and sampling) else 1,
        "mask_mode": sampling.mode if sampling else None,
        "init_weights": init_weights, "init_flag": "--init-inpainter" if kind == "inpainter" else "--init-original",
        "fail_once": fail_once,
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker={"CPU": resources.cpus_per_worker,
                                  **({"GPU": resources.gpus_per_worker} if resources.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=role, storage_path=str(Path(models_dir).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
        ),
    )
    t0 = time.perf_counter()
    log(f"{role}: training on {resources.workers} worker(s) into {folder}")
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface the cause by name.
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, MaskcryptError):
            raise MaskcryptError(str(cause)) from None
        raise
    _, final = find_checkpoint(folder, kind=kind)
    if final.get("epoch") != final.get("epochs"):
        raise MaskcryptError(f"training {role}: finished at epoch {final.get('epoch')} of {final.get('epochs')}")
    final["wall_seconds"] = round(time.perf_counter() - t0, 1)
    m = final["metrics"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k in ("loss", "test_accuracy", "hole_psnr",
                                                                     "mean_fill_psnr", "images_per_s"))
    log(f"{role}: done in {final['wall_seconds']}s; final epoch: {shown}")
    return final


def write_train_record(run_json: Path, metas: dict[str, dict[str, Any]]) -> None:
    """Record the trained models' summaries in run.json (atomically)."""
    from maskcrypt.run import write_json_atomic

    record = json.loads(run_json.read_text()) if run_json.exists() else {}
    record.setdefault("stages", {})["train"] = {
        role: {"epoch": m.get("epoch"), "metrics": m.get("metrics"),
               "train_config_sha256": m.get("train_config_sha256"), "job_sha256": m.get("job_sha256"),
               "feature_losses": m.get("feature_losses"), "precision": m.get("precision_used")}
        for role, m in metas.items()
    }
    write_json_atomic(run_json, record)


@dataclass(frozen=True)
class ModelSettings:
    """Architectures of the three models (the recognizers share one)."""

    arch: str = "compact"
    width: int = 32
    depth: tuple[int, ...] = (1, 1, 1, 1)
    head: str = "softmax"
    inpaint_width: int = 16
    inpaint_iterations: int = 3


def train_run(
    run: str | os.PathLike[str],
    train_data: str,
    size: int,
    masks: str = "",
    inpaint_data: str = "",
    val_data: str = "",
    models: ModelSettings = ModelSettings(),
    train_config: TrainConfig = TrainConfig(),
    inpaint_config: InpaintTrainConfig = InpaintTrainConfig(),
    sampling: MaskSampling = MaskSampling(),
    resources: Resources = Resources(),
    init_original: str = "",
    init_inpainter: str = "",
    retrain: bool = False,
    roles: tuple[str, ...] = ROLES,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Train O, E and R for a run directory; return each model's final checkpoint meta.

    ``masks`` defaults to the run's ``masks_train/`` pool; ``val_data`` (held-out metrics
    per epoch) defaults to the training source's test split; ``inpaint_data`` to the
    training data. ``init_original`` initializes *both* recognizers, so O and E still
    differ only in their training sample.
    """
    import ray

    from maskcrypt.data import load, parse_spec
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.models.inpainter import InpainterConfig
    from maskcrypt.models.recognizer import RecognizerConfig
    from maskcrypt.run import RunPaths

    paths = RunPaths.resolve(run)
    if not ray.is_initialized():
        ray.init()
    spec = parse_spec(train_data)
    train = load(spec, default_split="train", size=size)
    val = load(val_data or spec.with_options(split="test" if spec.split in ("", "train") else "val"),
               default_split="test", size=size)
    if set(np.unique(val.labels)) - set(np.unique(train.labels)) or val.class_names != train.class_names:
        raise MaskcryptError(
            f"--val-data {val.spec}: its classes are not the training classes; held-out accuracy needs "
            "images of the training identities (e.g. the training source's test split)"
        )
    pool_uri = masks or str(paths.masks_train)
    pool = MaskLibrary.open(pool_uri)
    if (pool.height, pool.width) != (size, size):
        raise MaskcryptError(f"--masks {pool_uri}: holds {pool.height}x{pool.width} masks, images are "
                             f"{size}x{size} (rebuild it with --size {size})")
    pool_masks = pool.load()
    if len(pool_masks) < 2:
        raise MaskcryptError(f"--masks {pool_uri}: needs at least 2 masks, holds {len(pool_masks)}")
    mask_hash = config_hash({"sha256": sorted(pool_masks.sha256)})
    hashes = {"train_data": train.content_hash(), "val_data": val.content_hash(), "masks": mask_hash}
    log(f"training data {train.spec}: {len(train)} images, {len(train.class_names)} classes; "
        f"held-out {len(val)}; mask pool {pool_uri}: {len(pool_masks)} masks")
    inputs = TrainInputs(train.images, train.labels, val.images, val.labels, train.class_names, hashes,
                         pool_masks.masks)
    rec = RecognizerConfig(arch=models.arch, num_classes=len(train.class_names), channels=train.channels,
                           image_size=size, width=models.width, depth=tuple(models.depth), head=models.head)
    out: dict[str, dict[str, Any]] = {}
    for role in ("original", "encrypted"):
        if role in roles:
            out[role] = train_model(role, paths.models, inputs, rec.to_dict(), train_config, resources,
                                    sampling if role == "encrypted" else None, init_original, retrain, log=log)
    if "inpainter" in roles:
        if inpaint_data:
            r_train = load(inpaint_data, default_split="train", size=size, channels=train.channels)
            r_val = load(parse_spec(inpaint_data).with_options(split="test"), default_split="test", size=size,
                         channels=train.channels) if parse_spec(inpaint_data).split in ("", "train") else val
            r_inputs = TrainInputs(r_train.images, r_train.labels, r_val.images, r_val.labels, r_train.class_names,
                                   {**hashes, "train_data": r_train.content_hash(),
                                    "val_data": r_val.content_hash()}, pool_masks.masks)
        else:
            r_inputs = inputs
        inp = InpainterConfig(width=models.inpaint_width, iterations=models.inpaint_iterations,
                              channels=train.channels, image_size=size)
        out["inpainter"] = train_model("inpainter", paths.models, r_inputs, inp.to_dict(), inpaint_config,
                                       resources, None, init_inpainter, retrain, log=log)
    if paths.run_json.exists() or paths.root.exists():
        write_train_record(paths.run_json, out)
    return out


def training_quality(
    run: str | os.PathLike[str], test_data: str, size: int, seed: int = 0, batch: int = 256
) -> dict[str, Any]:
    """How the trained models behave on held-out images masked from each bucket.

    For bucket 0 (no mask) and each bucket of the run's selection library, every test
    image gets one mask drawn at random from the bucket; reported: E's and O's accuracy
    (closed set: top-1 of the classifier), and R's PSNR inside the hole against filling
    the hole with the mean known colour. A quick in-process look for the training
    report; the method's Table 1 (repetitions, intervals, Ray Data) is the evaluation
    stage's job.
    """
    import torch

    from maskcrypt.config import check_same_training
    from maskcrypt.data import load
    from maskcrypt.masks import MaskLibrary, bucket_label, overlay
    from maskcrypt.models import Inpainter, Recognizer
    from maskcrypt.models.losses import hole_psnr
    from maskcrypt.run import RunPaths

    paths = RunPaths.resolve(run)
    o = Recognizer.from_checkpoint(paths.models / "original")
    e = Recognizer.from_checkpoint(paths.models / "encrypted")
    check_same_training(o.checkpoint_meta, e.checkpoint_meta)
    r = Inpainter.from_checkpoint(paths.models / "inpainter")
    test = load(test_data, default_split="test", size=size)
    if test.class_names != o.checkpoint_meta["class_names"]:
        raise MaskcryptError(f"{test_data}: its classes are not the models' training classes (closed set needed)")
    lib = MaskLibrary.open(str(paths.masks))
    x = torch.from_numpy(test.images)
    y = torch.from_numpy(test.labels)
    rows = []
    with torch.inference_mode():
        def acc(model: Recognizer, images: torch.Tensor) -> float:
            pred = torch.cat([model(images[s:s + batch]).argmax(1) for s in range(0, len(images), batch)])
            return float((pred == y).float().mean())

        rows.append({"bucket": 0, "range": "no mask", "E": acc(e, x), "O": acc(o, x)})
        for b in range(1, len(lib.edges)):
            pool = lib.load([b]).masks
            if len(pool) == 0:
                continue
            pick = np.random.default_rng([seed, b]).integers(0, len(pool), len(x))
            m = torch.from_numpy(pool[pick])
            masked = overlay(x, m)
            xf, mf = x.float() / 255, m[:, None].float()
            pred = torch.cat([r(masked[s:s + 64].float() / 255, mf[s:s + 64]) for s in range(0, len(x), 64)])
            fill = (xf * mf).sum((2, 3), keepdim=True) / mf.sum((2, 3), keepdim=True).clamp_min(1)
            rows.append({"bucket": b, "range": bucket_label(b, lib.edges), "E": acc(e, masked), "O": acc(o, masked),
                         "R_hole_psnr": float(hole_psnr(pred, xf, mf).mean()),
                         "mean_fill_psnr": float(hole_psnr(fill.expand_as(xf), xf, mf).mean())})
    return {"test_data": test.spec, "images": len(test), "rows": rows,
            "feature_losses": r.checkpoint_meta.get("feature_losses")}


def format_quality(q: dict[str, Any]) -> str:
    lines = [f"held-out quality on {q['images']} images of {q['test_data']} (one random mask per image):",
             f"{'bucket':>14} {'E acc':>7} {'O acc':>7} {'R PSNR':>8} {'mean fill':>10}"]
    for row in q["rows"]:
        psnr = f"{row['R_hole_psnr']:8.2f} {row['mean_fill_psnr']:10.2f}" if "R_hole_psnr" in row else ""
        lines.append(f"{row['range']:>14} {row['E']:7.1%} {row['O']:7.1%} {psnr}")
    return "\n".join(lines)
