"""Capacity: the figures a user needs to size a cluster for a large mask library, measured.

:func:`measure` generates N masks (or copies a library), then, with a recognizer E and test
faces at E's size, runs the configured ``stages``: reading the whole library back (decode
and unpack in one process), Table 1 in sampled mode, and the adaptive per-mask ranking over
every bucket. E and the faces come from one of three places: a trained run (``run``: its E,
its test split scored as its determination scores it, its ``attack_top``, and by default its
own library), a checkpoint with the user's test data (``model`` and ``determine``, scored as
``maskcrypt determine`` would with the same flags), or, by default, synthetic held-out faces
(E untrained unless ``model`` names a checkpoint: speed does not depend on the weights, the
adaptive race's pruning does). It reports masks/s generated and read, library bytes per
mask, forward passes and wall time per stage, peak driver, actor and object-store memory,
masked images/s per evaluation device, and the projected time of full (and, when the race
ran, adaptive) ranking on G devices for a test set of ``project_images`` (default 13,233:
LFW). Leaving the race out lets a CPU machine measure the cheap stages of a library whose
race needs GPUs; the projection then rests on Table 1's rate, which runs on the same actors.

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

from maskcrypt.config import AdaptivePlan, DetermineConfig, EvalSettings, ModelSettings
from maskcrypt.config.thresholds import Thresholds
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import write_parquet
from maskcrypt.core.precision import use_bf16
from maskcrypt.core.rundir import Run
from maskcrypt.data import load
from maskcrypt.data.synthetic import DEFAULT_IDENTITIES, held_out_spec
from maskcrypt.determine.inputs import load_test, recorded_determination
from maskcrypt.determine.race import evaluate_adaptive
from maskcrypt.evaluation.crossproduct import evaluate_sampled
from maskcrypt.evaluation.scorer import choose_device
from maskcrypt.evaluation.testset import TestSet, pixels, prepare_test
from maskcrypt.masks import MaskLibrary, overlay
from maskcrypt.masks.generate import generate_into
from maskcrypt.models import Recognizer
from maskcrypt.models.checkpoint import find_checkpoint, save_checkpoint
from maskcrypt.models.predictor import Predictor
from maskcrypt.models.recognizer import RecognizerConfig
from maskcrypt.runtime.cluster import require_ray, wait_for_free_cpu
from maskcrypt.runtime.monitor import PeakRSS
from maskcrypt.selection.race import full_mode_passes, versus_full


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


#: What :func:`measure` can run after building the library, in this order.
STAGES = ("read", "table1", "race")
#: What is measured when neither a run, a model nor a library says otherwise.
DEFAULT_COUNT, DEFAULT_SIZE, DEFAULT_KEEP = 100_000, 112, 5
#: The race's per-mask counts in the output folder, beside capacity.json.
RACE_COUNTS = "race_counts.parquet"


def _default_width() -> int:
    return ModelSettings().width


@dataclass(frozen=True)
class CapacityConfig:
    """What the capacity measurement builds, scores it on and runs (defaults: 100k masks at 112 px, synthetic faces)."""

    count: int = 0  # masks to generate; 0 = DEFAULT_COUNT, or with ``run`` and no ``masks`` the run's own library
    size: int = 0  # image and mask size; 0 = E's (``run`` or ``model``), else the copied library's, else DEFAULT_SIZE
    masks: str = ""  # an existing library to copy in instead of generating
    arch: str = "compact"
    width: int = dataclasses.field(default_factory=_default_width)  # the pipeline's recognizer width
    model: str = ""  # a trained recognizer checkpoint (folder) instead of untrained weights
    run: str = ""  # a trained run: its E, its test split scored as its determination does, its attack_top
    determine: DetermineConfig | None = None  # with ``model``: the test data and its scoring, as determine's flags
    images: int = 400  # synthetic test faces; with a real test set, the images of the bare-forward baseline
    repeats: int = 5
    keep: int = 0  # masks the race keeps per bucket; 0 = the run's attack_top with ``run``, else DEFAULT_KEEP
    max_rounds: int = 0  # 0 = race to the end; else stop after this many rounds and project the rest
    first: int = AdaptivePlan.first  # the race's first step: test images every mask sees in round 1 (0 = auto)
    stages: tuple[str, ...] = STAGES
    project_images: int = 13_233
    project_devices: tuple[int, ...] = (1, 8, 64)

    def __post_init__(self) -> None:
        if min(self.count, self.size, self.keep, self.max_rounds) < 0 or self.images < 2 or self.repeats < 1:
            raise MaskcryptError("capacity: count >= 0, size >= 0, images >= 2, repeats >= 1, keep >= 0, "
                                 "max_rounds >= 0")
        if self.first < 0:
            raise MaskcryptError(f"--first: expected images >= 0 for the race's first round (0 = auto), got "
                                 f"{self.first}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages or len(set(self.stages)) != len(self.stages):
            raise MaskcryptError(f"--stages: expected distinct names from {', '.join(STAGES)}, got "
                                 f"{','.join(self.stages) or 'none'}")
        if not self.project_devices or min(self.project_devices) < 1:
            raise MaskcryptError(f"--project-devices: expected device counts >= 1, got {self.project_devices}")
        test_flags = "--test-data, --scoring, --enroll, --confirm-fraction"
        if self.run and self.model:
            raise MaskcryptError("--model: with --run, E is the run's (RUN/models/encrypted); give --run or --model")
        if self.run and self.determine is not None:
            raise MaskcryptError(f"{test_flags}: with --run, the test set and its scoring are those of the run's "
                                 "determination; give them with --model instead")
        if self.determine is not None and not self.determine.test_data:
            raise MaskcryptError("--scoring, --enroll, --confirm-fraction: expected --test-data with them (the "
                                 "synthetic faces are E's own classes, scored closed set)")
        if self.determine is not None and not self.model:
            raise MaskcryptError("--test-data: expected --model too, the trained E that scores it (or --run, a "
                                 "run's E and test split)")


@dataclass(frozen=True)
class Inputs:
    """What a measurement runs on, resolved from its config and checked before any library or Ray work."""

    size: int
    count: int  # masks to generate (0 when ``source`` is copied)
    source: Any  # the MaskLibrary copied in, or None
    model: Path | None  # E's folder; None = untrained weights of the configured architecture
    meta: dict[str, Any]  # E's checkpoint metadata ({} untrained)
    test: DetermineConfig | None  # how the test data is split and scored; None = synthetic held-out faces
    spec: str  # the test data ("" for synthetic faces)
    keep: int


def resolve(cfg: CapacityConfig, log: Callable[[str], None] = print) -> Inputs:
    """E, the test data and its scoring, the race's keep, the library and the size, from ``cfg`` (and its run).

    With ``cfg.run`` everything is the run's determination's, read from ``run.json``, so the
    race measures what the determination's race measures; a run not determined yet is
    scored as ``maskcrypt determine`` would score it by default (said in the log). Reads
    only small files: a wrong run, E, size or library fails here, before the library is
    built or Ray starts.
    """
    model = Path(cfg.model).resolve() if cfg.model else None
    test, keep, library = cfg.determine, cfg.keep or DEFAULT_KEEP, cfg.masks
    spec = test.test_data if test else ""
    if cfg.run:
        run = Run.open(cfg.run)
        if not run.root.is_dir():
            raise MaskcryptError(f"--run {run.root}: no such directory (expected a run trained by maskcrypt train)")
        model = run.paths.models / "encrypted"
        recorded = recorded_determination(run)
        if recorded is None:
            log(f"run {run.root}: not determined yet: its test split is scored as a determination with the default "
                f"settings would score it, and the race keeps {cfg.keep or Thresholds().attack_top} per bucket")
        test, thresholds = recorded or (DetermineConfig(), Thresholds())
        spec, keep = test.test_data or run.data, cfg.keep or thresholds.attack_top
        library = library or ("" if cfg.count else str(run.paths.masks))
    meta: dict[str, Any] = {}
    if model is not None:
        try:
            meta = find_checkpoint(model, kind="recognizer")[1]
        except MaskcryptError as exc:
            raise MaskcryptError(f"--run {cfg.run}: expected a trained E ({exc})" if cfg.run
                                 else f"--model: {exc}") from None
    try:
        source = MaskLibrary.open(library) if library else None
    except MaskcryptError as exc:
        raise MaskcryptError(f"--masks: {exc}") from None
    size = cfg.size or (int(meta["image_size"]) if meta else source.height if source is not None else DEFAULT_SIZE)
    if meta and int(meta["image_size"]) != size:
        raise MaskcryptError(f"--size {size}: E ({model}) takes {meta['image_size']} px images (leave --size out "
                             "to use E's)")
    if source is not None and (source.height, source.width) != (size, size):
        raise MaskcryptError(f"--masks {library}: holds {source.height}x{source.width} masks, expected {size}x{size} "
                             "(the test images' size)")
    return Inputs(size, 0 if source is not None else cfg.count or DEFAULT_COUNT, source, model, meta, test, spec, keep)


def _untrained(root: Path, cfg: CapacityConfig, size: int, classes: list[str]) -> Path:
    """A checkpoint folder of the configured architecture with untrained weights."""
    import torch

    torch.manual_seed(0)
    rc = RecognizerConfig(arch=cfg.arch, width=cfg.width, num_classes=len(classes), image_size=size)
    meta = {"kind": "recognizer", "role": "capacity", "model_config": dataclasses.asdict(rc),
            "class_names": classes, "image_size": size, "channels": 3, "epoch": 0}
    save_checkpoint(root / "model" / "checkpoint_epoch_0000", Recognizer(rc).eval(), meta)
    return root / "model"


def _library(out: Path, inputs: Inputs, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The measured library under ``out/masks``: the source copied (its bucket edges kept), or generated."""
    source = inputs.source
    lib = MaskLibrary.open_or_create(str(out / "masks"), inputs.size, inputs.size,
                                     **({"edges": source.edges} if source is not None else {}))
    t0 = time.perf_counter()
    if source is not None:
        lib.append((b.masks, b.mask_ids, b.sources or [source.uri] * len(b)) for b in source.iter_batches())
    else:
        generate_into(lib, inputs.count, seed=0)
    seconds = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in (out / "masks").rglob("*.parquet"))
    report = {"library": source.uri if source is not None else "generated", "library_seconds": round(seconds, 1),
              "masks": len(lib), "masks_per_s_generated": round(len(lib) / max(seconds, 1e-9), 1),
              "library_bytes_per_mask": round(disk / max(len(lib), 1), 1)}
    log(f"library: {len(lib):,} masks at {inputs.size} px "
        + (f"copied from {source.uri} " if source is not None else "")
        + f"in {seconds:.1f} s ({report['masks_per_s_generated']:,.0f} masks/s), {report['library_bytes_per_mask']} "
        "bytes/mask on disk")
    return lib, report


