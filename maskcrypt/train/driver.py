"""Training of the three models on Ray Train (docs/method.md, "Training"): the driver side.

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

Each model is one ``TorchTrainer`` run of :func:`maskcrypt.train.loop.train_worker`
with ``RunConfig(storage_path=RUN/models, name=<role>)``, a checkpoint every epoch and
``FailureConfig(max_failures)``: a failed worker group restarts from the last
checkpoint, and relaunching an interrupted run resumes it. A model already complete
with the same settings and inputs is not retrained; one trained with other settings
is refused unless ``retrain``. The three do not depend on each other: where the cluster
holds several worker groups at once they train side by side (:func:`training_slots`),
longest first (E, R, then O).

The training and held-out images reach the workers as Ray Datasets
(``TorchTrainer(datasets=...)``), decoded in Ray Data tasks from the sources' indexes
(:class:`maskcrypt.data.SourceSplit`): the driver never holds them. How the ranks share
the data (``Resources.sharding``): ``stream`` (Ray Train's streaming split; file sources
by default) or ``replicate`` (every rank reads all in one seeded order and takes every
world-th batch: bitwise reproducible; sources that fit in memory by default). When the
data streams from files and the workers would take every CPU, each worker gets
``(CPUs - 1) / workers`` so that Ray Data's decode tasks keep one CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.config import (
    ROLES,
    InpaintTrainConfig,
    MaskSampling,
    ModelSettings,
    Resources,
    TrainConfig,
    TrainSources,
    config_hash,
)
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.rundir import Run, update_record
from maskcrypt.data import labelled, parse_spec, source_split
from maskcrypt.data.stream import SourceSplit
from maskcrypt.masks import MaskLibrary
from maskcrypt.models.checkpoint import find_checkpoint, sha256_file
from maskcrypt.models.inpainter import InpainterConfig
from maskcrypt.models.recognizer import RecognizerConfig
from maskcrypt.models.weights import config_for_weights, read_state_dict
from maskcrypt.runtime.cluster import VERBOSE, check_gpus, require_ray
from maskcrypt.train.loop import train_worker
from maskcrypt.train.placement import held_out_order, sharding, training_slots, worker_cpus
from maskcrypt.train.progress import EpochPrinter
from maskcrypt.train.resume import complete_model, data_changes


@dataclass
class TrainInputs:
    """What one model trains on: the training and held-out splits (indexes, decoded by Ray Data), the pool.

    ``hashes`` identify the inputs in the checkpoint's job hash (the splits' fingerprints,
    not their pixels: nothing is decoded on the driver).
    """

    train: SourceSplit
    val: SourceSplit
    hashes: dict[str, str]
    masks: np.ndarray | None = None
    eval_masks: np.ndarray | None = None  # held-out masks for per-epoch figures (default: the pool)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @classmethod
    def from_arrays(cls, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
                    val_labels: np.ndarray, class_names: list[str], hashes: dict[str, str],
                    masks: np.ndarray | None = None, eval_masks: np.ndarray | None = None) -> TrainInputs:
        """Inputs from arrays already in memory (tests, benchmarks): they become array-source splits."""
        return cls(SourceSplit.from_arrays(train_images, train_labels, class_names),
                   SourceSplit.from_arrays(val_images, val_labels, class_names), hashes, masks, eval_masks)


def _check_inputs(role: str, inputs: TrainInputs) -> None:
    if role not in ROLES:
        raise MaskcryptError(f"role: expected one of {ROLES}, got {role!r}")
    if role != "original" and inputs.masks is None:
        raise MaskcryptError(f"training {role}: needs the training mask pool (masks_train/)")
    if inputs.masks is not None and tuple(inputs.masks.shape[1:]) != tuple(inputs.train.size):
        raise MaskcryptError(
            f"training {role}: masks are {inputs.masks.shape[1]}x{inputs.masks.shape[2]}, images "
            f"{inputs.train.size[0]}x{inputs.train.size[1]} (rebuild the pool with --size)"
        )
    if len(inputs.train) == 0:
        raise MaskcryptError(f"training {role}: the training set is empty")


def _second_sample(inputs: TrainInputs, sampling: MaskSampling) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """E's masks (the pool, or the K fixed ones), the held-out masks, and what the checkpoint records of them."""
    masks = inputs.masks
    held_out = inputs.eval_masks if inputs.eval_masks is not None else masks
    info: dict[str, Any] = {}
    if sampling.mode == "fixed":
        if sampling.k > len(masks):
            raise MaskcryptError(f"--masks-per-image {sampling.k}: the pool holds only {len(masks)} masks")
        pick = np.sort(np.random.default_rng([sampling.seed, 0x5A3]).choice(len(masks), sampling.k, replace=False))
        if inputs.eval_masks is None:  # held-out figures from pool masks E never trained with
            rest = np.setdiff1d(np.arange(len(masks)), pick)
            held_out = masks[rest] if rest.size else masks
        masks = masks[pick]
        info["mask_indices"] = pick.tolist()
    info.update(dataclasses.asdict(sampling))
    return masks, held_out, info


