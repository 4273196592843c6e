"""Every setting of a run, section by section, as frozen dataclasses whose defaults are the embedded defaults.

Each section validates its own fields once, in ``__post_init__``; the whole run's config
(:class:`maskcrypt.config.runconfig.RunConfig`) assembles them and reads YAML files.

``TrainConfig`` is the one hyperparameter set that trains *both* recognizers: the
method requires E to be trained "with exactly the same hyperparameters and the same
number of epochs as O". Mask sampling for E lives outside it, so the object itself is
identical; each checkpoint stores its hash, and loading O and E as a pair with
different hashes is refused (:func:`check_same_training`).

The selection thresholds are :class:`maskcrypt.config.thresholds.Thresholds`; the serving
config (:class:`maskcrypt.serving.requests.ServiceConfig`) lives beside the code it parameterizes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import check_precision

ROLES = ("original", "encrypted", "inpainter")
STAGES = ("prepare", "train", "determine", "tune")


# -- prepare ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareConfig:
    """Inputs of a run. Defaults are the embedded laptop defaults (synthetic faces, 32 px)."""

    data: str = "synthetic:"
    size: int = 32
    mask_count: int = 600
    mask_seed: int = 0
    train_mask_count: int = 120
    train_mask_seed: int = 1
    #: E's per-epoch held-out figure uses masks from neither library (sha256-disjoint from both).
    heldout_mask_count: int = 60
    heldout_mask_seed: int = 2
    #: The attackers' own pool (``masks_attacker/``): the adaptive-family attacker trains with fresh masks of
    #: the target buckets from it; sha256-disjoint from every other pool.
    attacker_mask_count: int = 120
    attacker_mask_seed: int = 3
    buckets: str = "1-6"
    #: An existing library (e.g. imported NVIDIA masks) copied in as the selection library
    #: instead of generating ``mask_count`` masks; "" = generate.
    selection_masks: str = ""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise MaskcryptError(f"--size: expected at least 8 pixels, got {self.size}")
        if self.mask_count < 1 or self.train_mask_count < 2:
            raise MaskcryptError(
                "mask counts: expected at least 1 selection mask and 2 training masks, got "
                f"{self.mask_count} and {self.train_mask_count}"
            )
        seeds = (self.mask_seed, self.train_mask_seed, self.heldout_mask_seed, self.attacker_mask_seed)
        if len(set(seeds)) < 4:
            raise MaskcryptError("mask seeds: the selection library, E's training pool, the held-out pool and the "
                                 f"attackers' pool need different seeds, got {', '.join(map(str, seeds))}")
        if self.heldout_mask_count < 1:
            raise MaskcryptError(f"--heldout-mask-count: expected at least 1, got {self.heldout_mask_count}")
        if self.attacker_mask_count < 1:
            raise MaskcryptError(f"--attacker-mask-count: expected at least 1, got {self.attacker_mask_count}")


# -- train -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters of a recognizer (O and E share one instance)."""

    #: 7 on the embedded default (50 images per person): more images and fewer epochs than 30 x 12 at about the
    #: same compute; with label smoothing E 81.7% under (0.5,0.6] against 70.2% (docs/benchmarks.md, "E's
    #: training recipe").
    epochs: int = 7
    batch_size: int = 128  # global, over all workers
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant, in epochs
    warmup_epochs: float = 1.0
    #: 0.1: O and E alike (the method trains both the same way); E held 5 points more under (0.5,0.6] with it.
    label_smoothing: float = 0.1
    augment: str = "flip"  # flip | none
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise MaskcryptError(f"--epochs: expected at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise MaskcryptError(f"--batch-size: expected at least 2, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise MaskcryptError(f"--optimizer: expected sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise MaskcryptError(f"--schedule: expected cosine, step or constant, got {self.schedule!r}")
        if self.augment not in ("flip", "none"):
            raise MaskcryptError(f"--augment: expected flip or none, got {self.augment!r}")
        check_precision(self.precision)
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise MaskcryptError("train config: lr must be > 0, weight_decay >= 0, label_smoothing in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a checkpoint's record (fields added later take their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def sha256(self) -> str:
        """Hash of every field: equal hashes mean identical hyperparameters."""
        return config_hash(self.to_dict())


@dataclass(frozen=True)
class InpaintTrainConfig:
    """R's training hyperparameters (RFR-Net: Adam 2e-4, then a BN-frozen fine-tune at 5e-5)."""

    #: 3 on the embedded default (3,520 training faces): about the images of 6 epochs over the earlier 1,920.
    #: On one core of the 2-core default machine R's image costs ~5x one of E, so R's epochs set its share of
    #: the training time (docs/benchmarks.md, "The embedded default": the stage table).
    epochs: int = 3
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
        check_precision(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
class ModelSettings:
    """Architectures of the three models (the recognizers share one)."""

    arch: str = "compact"
    #: compact only. 16 on the embedded default: 2.4x the forward and the training rate of width 32 on one
    #: CPU thread (docs/benchmarks.md, "CPU layout"), for E a few points lower under large masks.
    width: int = 16
    depth: tuple[int, ...] = (1, 1, 1, 1)
    head: str = "softmax"
    inpaint_width: int = 16
    inpaint_iterations: int = 3

    def __post_init__(self) -> None:
        if len(self.depth) != 4 or min(self.depth) < 1:
            raise MaskcryptError(f"--depth: expected 4 blocks-per-stage counts >= 1 like 1,1,1,1, got {self.depth}")


@dataclass(frozen=True)
class Resources:
    """Where training runs: Ray Train workers and what each one gets.

    One worker per model by default: on the 2-core default machine two models training
    side by side (one core each) finish sooner than one model at a time on 2 DDP workers
    (see :func:`maskcrypt.train.driver.training_slots`); on GPUs, one worker per GPU.
    """

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1
    #: How the ranks share the training data: stream (Ray Train's streaming split, each image decoded once),
    #: replicate (each rank reads all in one seeded order: bitwise reproducible), auto (replicate for data that
    #: fits in memory, stream for files). See maskcrypt/train/feed.py.
    sharding: str = "auto"
    #: ``auto`` replicates a training set whose decoded pixels take at most this many MB per worker (every rank
    #: holds all of them), and streams a larger one, whatever the source's kind: 25,000 faces at 32 px are 77 MB,
    #: LFW at 112 px 498 MB, VGGFace2 at 112 px 124 GB.
    replicate_max_mb: float = 1024.0
    #: Held-out images evaluated after each epoch: all of a split this small, else a seeded spread sample of this
    #: many (the figure is a progress signal; the determination measures the test set in full).
    held_out_limit: int = 2000
    #: Images a rank's local shuffle buffer holds when the training data streams (seeded, per epoch).
    shuffle_buffer: int = 2048

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.max_failures < 0:
            raise MaskcryptError(
                "resources: workers >= 1, cpus_per_worker > 0, gpus_per_worker >= 0, max_failures >= 0"
            )
        if self.sharding not in ("auto", "stream", "replicate"):
            raise MaskcryptError(f"--data-sharding: expected auto, stream or replicate, got {self.sharding!r}")
        if not self.replicate_max_mb >= 0:
            raise MaskcryptError(f"resources.replicate_max_mb: expected MB >= 0, got {self.replicate_max_mb!r}")
        if self.shuffle_buffer < 1:
            raise MaskcryptError(f"resources.shuffle_buffer: expected at least 1 image, got {self.shuffle_buffer}")
        if self.held_out_limit < 1:
            raise MaskcryptError(f"--held-out-limit: expected at least 1 image, got {self.held_out_limit}")


@dataclass(frozen=True)
class TrainSources:
    """Where training reads from besides the run's own data: held-out images, R's data, pool, init weights."""

    val_data: str = ""  # "" = the training source's test split
    inpaint_data: str = ""  # "" = the training data
    masks: str = ""  # "" = RUN/masks_train
    #: A state dict initializing O, and E too unless ``init_encrypted`` is given: maskcrypt's, a torchvision
    #: ImageNet ResNet's or an insightface IR-ResNet's (the layout, and with it the architecture, is read from it).
    init_original: str = ""
    init_encrypted: str = ""  # a state dict initializing E ("" = init_original)
    init_inpainter: str = ""
    models: str = ",".join(ROLES)  # which models to train

    def roles(self) -> tuple[str, ...]:
        roles = tuple(r.strip() for r in self.models.split(",") if r.strip())
        if not roles or set(roles) - set(ROLES):
            raise MaskcryptError(f"--models: expected a comma list of {', '.join(ROLES)}, got {self.models!r}")
        return roles

    def __post_init__(self) -> None:
        self.roles()


# -- determine -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    """How the cross product runs: pool size, resources per actor, batch sizes, precision."""

    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    masks_per_batch: int = 8  # masks per Ray Data batch (one actor call)
    masks_per_block: int = 64  # masks per Ray Data block (one actor task; the unit of progress and resume)
    images_per_chunk: int = 0  # images per forward pass; 0 = the device's default (precision.default_chunk)
    precision: str = "auto"
    per_image: bool = False  # also emit per-image correctness, bit-packed (hits_<model>)
    timing: bool = False  # also emit when each row was done, by which worker and on which node (benchmarks)
    #: Open-set race: MB of masked-gallery centroids one actor keeps between rounds (a mask's gallery is embedded
    #: once per race while it fits; past it the least recently measured masks are re-embedded if measured again).
    gallery_cache_mb: int = 1024

    def __post_init__(self) -> None:
        if self.gallery_cache_mb < 0:
            raise MaskcryptError(f"evaluation.gallery_cache_mb: expected MB >= 0, got {self.gallery_cache_mb}")
        if min(self.actors, self.masks_per_batch, self.masks_per_block) < 1 or self.images_per_chunk < 0:
            raise MaskcryptError("evaluation: actors and masks per batch/block must be >= 1, images_per_chunk >= 1 "
                                 "(0 = the device's default)")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise MaskcryptError("evaluation: cpus per actor must be > 0 and gpus per actor >= 0")
        check_precision(self.precision)


#: The race's bounds on a mask's accuracy (AdaptivePlan.bounds): exact hypergeometric, or KL + Hoeffding-Serfling.
RACE_BOUNDS = ("hypergeometric", "kl-serfling")


@dataclass(frozen=True)
class AdaptivePlan:
    """The adaptive race's knobs: its error probability, first step of images, how steps grow, ties, sampling.

    The race's promise: with probability at least ``1 - delta``, every mask it ranks in a
    bucket's top k is within ``tolerance`` of full mode's k-th best accuracy on the same
    selection images (the error probability of the whole race, every mask, bucket and
    round together: :meth:`bound_error`). ``confidence`` is the older way to say it
    (``--adaptive-confidence``): when given, ``delta = 1 - confidence``.
    """

    first: int = 0  # selection images every mask sees first; 0 = auto (fewer for a larger library: first_for)
    growth: float = 1.5  # each step of a mask's images is this many times the previous one (docs/benchmarks.md)
    delta: float = 0.05  # error probability of the whole race
    seed: int = 0  # order in which selection images are revealed
    tolerance: float = 0.02  # ties: stop once the top ``keep`` is provably within this of every other mask
    share: float = 0.02  # per round, the share of open challengers measured further (docs/benchmarks.md)
    confidence: float | None = None  # deprecated spelling of 1 - delta (--adaptive-confidence)
    #: How each mask's accuracy is bounded: ``hypergeometric`` (exact, the default) or ``kl-serfling`` (the
    #: looser closed-form bounds the race used first). A field of the plan, so it is part of the race's cache key.
    bounds: str = "hypergeometric"

    def __post_init__(self) -> None:
        if self.confidence is not None:
            if not 0.5 <= self.confidence < 1.0:
                raise MaskcryptError(f"--adaptive-confidence: expected a level in [0.5, 1), got {self.confidence}")
            object.__setattr__(self, "delta", round(1.0 - self.confidence, 12))
            object.__setattr__(self, "confidence", None)
        if self.first < 0 or self.growth <= 1.0:
            raise MaskcryptError(f"adaptive search: first >= 0 (0 = auto) and growth > 1 needed, got {self.first}, "
                                 f"{self.growth}")
        if not 0.0 <= self.tolerance < 1.0:
            raise MaskcryptError(f"--adaptive-tolerance: expected a fraction in [0, 1), got {self.tolerance}")
        if not 0.0 < self.delta <= 0.5:
            raise MaskcryptError(f"--adaptive-delta: expected an error probability in (0, 0.5], got {self.delta}")
        if not 0.0 < self.share <= 1.0:
            raise MaskcryptError(f"adaptive share: expected a fraction in (0, 1], got {self.share}")
        if self.bounds not in RACE_BOUNDS:
            raise MaskcryptError(f"--adaptive-bounds: expected one of {', '.join(RACE_BOUNDS)}, got {self.bounds!r}")

    def first_for(self, masks: int, population: int, keep: int, buckets: int) -> int:
        """Images of the first round: ``first`` if set, else fewer the larger the library.

        The first round costs every mask the same; past a library of ``keep`` masks per
        bucket it is mostly spent on masks the race drops. Auto takes ~3% of the images for
        a library of 20 masks per bucket kept, shrinking as 1 / sqrt(masks per kept mask),
        within [16, 64] (never more than the population).
        """
        if self.first:
            return min(self.first, population)
        per_kept = max(1.0, masks / max(1, keep * buckets))
        auto = 0.03 * population * float(np.sqrt(20.0 / per_kept))
        return int(min(population, max(16, min(64, round(auto)))))

    def bound_error(self, masks: int, population: int, keep: int = 1, buckets: int = 1) -> float:
        """Error probability allowed to one mask's bounds at one step level: ``delta`` over every (mask, level).

        A mask is only ever looked at after a step of :meth:`steps` (the levels are fixed
        before any image is seen); at the last level it has seen every image and its
        accuracy is exact. A union bound over the masks and the levels below the last
        makes all bounds of the race hold at once with probability >= 1 - delta.
        """
        levels = max(1, len(self.steps(population, self.first_for(masks, population, keep, buckets))) - 1)
        return self.delta / (max(1, masks) * levels)

    def steps(self, population: int, first: int | None = None) -> Any:
        """Image counts a mask moves through: first, first x growth, ... and finally all ``population``."""
        levels = [min(first or self.first or 50, population)]
        while levels[-1] < population:
            levels.append(min(population, max(levels[-1] + 1, int(np.ceil(levels[-1] * self.growth)))))
        return np.asarray(levels, np.int64)


@dataclass(frozen=True)
class DetermineConfig:
    """What the determination measures and how (docs/method.md, "Determination")."""

    test_data: str = ""  # "" = the run's data, test split
    scoring: str = "auto"  # closed | open | auto
    enroll: int = 2  # open set: gallery images per identity
    confirm_fraction: float = 0.5
    table1_mode: str = "sampled"  # sampled | full
    repeats: int = 5
    rank_mode: str = "auto"  # full | adaptive | auto
    #: ``rank_mode="auto"`` races masks adaptively above this many masked images per model: the embedded
    #: default's 600 masks x 240 selection faces (144,000) race; small test runs are measured in full.
    adaptive_above: int = 100_000
    per_mask: str = "targets"  # targets | all
    rule: str = "bucketed"  # bucketed (Table 1 buckets, candidates, the attack) | basic (E > t_enc, O < t_orig)
    seed: int = 0
    require_targets: bool = False  # the entry point exits 3 when no target mask is found

    def __post_init__(self) -> None:
        for name, value, allowed in (("--scoring", self.scoring, ("auto", "closed", "open")),
                                     ("--table1-mode", self.table1_mode, ("sampled", "full")),
                                     ("--rank-mode", self.rank_mode, ("auto", "full", "adaptive")),
                                     ("--per-mask", self.per_mask, ("targets", "all")),
                                     ("--rule", self.rule, ("bucketed", "basic"))):
            if value not in allowed:
                raise MaskcryptError(f"{name}: expected {', '.join(allowed)}, got {value!r}")
        if self.repeats < 1:
            raise MaskcryptError(f"--repeats: expected at least 1, got {self.repeats}")
        if self.adaptive_above < 0:
            raise MaskcryptError(f"determine.adaptive_above: expected masked images >= 0, got {self.adaptive_above}")
        if not 0.0 <= self.confirm_fraction < 1.0:
            raise MaskcryptError(f"--confirm-fraction: expected a fraction in [0, 1), got {self.confirm_fraction}")
        if self.enroll < 1:
            raise MaskcryptError(f"--enroll: expected at least 1 gallery image per identity, got {self.enroll}")
        if self.rule == "basic" and self.rank_mode == "adaptive":
            raise MaskcryptError("--rule basic judges every mask on every selection image: use --rank-mode full "
                                 "(or auto), not adaptive")


# -- tune ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """The privacy budget and the inpainting floor a tuned choice must respect (fractions)."""

    o_masked: float = 0.5  # O's accuracy on masked images, every chosen mask
    o_inpainted: float = 0.5  # O's accuracy on inpainted images, every chosen mask
    min_drop: float = 0.0  # E's inpainting drop, every chosen mask
    utility: str = "mean"  # or "best": E's accuracy of the best chosen mask
    #: The worst attacker's accuracy (results/attacks.parquet, selection split), every chosen mask; None = off.
    max_attacker: float | None = None
    #: The worst linkage (the outsider's Recall@1, results/linkage.parquet, selection split), every chosen mask.
    max_linkage: float | None = None

    def __post_init__(self) -> None:
        for name in ("o_masked", "o_inpainted", "min_drop", "max_attacker", "max_linkage"):
            v = getattr(self, name)
            if name in ("max_attacker", "max_linkage") and v is None:
                continue
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise MaskcryptError(f"budget {name}: expected a fraction in [0, 1], got {v!r}")
        if self.utility not in ("mean", "best"):
            raise MaskcryptError(f"budget utility: expected mean or best, got {self.utility!r}")


@dataclass(frozen=True)
class TuneConfig:
    """The threshold search: its objective's budget and how it searches (docs/tuning.md)."""

    budget: Budget = field(default_factory=Budget)
    search: str = "random"  # random | grid
    samples: int = 64  # random search: trials
    grid_points: int = 4  # grid search: values per threshold
    seed: int = 0
    trial_cpus: float = 0.25

    def __post_init__(self) -> None:
        if self.search not in ("random", "grid"):
            raise MaskcryptError(f"--search: expected random or grid, got {self.search!r}")
        if self.samples < 1 or self.grid_points < 2 or self.trial_cpus <= 0:
            raise MaskcryptError(f"--samples must be >= 1, --grid-points >= 2 and --trial-cpus > 0 (got "
                                 f"{self.samples}, {self.grid_points}, {self.trial_cpus})")


def config_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def check_same_training(original: dict[str, Any], encrypted: dict[str, Any]) -> None:
    """Refuse an O/E pair whose checkpoints were trained with different TrainConfigs."""
    a, b = original.get("train_config_sha256"), encrypted.get("train_config_sha256")
    if not a or a != b:
        da, db = original.get("train_config", {}), encrypted.get("train_config", {})
        diff = {k: (da.get(k), db.get(k)) for k in set(da) | set(db) if da.get(k) != db.get(k)}
        raise MaskcryptError(
            "original and encrypted models were trained with different hyperparameters "
            f"(TrainConfig sha256 {str(a)[:12]} vs {str(b)[:12]}; differing: {diff}); the method requires "
            "identical ones: retrain one of them with the other's settings"
        )