def _read_back(lib: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Read every mask back (Parquet decode + bit unpack, one process): the library's read rate."""
    t0, n, nbytes = time.perf_counter(), 0, 0
    for batch in lib.iter_batches():
        n += len(batch)
        nbytes += batch.masks.nbytes
    seconds = time.perf_counter() - t0
    report = {"library_read_seconds": round(seconds, 3),
              "masks_per_s_read": round(n / max(seconds, 1e-9), 1),
              "read_unpacked_mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 1)}
    log(f"library read back: {n:,} masks in {seconds:.1f} s ({report['masks_per_s_read']:,.0f} masks/s, "
        f"{report['read_unpacked_mb_per_s']:,.0f} MB/s unpacked)")
    return report


def measure(out: Path, cfg: CapacityConfig = CapacityConfig(), settings: EvalSettings = EvalSettings(),
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the library, run ``cfg.stages``, project; returns what ``capacity.json`` holds.

    Table 1 and the race need a running Ray; the library and its read-back do not. The
    test set is loaded before the library is built, so that bad test data fails first.
    """
    inputs = resolve(cfg, log)
    evaluates = [s for s in cfg.stages if s != "read"]
    if evaluates:

        require_ray("capacity")
    report: dict[str, Any] = {"count": inputs.count, "size": inputs.size, "arch": cfg.arch, "width": cfg.width,
                              "model": None if inputs.model is None else str(inputs.model), "run": cfg.run or None,
                              "images": cfg.images, "stages": list(cfg.stages)}
    if evaluates:

        # Resolved here for CPU actors (this CPU's kind); GPU actors resolve "auto" on their GPU.
        report["precision"] = (settings.precision if settings.gpus_per_actor > 0
                               else "bf16" if use_bf16(settings.precision, "cpu") else "fp32")
    with PeakRSS(object_store=bool(evaluates)) as peak:
        if evaluates:
            ts, model, test_report = _test_set(out, cfg, inputs, log)
            report |= test_report
        lib, lib_report = _library(out, inputs, log)
        report |= lib_report
        if "read" in cfg.stages:
            report |= _read_back(lib, log)
        rate = None
        if evaluates:
            report |= _evaluate(out, cfg, settings, inputs.keep, lib, ts, model, log)
            rate = report["masked_images_per_s_per_device"]
    report |= {"peak_driver_mb": round(peak.driver_mb),
               "peak_actor_mb": round(peak.actor_mb) if evaluates else None,
               "peak_object_store_mb": None if peak.object_store_mb is None else round(peak.object_store_mb, 1)}
    bare = report.get("bare_forward_per_s")
    if bare is not None:
        report["vs_bare_forward"] = round(rate / bare, 2)
        log(f"bare forward of E per device ({settings.actors} tasks with an actor's resources): {bare:,.0f} "
            f"images/s; the evaluator reaches {report['vs_bare_forward']}x of it")
    if evaluates:
        log(f"throughput: {rate:,.0f} masked images/s per evaluation device ({settings.actors} actors, "
            f"{settings.gpus_per_actor:g} GPU each, {report['precision']}, {report['rate_from']}); peak RSS driver "
            f"{peak.driver_mb:.0f} MB, actor {peak.actor_mb:.0f} MB, object store " + (
                "not reported by Ray" if peak.object_store_mb is None else f"{peak.object_store_mb:.1f} MB"))
    else:
        log(f"peak RSS driver {peak.driver_mb:.0f} MB")
    if "race" in cfg.stages and inputs.model is None:
        log("note: untrained weights score every mask alike, so the adaptive search cannot drop any; pass "
            "--run or --model with a trained E for a realistic reduction")
    if rate is None:
        return report
    # An unfinished race's reduction is that of its first rounds only: no adaptive projection rests on it.
    race = report.get("adaptive")
    reduction = race["reduction"] if race and race["finished"] else None
    if race and not race["finished"]:
        log(f"adaptive: not projected (the race stopped after {len(race['rounds'])} round(s), before its "
            "reduction was known)")
    projection = []
    for g in cfg.project_devices:
        full_h = len(lib) * cfg.project_images / (rate * g) / 3600
        projection.append({"devices": g, "full_seconds": round(full_h * 3600, 3),
                           "adaptive_seconds": None if reduction is None else round(full_h * 3600 / reduction, 3)})
        log(f"projection, {len(lib):,} masks x {cfg.project_images:,} images on {g} device(s): full {full_h:.2f} h"
            + ("" if reduction is None else f", adaptive ~{full_h / reduction:.2f} h (at this run's reduction)"))
    report["projection"] = {"images": cfg.project_images, "rate_from": report["rate_from"], "rows": projection}
    return report


def _bare_task(model: str, images: Any, mask: Any, precision: str, chunk: int, gpus: float) -> float:
    """One evaluation device's bare forward of E (run as a Ray task with an actor's resources)."""
    import torch

    predictor = Predictor.from_checkpoint(model, choose_device(gpus, torch.cuda.is_available()), precision, chunk)
    return forward_rate(predictor, predictor.to_device(overlay(torch.from_numpy(pixels(images)),
                                                               torch.from_numpy(mask))))


def _bare_rate(model: Path, ts: TestSet, images: int, lib: Any, settings: EvalSettings) -> float:
    """E's bare forward per device on pre-masked test faces: what the evaluator's rate is a ratio of.

    Measured as ``settings.actors`` concurrent Ray tasks with an actor's CPUs and GPUs, so the
    baseline runs where and as the evaluator's actors do (one thread per CPU, the same
    device, precision and chunk); the mean of the tasks.
    """
    import ray

    mask = next(lib.iter_batches(batch_size=1)).masks[0]
    task = ray.remote(_bare_task).options(num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor)
    wait_for_free_cpu()
    # The first ``images`` faces: enough for a steady rate, few enough that a large test set stays in the store.
    rates = ray.get([task.remote(str(model), ts.images[:images], mask, settings.precision, settings.images_per_chunk,
                                 settings.gpus_per_actor) for _ in range(settings.actors)])
    return sum(rates) / len(rates)


def _test_set(out: Path, cfg: CapacityConfig, inputs: Inputs,
              log: Callable[[str], None]) -> tuple[TestSet, Path, dict[str, Any]]:
    """The test set, E's folder, and what capacity.json records of the test set.

    A run's or the user's test data is loaded and split by the determination's own loader
    (:func:`~maskcrypt.determine.inputs.load_test`), so the race probes the images the
    determination's race probes and the record carries the same ``test_data``,
    ``test_data_fingerprint`` and ``scoring``. Otherwise: synthetic held-out faces.
    """
    if inputs.test is not None and inputs.model is not None:
        loaded = load_test(inputs.spec, inputs.meta, inputs.test, out / "cache" / "files.parquet", log)
        return loaded.test, inputs.model, {k: v for k, v in loaded.key.items() if k != "size"}
    # Faces no training set renders, of E's classes (--model: the synthetic identities it was trained on), so a
    # trained E is measured on images it never saw.
    people = len(inputs.meta["class_names"]) if inputs.meta else DEFAULT_IDENTITIES
    per_id = max(2, -(-cfg.images // people))
    spec = f"{held_out_spec(people, per_id)},limit={cfg.images}"
    test = load(spec, size=inputs.size)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
    model = inputs.model or _untrained(out, cfg, inputs.size, test.class_names)
    return ts, model, {"test_data": spec, "test_data_fingerprint": None, "scoring": ts.scoring}


def _evaluate(out: Path, cfg: CapacityConfig, settings: EvalSettings, keep: int, lib: Any, ts: TestSet, model: Path,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Table 1 (sampled) and/or the race on ``ts``, through the evaluator's actors; the race's counts written."""
    models = {"E": model}
    probes, gallery = ts.probes("selection"), int(ts.gallery.sum()) if ts.scoring == "open" else 0
    buckets = sorted({int(b) for b in lib.column("bucket")} - {-1})
    report: dict[str, Any] = {}
    if "table1" in cfg.stages:
        t0 = time.perf_counter()
        evaluate_sampled(lib, ts, models, repeats=cfg.repeats, buckets=buckets, settings=settings)
        seconds = time.perf_counter() - t0
        # Every bucket's repetitions, and the clean row once (it does not depend on a draw).
        passes = (len(buckets) * cfg.repeats + 1) * (probes + gallery)
        report["sampled"] = {"seconds": round(seconds, 1), "forward_passes": passes}
        report |= {"masked_images_per_s_per_device": round(passes / seconds / settings.actors, 1),
                   "rate_from": "Table 1"}
        log(f"Table 1 sampled: {passes:,} forward passes in {seconds:.1f} s")
    if "race" in cfg.stages:
        t0 = time.perf_counter()
        counts, rounds = evaluate_adaptive(lib, ts, models, buckets, keep=keep, settings=settings,
                                           plan=AdaptivePlan(first=cfg.first), max_rounds=cfg.max_rounds or None)
        seconds = time.perf_counter() - t0
        # Per mask: n of the selection probes seen (all of them for the masks the race completed), E's counts.
        write_parquet(counts[["mask_id", "bucket", "n", "correct_E", "score_E", "rounds"]], out / RACE_COUNTS)
        passes = sum(r["forward_passes"] for r in rounds)
        full = full_mode_passes(len(lib), probes, gallery, masked_models=1, clean_models=0, actors=settings.actors)
        finished = rounds[-1]["open"] == 0
        report["adaptive"] = {"seconds": round(seconds, 1), "forward_passes": passes, "rounds": rounds,
                              "finished": finished, "full_forward_passes": full,
                              "reduction": round(full / passes, 2), "keep": keep,
                              "probes": ts.probes("selection"), "counts": RACE_COUNTS}
        # The race's rate is the one a user's ranking runs at: it supersedes Table 1's.
        report |= {"masked_images_per_s_per_device": round(passes / seconds / settings.actors, 1),
                   "rate_from": "the race"}
        log(f"adaptive ranking: {passes:,} forward passes in {seconds:.1f} s over {len(rounds)} rounds, {keep} kept "
            "per bucket"
            + ("" if finished else f" (stopped at --max-rounds {cfg.max_rounds}, {rounds[-1]['open']} masks open)")
            + f"; full mode would need {full:,} (the race: {versus_full(full, passes)}); counts: {out / RACE_COUNTS}")
    report["bare_forward_per_s"] = round(_bare_rate(model, ts, cfg.images, lib, settings), 1)
    return report