#: Models training side by side materialize their datasets one after the other, so two builds never compete
#: for the CPU that the other models' workers leave free.
_DATASETS_BUILT_ONE_AT_A_TIME = threading.Lock()


def _datasets(inputs: TrainInputs, mode: str, eval_limit: int, seed: int) -> dict[str, Any]:
    """The training and held-out datasets, a training set that replicates and the held-out sample decoded once.

    A streamed training set is shuffled by Ray Data (``SourceSplit.dataset``'s ``shuffle_seed``)
    and decoded again each epoch (it may be far larger than memory). A replicated one is
    small by definition (``Resources.replicate_max_mb``): decoded once here, before the
    workers hold the CPUs that decoding needs, and permuted per epoch by the workers
    themselves (``array_batches``). The held-out sample (at most ``eval_limit`` images) is
    decoded once too, not every epoch.
    """
    train = inputs.train.dataset(shuffle_seed=seed if mode == "stream" else None)
    val = inputs.val.dataset(order=held_out_order(len(inputs.val), eval_limit, seed))
    if mode == "replicate":
        train = train.materialize()
    return {"train": train, "val": val.materialize()}


def _fit(cfg: dict[str, Any], role: str, models_dir: Path, resources: Resources, datasets: dict[str, Any],
         cpus: float) -> None:
    """One TorchTrainer run; a worker's MaskcryptError surfaces as itself, not as Ray's wrapper."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    ordered = ExecutionOptions(preserve_order=True)  # seeded order: what makes replicate mode reproducible
    data_config = ray.train.DataConfig(
        datasets_to_split=["train"] if cfg["sharding"] == "stream" else [],
        execution_options={"val": ordered, **({"train": ordered} if cfg["sharding"] == "replicate" else {})})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg,
        datasets=datasets,
        dataset_config=data_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus,
                                  **({"GPU": resources.gpus_per_worker} if resources.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=role, storage_path=str(models_dir.resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface the named one, keep the traceback in a file.

        named, cause = None, exc
        while cause is not None:
            if isinstance(cause, MaskcryptError):
                named = cause
            cause = cause.__cause__
        log_file = models_dir / f"{role}.error.log"
        models_dir.mkdir(parents=True, exist_ok=True)
        log_file.write_text("".join(traceback.format_exception(exc)))
        what = str(named) if named is not None else f"training {role} failed: {type(exc).__name__}: {exc}"
        raise MaskcryptError(f"{what} (traceback: {log_file})") from None


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
    log: Callable[[str], None] = print,
    init_flag: str = "",
) -> dict[str, Any]:
    """Train one model with Ray Train into ``models_dir/<role>``; return its final checkpoint's meta.

    Skips a model already complete with the same job hash; refuses a folder trained
    with other settings unless ``retrain``; resumes an interrupted one.
    """
    import ray

    _check_inputs(role, inputs)
    kind = "inpainter" if role == "inpainter" else "recognizer"
    flag = init_flag or ("--init-inpainter" if kind == "inpainter" else "--init-original")
    tc = train_config.to_dict()
    init_sha = ""
    if init_weights:
        if not Path(init_weights).is_file():
            raise MaskcryptError(f"{flag} {init_weights}: file not found")
        init_sha = sha256_file(Path(init_weights))
    masks, held_out, mask_info = (None, None, {}) if role == "original" else (inputs.masks, inputs.eval_masks, {})
    if role == "encrypted":
        masks, held_out, mask_info = _second_sample(inputs, sampling or MaskSampling())
    k = (sampling or MaskSampling()).k if role == "encrypted" else 1
    samples = len(inputs.train) * k
    job = {"role": role, "model_config": model_config, "train_config": tc, "inputs": inputs.hashes,
           "mask_sampling": mask_info, "samples_per_epoch": samples, "init_sha256": init_sha}
    job_sha = config_hash(job)
    folder = Path(models_dir) / role
    manifests = Path(models_dir).parent / "cache" / "splits"
    done = complete_model(folder, kind, job_sha, retrain,
                           lambda before: data_changes(before.get("inputs", {}), inputs, manifests))
    if done is not None:
        log(f"{role}: complete in {folder} (epoch {done['epoch']}), not retrained")
        return done
    require_ray(f"training {role}")
    check_gpus("--gpus-per-worker", resources.gpus_per_worker, resources.workers)
    if samples < tc["batch_size"]:
        raise MaskcryptError(f"training {role}: {samples} training samples are fewer than one global batch of "
                             f"{tc['batch_size']} (lower --batch-size)")
    meta = {
        "kind": kind, "role": role, "model_config": model_config, "train_config": tc,
        "train_config_sha256": config_hash(tc), "job_sha256": job_sha, "class_names": inputs.class_names,
        # The classes it saw; open-set scoring is chosen when test identities are not among them.
        "trained_classes": [inputs.class_names[i] for i in np.unique(inputs.train.labels)],
        "image_size": int(inputs.train.size[0]), "channels": int(inputs.train.channels),
        "inputs": inputs.hashes, "mask_sampling": mask_info, "init_weights": init_weights, "init_sha256": init_sha,
        "held_out_masks": None if held_out is None else len(held_out),
        "feature_losses": bool(tc.get("vgg_weights")) if kind == "inpainter" else None,
    }
    mode = sharding(resources, inputs.train)
    cpus = worker_cpus(resources, mode, ray.cluster_resources().get("CPU", 0))
    eval_limit = resources.held_out_limit
    cfg = {
        "role": role, "model_config": model_config, "train_config": tc, "meta": meta, "k": k,
        "sharding": mode, "train_size": len(inputs.train), "val_size": min(len(inputs.val), eval_limit),
        "shuffle_buffer": resources.shuffle_buffer,
        "masks": ray.put(masks) if masks is not None else None,
        "eval_masks": ray.put(held_out) if held_out is not None else None,
        "mask_mode": sampling.mode if sampling else None, "init_weights": init_weights, "init_flag": flag,
    }
    t0 = time.perf_counter()
    log(f"{role}: training on {resources.workers} worker(s) x {cpus:g} CPU, data {mode} ({len(inputs.train)} "
        f"images x {k} per epoch) into {folder}")
    with _DATASETS_BUILT_ONE_AT_A_TIME:
        datasets = _datasets(inputs, mode, eval_limit, tc["seed"])
    with EpochPrinter(folder, role, log):
        _fit(cfg, role, Path(models_dir), resources, datasets, cpus)
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
    """Record the trained models' summaries in run.json."""
    update_record(run_json, "train", {
        role: {"epoch": m.get("epoch"), "metrics": m.get("metrics"),
               "train_config_sha256": m.get("train_config_sha256"), "job_sha256": m.get("job_sha256"),
               "feature_losses": m.get("feature_losses"), "precision": m.get("precision_used")}
        for role, m in metas.items()})


