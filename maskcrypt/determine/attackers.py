"""The attackers: what a chosen mask really hides, against the attackers a real adversary has.

**Threat model** (docs/determination.md, "What an attacker gets"): the adversary sees
masked images and wants the identity; it may hold an ordinary recognizer, an inpainter,
classical image processing and labelled photos of its own, and may know the mask (the
hole shows in every encrypted image) or only how masks are generated.

**Attackers** (:data:`maskcrypt.config.ATTACKERS`), each a function of (mask, split) ->
counts, measured for every mask the attack stage measures (the ``attack_top`` of each
target bucket) on the selection and confirmation splits:

* ``O`` - O on the masked images (Table 2's ``O_masked``);
* ``R+O`` - R (the run's RFR-Net) inpaints, then O (Table 2's ``O_inpainted``);
* ``telea+O``, ``ns+O`` - OpenCV's Telea / Navier-Stokes inpainting, no training, then O;
* ``adaptive-family`` - the generator is known, the mask is not: one recognizer per run,
  trained from O's weights for ``--attack-epochs`` on the attacker's images masked with
  fresh masks of the target buckets from its own pool ``masks_attacker/`` (E's own
  recipe on the attacker's data); ``adaptive-family+R`` is the same model on R's fill;
* ``adaptive-known`` - the mask is known: per attacked mask a recognizer trained from
  O's weights on the attacker's images under exactly that mask.

Scoring is the determination's: closed set, top-1 against the label; open set, top-1
cosine against gallery centroids, the gallery clean (photos from elsewhere) and, for the
known-mask attacker, also masked with the same mask (``adaptive-known/masked-gallery``).
The worst (most accurate) attacker per (mask, split) is the privacy figure.

The no-training attackers run inside the attack stage's one inference pass
(:meth:`maskcrypt.evaluation.scorer.CrossProductScorer._attack`, via the
:class:`~maskcrypt.models.predictor.Predictor`'s fillers). The adaptive ones train first,
as parallel trials of one Ray Tune run (:func:`train_attackers`), each trial running the
project's one recognizer training step (:class:`maskcrypt.train.loop.RecognizerSteps`,
:func:`maskcrypt.train.loop.train_epoch`) and checkpointing every epoch under
``RUN/models/attackers/<mask_id>/`` (``family/`` for the family model, ``ladder/<N>/`` for
a rung of the attacker ladder, ``linkage/`` for the linkage embedder that never saw a
victim) in the repo's checkpoint format: a relaunch skips complete attackers and resumes
incomplete ones. The table building is pure: :mod:`maskcrypt.selection.attacks`; the
leak guards are :mod:`maskcrypt.determine.guards`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import AttackConfig, PrepareConfig
from maskcrypt.config.runconfig import section
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import channels_last, use_bf16
from maskcrypt.data import labelled
from maskcrypt.determine.guards import check_attacker_overlap, check_attacker_weights
from maskcrypt.determine.jobs import (
    FAMILY,
    LINKAGE,
    folder_name,
    job_state,
    known_mask_job,
    load_attacker_data,
    make_job,
    masks_per_photo,
)
from maskcrypt.evaluation.scorer import choose_device
from maskcrypt.evaluation.testset import LADDER, pixels
from maskcrypt.masks import MaskLibrary
from maskcrypt.masks.pools import attacker_pool
from maskcrypt.models.checkpoint import (
    STATE_FILE,
    find_checkpoint,
    list_checkpoints,
    load_state,
    save_checkpoint,
)
from maskcrypt.models.weights import load_external_weights
from maskcrypt.runtime.cluster import VERBOSE, check_gpus, require_ray
from maskcrypt.selection.ladder import photo_order, rung_rows, rungs
from maskcrypt.train.feed import array_batches, pass_seed, resident
from maskcrypt.train.loop import RecognizerSteps, train_epoch
from maskcrypt.train.progress import EpochPrinter
from maskcrypt.verification.linkage import split_identities


# -- the adaptive attackers: training on Ray Tune ----------------------------------------------------------------
def _save(folder: Path, epoch: int, model: Any, meta: dict[str, Any], state: dict[str, Any], keep: int = 2) -> None:
    """A checkpoint written under a hidden name and renamed; only the newest ``keep`` stay."""
    final = folder / f"checkpoint_epoch_{epoch:04d}"
    tmp = folder / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, model, meta, state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("checkpoint_epoch_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def train_attacker(job: dict[str, Any], data: dict[str, Any]) -> Any:
    """Train (or resume) one attacker; yields each epoch's metrics after its checkpoint is written.

    Runs in a Tune trial (:func:`_trial`) or in process: the model starts from O's
    weights (a classifier of another class count is left fresh), the steps are
    :class:`~maskcrypt.train.loop.RecognizerSteps` of an E-like role (masks drawn per
    sample and epoch from the job's masks), the epochs :func:`~maskcrypt.train.loop.train_epoch`.
    """
    import torch

    device = torch.device(choose_device(job["gpus"], torch.cuda.is_available()))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(job["cpus"])))
    try:  # in process (tests, a notebook) the caller's thread count and random state come back
        with torch.random.fork_rng(devices=[]):
            yield from _train(job, data, device)
    finally:
        torch.set_num_threads(threads)


def _train(job: dict[str, Any], data: dict[str, Any], device: Any) -> Any:
    import torch

    meta = job["meta"]
    tc = meta["train_config"]
    bf16 = use_bf16(tc["precision"], device.type)
    torch.manual_seed(tc["seed"])
    cfg = {"train_config": tc, "role": "encrypted", "k": job["k"], "model_config": meta["model_config"],
           "mask_mode": "random", "masks": job["masks"]}
    steps = RecognizerSteps(cfg, device, bf16)
    if job["init"]:  # O's weights (every attacker but linkage), or the public weights linkage was given
        load_external_weights(steps.model, job["init"], f"attacker {job['name']}: initial weights")
    model = steps.model.to(device)
    if channels_last(device.type, bf16):
        model = model.to(memory_format=torch.channels_last)
    rows = job.get("rows")
    images, labels = pixels(data["images"]), np.asarray(data["labels"])
    if rows is not None:  # a ladder rung's photos (repeated up to the full size), or linkage's identities'
        images, labels = images[rows], labels[rows]
    if job.get("relabel") is not None:  # linkage: its identities' labels as 0..n-1 of its own classifier
        labels = np.asarray(job["relabel"])[labels]
    arrays = resident({"image": images, "label": labels, "item": np.arange(len(labels))}, device)
    batch = tc["batch_size"]
    per_pass = len(labels) // batch
    steps.schedule(per_pass * steps.passes)
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    start, history = 1, []
    mine = [c for c in list_checkpoints(folder) if c[1].get("job_sha256") == meta["job_sha256"]]
    if mine:
        path, _ = mine[-1]
        model.load_state_dict(load_state(path))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        steps.optimizer.load_state_dict(state["optimizer"])
        steps.scheduler.load_state_dict(state["scheduler"])
        start, history = int(state["epoch"]) + 1, list(state.get("history", []))
    for epoch in range(start, steps.epochs + 1):
        stats = train_epoch(steps, model, epoch, per_pass,
                            lambda pass_, read, e=epoch: array_batches(arrays, pass_seed(tc["seed"], e, pass_), batch,
                                                                       per_pass, read=read))
        metrics = {"epoch": epoch, "epochs": steps.epochs, "loss": stats.loss_sum / max(stats.seen, 1),
                   "samples": stats.seen, "steps": per_pass * steps.passes,
                   "images_per_s": stats.seen / max(stats.seconds, 1e-9), "seconds": stats.seconds,
                   "resumed": bool(mine) and epoch == start}
        history.append(metrics)
        _save(folder, epoch, model, {**meta, "epoch": epoch, "epochs": steps.epochs, "metrics": metrics,
                                     "history": history, "precision_used": "bf16" if bf16 else "fp32"},
              {"optimizer": steps.optimizer.state_dict(), "scheduler": steps.scheduler.state_dict(), "epoch": epoch,
               "history": history})
        yield metrics


def _trial(config: dict[str, Any], jobs: dict[str, dict[str, Any]], data: dict[str, Any]) -> None:
    """One Tune trial: one attacker, reported once per epoch."""
    from ray import tune

    for metrics in train_attacker(jobs[config["name"]], data):
        tune.report(metrics)


def auto_trial_cpus(trials: int, cap: int = 8) -> float:
    """CPUs per attacker trial when not set: the cluster's CPUs spread over the trials, within one node.

    A lone trial (the default's family attacker) gets its node's CPUs, up to ``cap``
    (small models gain little beyond that); with more trials than CPUs each gets one, so
    they run side by side. Never more than a node holds: a trial's threads share one process.
    """
    import ray

    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources().get("CPU", 1.0)
    return float(max(1, min(cap, int(max(nodes, default=1.0)), int(total // max(trials, 1)))))


def train_attackers(jobs: dict[str, dict[str, Any]], data: dict[str, Any], storage: Path,
                    config: AttackConfig = AttackConfig(),
                    log: Callable[[str], None] = print) -> tuple[dict[str, Path], dict[str, Any]]:
    """Train the adaptive attackers ``jobs`` as parallel trials of one Ray Tune run; skip complete ones.

    Returns each attacker's model folder and a record (per attacker: ``done``,
    ``resumed`` or ``trained``, its epochs and seconds). An attacker trained from other
    inputs (its job hash differs) is trained again. ``data`` (images and labels) and the
    jobs travel through the object store once (``tune.with_parameters``).
    """
    from ray import tune

    todo, record = {}, {}
    for name, job in jobs.items():
        state, meta = job_state(job)
        if state == "stale":
            log(f"attacker {name}: {job['folder']} was trained from other inputs; training it again")
            shutil.rmtree(job["folder"])
        if state == "done":
            record[name] = {"state": "done", "epochs": meta["epochs"]}
            continue
        todo[name] = job
        record[name] = {"state": "resumed" if state == "resume" else "trained"}
    seconds = 0.0
    if todo:
        require_ray("attacker training")
        check_gpus("--attack-gpus", config.trial_gpus)
        cpus, gpus = config.trial_cpus or auto_trial_cpus(len(todo)), config.trial_gpus
        for job in todo.values():
            job["cpus"], job["gpus"] = cpus, gpus
        log(f"attackers: training {len(todo)} ({', '.join(sorted(todo)[:6])}{' ...' if len(todo) > 6 else ''}) as "
            f"Ray Tune trials of {cpus:g} CPU{f' + {gpus:g} GPU' if gpus else ''} each; "
            f"{len(jobs) - len(todo)} complete already")
        t0 = time.perf_counter()
        shutil.rmtree(storage / "train", ignore_errors=True)
        trainable = tune.with_resources(tune.with_parameters(_trial, jobs=todo, data=data),
                                        {"cpu": cpus, **({"gpu": gpus} if gpus else {})})
        tuner = tune.Tuner(
            trainable, param_space={"name": tune.grid_search(sorted(todo))},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name="train", storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )

        with _quiet(), ExitStack() as printers:  # one line per finished attacker epoch: loss, images/s, ETA
            for name, job in todo.items():
                printers.enter_context(EpochPrinter(Path(job["folder"]), f"attacker {name}", log, interval=2.0))
            grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            cause = errors[0]
            while getattr(cause, "__cause__", None) is not None:
                cause = cause.__cause__
            raise MaskcryptError(f"attacker training: {len(errors)} trial(s) failed, first: {cause}")
        seconds = time.perf_counter() - t0
    folders = {}
    for name, job in jobs.items():
        state, meta = job_state(job)
        if state != "done":
            raise MaskcryptError(f"attacker {name}: no complete checkpoint in {job['folder']} after training")
        folders[name] = Path(job["folder"])
        record[name].update({"epochs": meta["epochs"],
                             "seconds": round(sum(h.get("seconds", 0.0) for h in meta.get("history", [])), 1)})
    return folders, {"attackers": record, "seconds": round(seconds, 1), "trials": len(todo)}


def _quiet() -> Any:
    """Tune prints an experiment box and paths on stdout even at verbose=0: kept out unless MASKCRYPT_VERBOSE."""
    return contextlib.nullcontext() if os.environ.get(VERBOSE) else contextlib.redirect_stdout(io.StringIO())


# -- the determination's stage --------------------------------------------------------------------------------
def attacker_spec(d: Any) -> str:
    """``--attacker-data``, or the run's training data (train split): the worst case."""
    return d.attack.data or d.run.data


def family_masks(d: Any, buckets: Sequence[int]) -> np.ndarray:
    """Fresh masks of ``buckets`` from the attackers' pool ``masks_attacker/`` (built here for older runs)."""
    if d.paths.masks_attacker.exists():
        pool = MaskLibrary.open(str(d.paths.masks_attacker))
    else:
        recorded = d.run.recorded("prepare")
        known = set(PrepareConfig.__dataclass_fields__)
        pool = attacker_pool(d.paths, section(PrepareConfig, {k: v for k, v in recorded.items() if k in known},
                                              "run.json prepare"), d.log)
    masks = pool.load(list(buckets)).masks
    if len(masks) == 0:
        raise MaskcryptError(f"{d.paths.masks_attacker}: no mask in the target buckets {list(buckets)} "
                             "(--attacker-mask-count)")
    return masks


def pool_source(record: dict[str, Any], buckets: Sequence[int]) -> dict[str, Any]:
    """Where the family attacker's masks of ``buckets`` come from: the imported selection library's held-out share
    (``from_library``) or the generator (``generated``), as ``prepare`` recorded it."""
    imported = (record.get("prepare") or {}).get("selection_masks") or ""
    info = (record.get("inputs") or {}).get("masks_attacker") or {}
    from_library = set(info.get("from_library") or [])
    return {"selection_masks": imported, "from_library": [int(b) for b in buckets if b in from_library],
            "generated": [int(b) for b in buckets if b not in from_library]}


def ladder_jobs(d: Any, family: dict[str, Any], data: dict[str, Any], o_ckpt: Path,
                o_meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The attacker ladder's rungs below ``all`` (``ladder:<photos>``): the family attacker's job on the first N
    photos of the stratified order, repeated up to the full size (the same steps); ``all`` is the family itself.
    Records the rungs in ``d.result["attack"]["ladder"]``."""
    total = len(data["labels"])
    sizes = rungs(d.attack.rungs(), total)
    if not sizes:
        return {}
    seed = int(o_meta["train_config"]["seed"])
    order = photo_order(data["labels"], seed)
    jobs = {}
    for photos in sizes:
        if 0 < photos < total:
            jobs[f"{LADDER}{photos}"] = make_job(
                f"{LADDER}{photos}", d.paths.attackers / "ladder" / str(photos), family["masks"], family["k"], o_ckpt,
                o_meta, data, d.attack.epochs, {"buckets": family["meta"]["buckets"], "photos": photos},
                rows=rung_rows(order, photos, total))
    d.result["attack"]["ladder"] = {"rungs": sizes, "photos_total": total, "seed": seed,
                                    "identities": len(np.unique(data["labels"]))}
    return jobs


def linkage_job(d: Any, data: dict[str, Any], masks: np.ndarray, k: int, o_ckpt: Path,
                o_meta: dict[str, Any]) -> dict[str, Any] | None:
    """The linkage embedder's training: the family recipe on the photos of the attacker identities only.

    The victims are a seeded share (``--linkage-victims``) of the test identities; the
    attacker identities are the attacker data's identities that are not victims. The
    model starts from random weights or ``--attacker-weights`` (never O's: O saw the
    victims) with a classifier over the attacker identities. Returns None, with the
    reason in ``d.result["attack"]["linkage"]``, when either side has fewer than two
    identities.
    """
    weights = d.attack.attacker_weights
    init = check_attacker_weights(weights, d.paths.models) if weights else None
    test_names = [str(d.test.classes[i]) for i in np.unique(d.test.labels)]
    seed = int(o_meta["train_config"]["seed"])
    victims, _ = split_identities(test_names, d.attack.linkage_victims, seed)
    names = [str(c) for c in data["class_names"]]
    mine = {names[i] for i in np.unique(data["labels"])}
    present = sorted(mine - set(victims))
    # Victims leave the attacker's photos by name: that works only where the two sources name people alike.
    shared = len(mine & set(test_names))
    info: dict[str, Any] = {"victims": victims, "attacker_identities": len(present), "seed": seed,
                            "init": weights or "random", "init_sha256": init["sha256"] if init else None,
                            "epochs": d.attack.linkage_epochs, "excluded_by_name": len(mine & set(victims)),
                            "names_shared": shared}
    if not shared:
        info["name_exclusion"] = (f"not applicable: none of the attacker data's {len(mine)} identity names is a test "
                                  "identity's name, so no victim could be excluded by name (content overlap is still "
                                  "refused)")
        d.log(f"linkage: {info['name_exclusion']}")
    d.result["attack"]["linkage"] = info
    if len(victims) < 2 or len(present) < 2:
        info["skipped"] = (f"too few identities for both sides: {len(victims)} victim(s) among the "
                           f"{len(test_names)} test identities and {len(present)} other identities in the attacker's "
                           "data (linkage needs two or more of each)")
        d.log(f"linkage: skipped, {info['skipped']}")
        return None
    where = {n: i for i, n in enumerate(present)}
    relabel = np.asarray([where.get(n, -1) for n in names], np.int64)
    rows = np.flatnonzero(relabel[np.asarray(data["labels"])] >= 0)
    info["photos"] = len(rows)
    view = {"labels": relabel[np.asarray(data["labels"])[rows]], "class_names": present, "spec": data["spec"],
            "sha256": data["sha256"]}
    job = make_job(LINKAGE, d.paths.attackers / LINKAGE, masks, k, o_ckpt, o_meta, view, d.attack.linkage_epochs,
                   {"victims": victims, "photos": len(rows)}, rows=rows, init=d.attack.attacker_weights or None)
    job["relabel"] = relabel
    return job


def train_for(d: Any, alist: pd.DataFrame) -> dict[str, Path]:
    """Train the adaptive attackers the run asks for (``d.attack``) for the attack list; their model folders.

    ``family`` for ``adaptive-family``/``adaptive-family+R`` (masks of the attacked
    buckets from ``masks_attacker/``, K per image as E's sample), one folder per mask for
    ``adaptive-known`` (K copies of its one mask per image: the same optimizer steps as the
    family attacker, so the two differ only in what they know of the mask). Records the
    settings and each attacker's state in ``d.result["attack"]``.
    """
    kinds = d.attack.trained
    d.result["attack"] = {"attackers": list(d.attack.names()), "epochs": d.attack.epochs}
    if not kinds or alist.empty:
        return {}
    t0 = time.perf_counter()
    o_ckpt, o_meta = find_checkpoint(d.paths.models / "original", kind="recognizer")
    _, e_meta = find_checkpoint(d.paths.models / "encrypted", kind="recognizer")
    data = load_attacker_data(attacker_spec(d), o_meta, d.test.scoring, d.paths.file_digests)
    d.result["attack"]["data_overlap"] = check_attacker_overlap(data, d.test_digests(), d.test_spec)
    jobs: dict[str, dict[str, Any]] = {}
    buckets = sorted(int(b) for b in alist["bucket"].unique())
    k = masks_per_photo(e_meta)
    if "family" in kinds or "linkage" in kinds:
        masks = family_masks(d, buckets)
        d.result["attack"]["pool"] = pool_source(d.run.record, buckets)
    if "family" in kinds:
        jobs[FAMILY] = make_job(FAMILY, d.paths.attackers / FAMILY, masks, k, o_ckpt, o_meta, data, d.attack.epochs,
                                {"buckets": buckets})
        jobs.update(ladder_jobs(d, jobs[FAMILY], data, o_ckpt, o_meta))
    if "linkage" in kinds:
        job = linkage_job(d, data, masks, k, o_ckpt, o_meta)
        if job is not None:
            jobs[LINKAGE] = job
    if "known" in kinds:
        batch = d.library.get(alist["mask_id"].tolist())
        for mid, mask in zip(batch.mask_ids, batch.masks):
            jobs[mid] = known_mask_job(mid, d.paths.attackers / folder_name(mid), mask, k, o_ckpt, o_meta, data,
                                       d.attack.epochs)
    d.log(f"attacker data {labelled(data['spec'])} {len(data['labels'])} images of {len(set(data['labels'].tolist()))} "
          f"identities; {len(jobs)} adaptive attacker(s), {d.attack.epochs} epoch(s) each")
    folders, record = train_attackers(jobs, {"images": data["images"], "labels": data["labels"]},
                                      d.paths.attackers / ".tune", d.attack, d.log)
    d.result["attack"].update({"data": data["spec"], "data_sha256": data["sha256"], "data_images": len(data["labels"]),
                               "training": record})
    d.timings["attackers_train"] = time.perf_counter() - t0
    done = sum(r["state"] == "done" for r in record["attackers"].values())
    d.log(f"attackers: {len(jobs)} ready in {d.timings['attackers_train']:.1f}s ({done} complete from an earlier "
          f"run, {record['trials']} trained)")
    return folders
