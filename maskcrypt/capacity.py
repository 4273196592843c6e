"""Capacity: the figures a user needs to size a cluster for a large mask library, measured.

:func:`measure` generates N masks (or copies a library), then, with a recognizer of the
configured architecture (untrained unless ``model`` names a checkpoint: speed does not
depend on the weights, the adaptive race's pruning does) and synthetic test faces at the
same size, runs Table 1 in sampled mode and the adaptive per-mask ranking over every
bucket. It reports masks/s generated, library bytes per mask, forward passes and wall
time per stage, peak driver, actor and object-store memory, masked images/s per
evaluation device, and the projected time of full and adaptive ranking on G devices for
a test set of ``project_images`` (default 13,233: LFW).

:func:`forward_rate` is the bare-forward baseline every throughput figure is compared
with (the same :class:`~maskcrypt.models.predictor.Predictor`, no overlay, pre-built
tensors): used here, by ``benchmarks/`` and by anyone checking a ratio.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcrypt.config import AdaptivePlan, EvalSettings
from maskcrypt.errors import MaskcryptError


def forward_rate(predictor: Any, images: Any, masks: Any = None, seconds: float = 3.0,
                 names: Sequence[str] | None = None) -> float:
    """Images per second of ``predictor.outputs`` on ``images`` (all its models), after one warm-up pass.

    Runs whole passes over ``images`` until ``seconds`` have passed. With ``masks`` None
    and pre-masked ``images`` this is the bare forward: what the evaluator's throughput
    is a ratio of.
    """
    predictor.outputs(images, masks, names=names)  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        predictor.outputs(images, masks, names=names)
        done += len(images) * len(names or predictor.models)
        if time.perf_counter() - t0 >= seconds:
            return done / (time.perf_counter() - t0)


@dataclass(frozen=True)
class CapacityConfig:
    """What the capacity measurement generates and runs (defaults: 100k masks at 112 px)."""

    count: int = 100_000
    size: int = 112
    masks: str = ""  # an existing library to copy in instead of generating
    arch: str = "compact"
    width: int = 32
    model: str = ""  # a trained recognizer checkpoint (folder) instead of untrained weights
    images: int = 400
    repeats: int = 5
    keep: int = 5
    max_rounds: int = 0  # 0 = race to the end; else stop after this many rounds and project the rest
    project_images: int = 13_233
    project_devices: tuple[int, ...] = (1, 8, 64)

    def __post_init__(self) -> None:
        if self.count < 1 or self.images < 2 or self.repeats < 1 or self.keep < 1 or self.max_rounds < 0:
            raise MaskcryptError("capacity: count >= 1, images >= 2, repeats >= 1, keep >= 1, max_rounds >= 0")
        if not self.project_devices or min(self.project_devices) < 1:
            raise MaskcryptError(f"--project-devices: expected device counts >= 1, got {self.project_devices}")


def _model(root: Path, cfg: CapacityConfig, classes: list[str]) -> Path:
    """A checkpoint folder of the configured architecture (untrained), or the given one."""
    if cfg.model:
        return Path(cfg.model).resolve()
    import torch

    from maskcrypt.models import Recognizer
    from maskcrypt.models.checkpoint import save_checkpoint
    from maskcrypt.models.recognizer import RecognizerConfig

    torch.manual_seed(0)
    rc = RecognizerConfig(arch=cfg.arch, width=cfg.width, num_classes=len(classes), image_size=cfg.size)
    meta = {"kind": "recognizer", "role": "capacity", "model_config": dataclasses.asdict(rc),
            "class_names": classes, "image_size": cfg.size, "channels": 3, "epoch": 0}
    save_checkpoint(root / "model" / "checkpoint_epoch_0000", Recognizer(rc).eval(), meta)
    return root / "model"


def _library(out: Path, cfg: CapacityConfig, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into

    lib = MaskLibrary.open_or_create(str(out / "masks"), cfg.size, cfg.size)
    t0 = time.perf_counter()
    if cfg.masks:
        source = MaskLibrary.open(cfg.masks)
        lib.append((b.masks, b.mask_ids, b.sources or [cfg.masks] * len(b)) for b in source.iter_batches())
    else:
        generate_into(lib, cfg.count, seed=0)
    seconds = round(time.perf_counter() - t0, 1)
    disk = sum(p.stat().st_size for p in (out / "masks").rglob("*.parquet"))
    report = {"library_seconds": seconds, "masks": len(lib),
              "masks_per_s_generated": round(len(lib) / max(seconds, 1e-9), 1),
              "library_bytes_per_mask": round(disk / max(len(lib), 1), 1)}
    log(f"library: {len(lib):,} masks at {cfg.size} px in {seconds} s ({report['masks_per_s_generated']:,.0f} "
        f"masks/s), {report['library_bytes_per_mask']} bytes/mask on disk")
    return lib, report


def measure(out: Path, cfg: CapacityConfig = CapacityConfig(), settings: EvalSettings = EvalSettings(),
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate, evaluate, project; returns what ``capacity.json`` holds. Needs a running Ray."""
    from maskcrypt.adaptive import evaluate_adaptive
    from maskcrypt.cluster import require_ray
    from maskcrypt.data import load
    from maskcrypt.evaluate import evaluate_sampled
    from maskcrypt.monitor import PeakRSS
    from maskcrypt.testset import prepare_test

    require_ray("capacity")
    report: dict[str, Any] = {"count": cfg.count, "size": cfg.size, "arch": cfg.arch, "images": cfg.images}
    lib, lib_report = _library(out, cfg, log)
    report |= lib_report
    from maskcrypt.data.synthetic import DEFAULT_IDENTITIES, held_out_spec

    people = DEFAULT_IDENTITIES
    if cfg.model:  # a trained E: its classes are the synthetic identities it was trained on
        from maskcrypt.models.checkpoint import find_checkpoint

        people = len(find_checkpoint(cfg.model, kind="recognizer")[1]["class_names"])
    per_id = max(2, -(-cfg.images // people))
    # Faces no training set renders: a trained E (--model) is measured on images it never saw.
    test = load(f"{held_out_spec(people, per_id)},limit={cfg.images}", size=cfg.size)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
    models = {"E": _model(out, cfg, test.class_names)}
    buckets = sorted({int(b) for b in lib.column("bucket")} - {-1})
    with PeakRSS(object_store=True) as peak:
        t0 = time.perf_counter()
        evaluate_sampled(lib, ts, models, repeats=cfg.repeats, buckets=buckets, settings=settings)
        sampled_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, rounds = evaluate_adaptive(lib, ts, models, buckets, keep=cfg.keep, settings=settings,
                                           plan=AdaptivePlan(), max_rounds=cfg.max_rounds or None)
        adaptive_s = time.perf_counter() - t0
    sampled_passes = (len(buckets) + 1) * cfg.repeats * len(ts)
    adaptive_passes = sum(r["forward_passes"] for r in rounds)
    full_passes = len(lib) * len(ts)
    rate = adaptive_passes / adaptive_s / settings.actors  # per device, start-up of each round included
    finished = not cfg.max_rounds or rounds[-1]["open"] == 0
    report |= {
        "sampled": {"seconds": round(sampled_s, 1), "forward_passes": sampled_passes},
        "adaptive": {"seconds": round(adaptive_s, 1), "forward_passes": adaptive_passes, "rounds": rounds,
                     "finished": finished, "full_forward_passes": full_passes,
                     "reduction": round(full_passes / adaptive_passes, 2)},
        "masked_images_per_s_per_device": round(rate, 1),
        "peak_driver_mb": round(peak.driver_mb), "peak_actor_mb": round(peak.actor_mb),
        "peak_object_store_mb": None if peak.object_store_mb is None else round(peak.object_store_mb, 1),
    }
    log(f"Table 1 sampled: {sampled_passes:,} forward passes in {sampled_s:.1f} s")
    log(f"adaptive ranking: {adaptive_passes:,} forward passes in {adaptive_s:.1f} s over {len(rounds)} rounds"
        + ("" if finished else f" (stopped at --max-rounds {cfg.max_rounds}, {rounds[-1]['open']} masks open)")
        + f"; full mode would need {full_passes:,} ({report['adaptive']['reduction']}x more)")
    log(f"throughput: {rate:,.0f} masked images/s per evaluation device ({settings.actors} actors, "
        f"{settings.gpus_per_actor:g} GPU each); peak RSS driver {peak.driver_mb:.0f} MB, actor {peak.actor_mb:.0f} "
        "MB, object store " + ("not reported by Ray" if peak.object_store_mb is None
                               else f"{peak.object_store_mb:.1f} MB"))
    if not cfg.model:
        log("note: untrained weights score every mask alike, so the adaptive search cannot drop any; pass "
            "--model with a trained E for a realistic reduction")
    reduction = full_passes / adaptive_passes
    projection = []
    for g in cfg.project_devices:
        full_h = len(lib) * cfg.project_images / (rate * g) / 3600
        projection.append({"devices": g, "full_seconds": round(full_h * 3600, 3),
                           "adaptive_seconds": round(full_h * 3600 / reduction, 3)})
        log(f"projection, {len(lib):,} masks x {cfg.project_images:,} images on {g} device(s): full "
            f"{full_h:.2f} h, adaptive ~{full_h / reduction:.2f} h (at this run's reduction)")
    report["projection"] = {"images": cfg.project_images, "rows": projection}
    return report