def _pool(uri: str, size: int) -> Any:
    pool = MaskLibrary.open(uri)
    if (pool.height, pool.width) != (size, size):
        raise MaskcryptError(f"--masks {uri}: holds {pool.height}x{pool.width} masks, images are {size}x{size} "
                             f"(rebuild it with --size {size})")
    masks = pool.load()
    if len(masks) < 2:
        raise MaskcryptError(f"--masks {uri}: needs at least 2 masks, holds {len(masks)}")
    return masks


def _weights_config(rec: Any, init: str, flag: str, arch: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The recognizer config a role trains: ``rec``, or what its initial weights are (layout, arch, normalization)."""
    if not init:
        return rec.to_dict()

    cfg = config_for_weights(read_state_dict(init, f"{flag} {init}"), rec, f"{flag} {init}",
                             arch_given=arch != "compact")
    if cfg != rec:
        log(f"{flag} {init}: {cfg.layout if cfg.layout != 'maskcrypt' else 'torchvision'} {cfg.arch} weights "
            f"(input normalized with mean {cfg.mean}, std {cfg.std})")
    return cfg.to_dict()


def _locked(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` serialized: lines from concurrent trainings never interleave."""
    lock = threading.Lock()

    def locked(line: str) -> None:
        with lock:
            log(line)

    return locked


def _train_side_by_side(jobs: dict[str, Callable[[], dict[str, Any]]], resources: Resources, streams: bool,
                        log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Run the trainings ``jobs``, as many at once as the cluster holds (:func:`training_slots`).

    A failure does not stop the trainings already running (each one checkpoints and can
    be resumed); the first failure is raised once they have ended.
    """
    import ray

    slots = training_slots(resources, ray.cluster_resources(), streams) if ray.is_initialized() else 1
    slots = min(slots, len(jobs))
    if slots <= 1:  # one after the other, in the method's order
        return {role: jobs[role]() for role in ("original", "encrypted", "inpainter") if role in jobs}

    # Longest first: E (K passes of the data per epoch), then R (the costliest network per image), then O.
    order = [role for role in ("encrypted", "inpainter", "original") if role in jobs]
    gpus = f" + {resources.gpus_per_worker:g} GPU" if resources.gpus_per_worker else ""
    log(f"training {', '.join(order)}: {slots} at a time, each on {resources.workers} worker(s) x "
        f"{resources.cpus_per_worker:g} CPU{gpus}")
    if not os.environ.get(VERBOSE):
        from ray.util.debug import log_once

        # Ray Data warns (once per process) that a dataset "will hang" when no CPU is free the instant it starts:
        # here the other model's workers hold theirs, and the slots leave every dataset build a CPU, so it is no
        # hang; spend that "once" rather than print a false alarm.
        log_once("cpu_warning")
    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="train") as pool:
        futures = {role: pool.submit(jobs[role]) for role in order}
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]
    return {role: futures[role].result() for role in ("original", "encrypted", "inpainter") if role in futures}


def train_run(
    run: str | os.PathLike[str] | Run,
    train_data: str,
    size: int,
    sources: TrainSources = TrainSources(),
    models: ModelSettings = ModelSettings(),
    train_config: TrainConfig = TrainConfig(),
    inpaint_config: InpaintTrainConfig = InpaintTrainConfig(),
    sampling: MaskSampling = MaskSampling(),
    resources: Resources = Resources(),
    retrain: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Train O, E and R (``sources.models``) for a run directory; return each model's final checkpoint meta.

    ``sources.masks`` defaults to the run's ``masks_train/`` pool; ``sources.val_data``
    (held-out metrics per epoch) to the training source's test split;
    ``sources.inpaint_data`` to the training data. ``sources.init_original`` initializes
    *both* recognizers, so O and E still differ only in their training sample, unless
    ``sources.init_encrypted`` gives E its own start. Weights in torchvision's or
    insightface's layout set the architecture (:func:`maskcrypt.models.weights.config_for_weights`).
    """
    paths = Run.open(run).paths
    roles = sources.roles()
    spec = parse_spec(train_data)
    train = source_split(spec, default_split="train", size=size)
    val = source_split(sources.val_data or (spec.held_out() if spec.split in ("", "train")
                                            else spec.with_options(split="val")),
                       default_split="test", size=size)
    if set(np.unique(val.labels)) - set(np.unique(train.labels)) or val.class_names != train.class_names:
        raise MaskcryptError(
            f"--val-data {val.spec.text}: its classes are not the training classes; held-out accuracy needs "
            "images of the training identities (the training source's test split, or its val split under "
            "split_by=identity)"
        )
    pool_uri = sources.masks or str(paths.masks_train)
    pool = _pool(pool_uri, size)
    hashes = {"train_data": train.fingerprint(paths.file_digests), "val_data": val.fingerprint(paths.file_digests),
              "masks": config_hash({"sha256": sorted(pool.sha256)})}
    log(f"training data {labelled(train.spec)} {len(train)} images, {len(train.class_names)} classes; "
        f"held-out {len(val)}; mask pool {pool_uri}: {len(pool)} masks")
    held_out = None
    if paths.masks_heldout.exists():  # figures on masks E never trained with (prepare builds it)
        held_out = _pool(str(paths.masks_heldout), size).masks
        log(f"held-out figures under {len(held_out)} masks of {paths.masks_heldout}, disjoint from the pool")
    inputs = TrainInputs(train, val, hashes, pool.masks, held_out)
    rec = RecognizerConfig(arch=models.arch, num_classes=len(train.class_names), channels=train.channels,
                           image_size=size, width=models.width, depth=tuple(models.depth), head=models.head)
    log = _locked(log)  # models training side by side log from their own threads
    jobs: dict[str, Callable[[], dict[str, Any]]] = {}
    streams = sharding(resources, train) == "stream"
    if "inpainter" in roles:
        r_inputs = inputs
        if sources.inpaint_data:
            r_spec = parse_spec(sources.inpaint_data)
            r_train = source_split(r_spec, default_split="train", size=size, channels=train.channels)
            r_val = source_split(r_spec.with_options(split="test"), default_split="test", size=size,
                                 channels=train.channels) if r_spec.split in ("", "train") else val
            r_inputs = TrainInputs(r_train, r_val, {**hashes, "train_data": r_train.fingerprint(paths.file_digests),
                                                    "val_data": r_val.fingerprint(paths.file_digests)},
                                   pool.masks, held_out)
            streams = streams or sharding(resources, r_train) == "stream"
        inp = InpainterConfig(width=models.inpaint_width, iterations=models.inpaint_iterations,
                              channels=train.channels, image_size=size)
        jobs["inpainter"] = functools.partial(train_model, "inpainter", paths.models, r_inputs, inp.to_dict(),
                                              inpaint_config, resources, None, sources.init_inpainter, retrain,
                                              log=log)
    for role in ("original", "encrypted"):
        if role in roles:
            init, flag = sources.init_original, "--init-original"
            if role == "encrypted" and sources.init_encrypted:
                init, flag = sources.init_encrypted, "--init-encrypted"
            jobs[role] = functools.partial(train_model, role, paths.models, inputs,
                                           _weights_config(rec, init, flag, models.arch, log), train_config,
                                           resources, sampling if role == "encrypted" else None, init, retrain,
                                           log=log, init_flag=flag)
    out = _train_side_by_side(jobs, resources, streams, log)
    if paths.root.exists():
        write_train_record(paths.run_json, out)
    return out
