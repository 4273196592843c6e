"""Command-line flags of a run, each mapped to the :class:`~maskcrypt.config.runconfig.RunConfig` field(s) it sets.

A run is configured by ``--config run.yaml`` (the RunConfig's nested keys), by flags,
or by both: flags given on the command line override the file, flags not given leave
it alone (they default to "not given", and the help shows the RunConfig default). One
table, :data:`RUN_FLAGS`, serves ``maskcrypt run|prepare|train|determine`` and the jobs
that wrap them, so a flag means the same everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from maskcrypt.config import STAGES, TuneConfig
from maskcrypt.config.runconfig import RunConfig, parse_override
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import PRECISIONS


def _depth(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise MaskcryptError(f"--depth: expected blocks per stage like 1,1,1,1, got {text!r}") from None


def _thresholds(path: str) -> Any:
    from maskcrypt.selection.rules import Thresholds

    return Thresholds.from_file(path)


#: (flags, RunConfig fields, argparse keywords, help). ``store_true`` flags set True.
RUN_FLAGS: list[tuple[tuple[str, ...], tuple[str, ...], dict[str, Any], str]] = [
    (("--run",), ("run",), {}, "run directory"),
    (("--until",), ("until",), {"choices": STAGES}, "last stage to run"),
    # prepare
    (("--data", "--train-data"), ("prepare.data",), {}, "data spec of O's and E's training images (train split); "
                                                        "its test split is the default --test-data"),
    (("--size",), ("prepare.size",), {"type": int}, "image and mask size in pixels"),
    (("--mask-count",), ("prepare.mask_count",), {"type": int}, "masks in the selection library"),
    (("--mask-seed",), ("prepare.mask_seed",), {"type": int}, "seed of the selection library"),
    (("--train-mask-count",), ("prepare.train_mask_count",), {"type": int}, "masks in E's and R's training pool"),
    (("--train-mask-seed",), ("prepare.train_mask_seed",), {"type": int}, "seed of the training pool"),
    (("--heldout-mask-count",), ("prepare.heldout_mask_count",), {"type": int},
     "masks of the held-out pool (E's per-epoch accuracy on masks it never trained with)"),
    (("--heldout-mask-seed",), ("prepare.heldout_mask_seed",), {"type": int}, "seed of the held-out pool"),
    (("--attacker-mask-count",), ("prepare.attacker_mask_count",), {"type": int},
     "masks of the attackers' pool masks_attacker/ (the adaptive-family attacker trains with them)"),
    (("--attacker-mask-seed",), ("prepare.attacker_mask_seed",), {"type": int}, "seed of the attackers' pool"),
    (("--buckets",), ("prepare.buckets",), {}, "buckets to fill, e.g. 1-6"),
    (("--selection-masks",), ("prepare.selection_masks",), {},
     "use this mask library (e.g. imported NVIDIA masks) as the selection library; copied into RUN/masks"),
    # training inputs
    (("--val-data",), ("sources.val_data",), {}, "held-out images of the training classes (default: the training "
                                                 "source's test split)"),
    (("--inpaint-data",), ("sources.inpaint_data",), {}, "data spec of R's training images (default: --data)"),
    (("--masks",), ("sources.masks",), {}, "E's and R's training mask pool (default RUN/masks_train)"),
    (("--init-original",), ("sources.init_original",), {},
     "state dict initializing O (and E unless --init-encrypted): maskcrypt, torchvision ImageNet ResNet-18/34/50 or "
     "insightface IR-ResNet-18/34/50/100 backbone.pth; its layout sets the architecture"),
    (("--init-encrypted",), ("sources.init_encrypted",), {}, "state dict initializing E (default: --init-original)"),
    (("--init-inpainter",), ("sources.init_inpainter",), {}, "state dict initializing R"),
    (("--models",), ("sources.models",), {}, "which models to train, a comma list"),
    # the shared TrainConfig
    (("--epochs",), ("train.epochs",), {"type": int}, "epochs of O and E"),
    (("--batch-size",), ("train.batch_size",), {"type": int}, "global batch size of O and E"),
    (("--optimizer",), ("train.optimizer",), {"choices": ("sgd", "adamw")}, ""),
    (("--lr",), ("train.lr",), {"type": float}, ""),
    (("--weight-decay",), ("train.weight_decay",), {"type": float}, ""),
    (("--schedule",), ("train.schedule",), {"choices": ("cosine", "step", "constant")}, ""),
    (("--warmup-epochs",), ("train.warmup_epochs",), {"type": float}, ""),
    (("--augment",), ("train.augment",), {"choices": ("flip", "none")}, ""),
    (("--label-smoothing",), ("train.label_smoothing",), {"type": float}, "of O's and E's cross-entropy"),
    (("--precision",), ("train.precision", "inpaint.precision", "evaluation.precision"), {"choices": PRECISIONS},
     "auto = bf16 autocast + channels_last where the hardware has bf16, else fp32 (training and evaluation)"),
    (("--seed",), ("train.seed", "inpaint.seed", "sampling.seed", "determine.seed", "adaptive.seed"),
     {"type": int}, "seed of training, E's mask draws, the test split and the adaptive race"),
    # architectures
    (("--arch",), ("model.arch",), {}, "compact, resnet18/34/50, iresnet18/34/50"),
    (("--width",), ("model.width",), {"type": int}, "compact: channels of the first stage"),
    (("--depth",), ("model.depth",), {"type": _depth}, "compact: blocks per stage, e.g. 2,2,2,2"),
    (("--head",), ("model.head",), {"choices": ("softmax", "arcface")}, ""),
    (("--inpaint-width",), ("model.inpaint_width",), {"type": int}, "RFR-Net width (published: 64)"),
    (("--iterations",), ("model.inpaint_iterations",), {"type": int}, "RFR iterations (published: 6)"),
    # E's second sample, R's training
    (("--masks-per-image",), ("sampling.k",), {"type": int}, "K masks overlaid on every image for E"),
    (("--mask-mode",), ("sampling.mode",), {"choices": ("fixed", "random")},
     "fixed: K masks x every image; random: a fresh pool mask per image per epoch"),
    (("--inpaint-epochs",), ("inpaint.epochs",), {"type": int}, ""),
    (("--inpaint-batch-size",), ("inpaint.batch_size",), {"type": int}, ""),
    (("--inpaint-lr",), ("inpaint.lr",), {"type": float}, ""),
    (("--finetune-epochs",), ("inpaint.finetune_epochs",), {"type": int}, "R: BN-frozen fine-tune epochs"),
    (("--vgg-weights",), ("inpaint.vgg_weights",), {}, "local torchvision vgg16 state dict for R's feature losses"),
    # Ray Train
    (("--workers",), ("resources.workers",), {"type": int}, "Ray Train workers per model"),
    (("--cpus-per-worker",), ("resources.cpus_per_worker",), {"type": float}, ""),
    (("--gpus-per-worker",), ("resources.gpus_per_worker",), {"type": float}, ""),
    (("--max-failures",), ("resources.max_failures",), {"type": int}, ""),
    (("--data-sharding",), ("resources.sharding",), {"choices": ("auto", "stream", "replicate")},
     "how Ray Train workers share the training data: stream (each image decoded once), replicate (bitwise "
     "reproducible), auto (replicate when the decoded set fits --replicate-max-mb per worker, else stream)"),
    (("--replicate-max-mb",), ("resources.replicate_max_mb",), {"type": float},
     "auto sharding: decoded training pixels per worker up to which every rank holds the whole set"),
    (("--held-out-limit",), ("resources.held_out_limit",), {"type": int},
     "held-out images evaluated after each training epoch (a seeded sample of a larger split)"),
    # determination
    (("--test-data",), ("determine.test_data",), {}, "test images (default: --data, test split)"),
    (("--scoring",), ("determine.scoring",), {"choices": ("auto", "closed", "open")},
     "closed set when the test identities are training classes (auto), else open set"),
    (("--enroll",), ("determine.enroll",), {"type": int}, "open set: gallery images per identity"),
    (("--confirm-fraction",), ("determine.confirm_fraction",), {"type": float},
     "share of each identity's test images held out for confirmation (0 = none)"),
    (("--table1-mode",), ("determine.table1_mode",), {"choices": ("sampled", "full")},
     "Table 1: one random mask of the bucket per image and repetition, or every mask x image"),
    (("--repeats",), ("determine.repeats",), {"type": int}, "Table 1 repetitions (sampled mode)"),
    (("--rank-mode",), ("determine.rank_mode",), {"choices": ("auto", "full", "adaptive")},
     "per-mask third accuracy: every mask x image (full), or a race on confidence bounds (adaptive); "
     "auto = adaptive above 1M masked images per model"),
    (("--per-mask",), ("determine.per_mask",), {"choices": ("targets", "all")},
     "third accuracy for the target buckets' masks, or every bucket's"),
    (("--rule",), ("determine.rule",), {"choices": ("bucketed", "basic")},
     "bucketed: the method's buckets, candidates and inpainting attack; basic: every mask with E > t_enc and "
     "O < t_orig"),
    (("--require-targets",), ("determine.require_targets",), {"action": "store_true"},
     "exit 3 when no target mask is found"),
    (("--adaptive-delta",), ("adaptive.delta",), {"type": float},
     "adaptive: error probability of the whole race (its top k within the tolerance of full mode's otherwise)"),
    (("--adaptive-confidence",), ("adaptive.confidence",), {"type": float},
     "adaptive: the same as --adaptive-delta 1-C (the older spelling)"),
    (("--adaptive-bounds",), ("adaptive.bounds",), {"choices": ("hypergeometric", "kl-serfling")},
     "adaptive: how a mask's accuracy is bounded: exact hypergeometric bounds, or the looser KL and "
     "Hoeffding-Serfling bounds the race used before"),
    (("--adaptive-first",), ("adaptive.first",), {"type": int},
     "adaptive: images every mask sees first (0: fewer the larger the library)"),
    (("--adaptive-share",), ("adaptive.share",), {"type": float},
     "adaptive: share of the open challengers (highest upper bounds) measured further each round"),
    (("--adaptive-tolerance",), ("adaptive.tolerance",), {"type": float},
     "adaptive: stop racing masks provably within this accuracy of the top k (ties); 0 = exact"),
    (("--eval-actors",), ("evaluation.actors",), {"type": int}, "actors of the evaluation pool"),
    (("--eval-gpus",), ("evaluation.gpus_per_actor",), {"type": float}, "GPUs per evaluation actor"),
    (("--per-image",), ("evaluation.per_image",), {"action": "store_true"},
     "also store per-image correctness (bit-packed)"),
    # attackers
    (("--attackers",), ("attack.attackers",), {},
     "which attackers the attack stage measures: default (O, R+O, telea+O, ns+O, adaptive-family, "
     "adaptive-family+R), all (adds adaptive-known: one recognizer trained per attacked mask), or a comma list"),
    (("--attack-epochs",), ("attack.epochs",), {"type": int},
     "epochs of the adaptive attackers (O's TrainConfig from O's weights, with these epochs)"),
    (("--attacker-data",), ("attack.data",), {},
     "the attacker's labelled images (default: the training data, train split: the worst case; SPEC#limit=N "
     "for a weaker attacker)"),
    (("--attacker-ladder",), ("attack.ladder",), {},
     "the attacker ladder: the family attacker also trained on this many labelled photos each (stratified per "
     "identity, nested, the same optimizer steps), e.g. 256,1024,all (the default); off turns it off"),
    (("--fidelity",), ("attack.fidelity",), {"action": argparse.BooleanOptionalAction},
     "PSNR and SSIM of every inpainting attacker's fill, in the hole and over the image"),
    (("--linkage",), ("attack.linkage",), {"action": argparse.BooleanOptionalAction},
     "linkage of identities the attacker never saw: Recall@1 and TAR@FAR of an embedder trained on other people"),
    (("--unlinkability",), ("attack.unlinkability",), {"action": argparse.BooleanOptionalAction},
     "unlinkability across the target masks: D_sys of a person's photos under mask A against mask B (E and the "
     "linkage embedder)"),
    (("--linkage-victims",), ("attack.linkage_victims",), {"type": float},
     "share of the test identities that are victims (the attacker trains on the others' photos)"),
    (("--linkage-epochs",), ("attack.linkage_epochs",), {"type": int}, "epochs of the linkage embedder"),
    (("--attacker-weights",), ("attack.attacker_weights",), {},
     "public face weights the linkage embedder starts from (empty: random initialisation; never O, which saw "
     "the victims)"),
    (("--attack-cpus",), ("attack.trial_cpus",), {"type": float},
     "CPUs (torch threads) per attacker training trial; the trials run side by side on the cluster's CPUs "
     "(0 = auto: spread over the trials, a lone trial gets its node's, up to 8)"),
    (("--attack-gpus",), ("attack.trial_gpus",), {"type": float}, "GPUs per attacker training trial"),
    (("--thresholds",), ("thresholds",), {"type": _thresholds},
     "JSON/YAML file of thresholds (t_enc, t_orig, t_gap, t_drop, top_k, attack_top, confidence, t_attack, t_link); "
     "fractions"),
]

#: The threshold search's flags (``maskcrypt tune``, ``jobs/tune.py``), mapped onto RunConfig.tune.
TUNE_FLAGS: list[tuple[tuple[str, ...], tuple[str, ...], dict[str, Any], str]] = [
    (("--run",), ("run",), {}, "a run with results/table1 and table2"),
    (("--max-o-masked",), ("tune.budget.o_masked",), {"type": float},
     "privacy budget: O's accuracy on masked images, every chosen mask"),
    (("--max-o-inpainted",), ("tune.budget.o_inpainted",), {"type": float},
     "privacy budget: O's accuracy on inpainted images, every chosen mask"),
    (("--min-drop",), ("tune.budget.min_drop",), {"type": float}, "floor on every chosen mask's inpainting drop"),
    (("--max-attacker",), ("tune.budget.max_attacker",), {"type": float},
     "privacy budget: the worst attacker's accuracy (results/attacks.parquet), every chosen mask (default off)"),
    (("--max-linkage",), ("tune.budget.max_linkage",), {"type": float},
     "privacy budget: the outsider's linkage Recall@1 (results/linkage.parquet), every chosen mask (default off)"),
    (("--utility",), ("tune.budget.utility",), {"choices": ("mean", "best")},
     "E's accuracy averaged over the chosen masks, or the best one's (what mask=best serves)"),
    (("--search",), ("tune.search",), {"choices": ("random", "grid")}, ""),
    (("--samples",), ("tune.samples",), {"type": int}, "random search: trials"),
    (("--grid-points",), ("tune.grid_points",), {"type": int}, "grid search: values per threshold"),
    (("--trial-cpus",), ("tune.trial_cpus",), {"type": float}, "CPUs per trial (trials are table look-ups)"),
    (("--seed", "--tune-seed"), ("tune.seed",), {"type": int}, "seed of the random search"),
]


def _default(dotted: str) -> Any:
    obj: Any = RunConfig(tune=TuneConfig())
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


#: Metavars by what a value is (the field's last name, or its ending): what a user types, not the config path.
METAVARS = {"run": "DIR", "models": "DIR", "masks": "LIB", "selection_masks": "LIB", "thresholds": "FILE",
            "attacker_weights": "FILE", "init_original": "FILE", "init_encrypted": "FILE", "init_inpainter": "FILE",
            "vgg_weights": "FILE", "buckets": "LIST", "attackers": "LIST", "ladder": "LIST", "depth": "LIST",
            "arch": "NAME", "k": "K"}


def metavar(field: str, kwargs: dict[str, Any]) -> str | None:
    """A readable placeholder for a flag's value: SPEC for data, FILE, DIR, LIB, N for counts, X for fractions."""
    if "action" in kwargs or "choices" in kwargs:
        return None  # argparse shows the choices, or the flag takes no value
    name = field.rsplit(".", 1)[-1]
    if name in METAVARS:
        return METAVARS[name]
    if name == "data" or name.endswith("_data"):
        return "SPEC"
    kind = kwargs.get("type")
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    return name.upper()


def add_flags(parser: argparse.ArgumentParser, table: list[tuple[tuple[str, ...], tuple[str, ...], dict[str, Any],
                                                               str]], title: str = "run") -> None:
    """Add ``table``'s flags; each defaults to "not given" so that only given flags override a config file.

    The help ends with the default once: the field's, unless the text already says what it is.
    """
    group = parser.add_argument_group(title)
    for names, fields, kwargs, text in table:
        default = _default(fields[0]) if fields[0] != "thresholds" else "the source's examples"
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = text if "(default" in text else f"{text} (default {shown!r})" if text else f"default {shown!r}"
        placeholder = kwargs.get("metavar") or metavar(fields[0], kwargs)
        extra = {"metavar": placeholder} if placeholder and "metavar" not in kwargs else {}
        group.add_argument(*names, dest="cfg__" + fields[0].replace(".", "__"), default=argparse.SUPPRESS,
                           help=help_text, **extra, **kwargs)


def given(args: argparse.Namespace,
          table: list[tuple[tuple[str, ...], tuple[str, ...], dict[str, Any], str]]) -> dict[str, Any]:
    """``{field: value}`` of the flags given on the command line (a flag may set several fields)."""
    out: dict[str, Any] = {}
    for _, fields, _, _ in table:
        dest = "cfg__" + fields[0].replace(".", "__")
        if hasattr(args, dest):
            for f in fields:
                out[f] = getattr(args, dest)
    return out


def build_config(args: argparse.Namespace, table: list[tuple[tuple[str, ...], tuple[str, ...], dict[str, Any], str]],
                 fixed: dict[str, Any] | None = None, base: Callable[[], RunConfig] | None = None) -> RunConfig:
    """The RunConfig of a command: ``--config`` file (or defaults), then the given flags, then ``fixed``."""
    config_file = getattr(args, "config", "")
    config = RunConfig.from_yaml(config_file) if config_file else (base() if base else RunConfig())
    flags = given(args, table)
    sets = getattr(args, "set", None) or []
    if sets:
        clash = sorted({parse_override(s)[0] for s in sets} & set(flags))
        if clash:
            raise MaskcryptError(f"--set and a flag both set {', '.join(clash)}: give each setting once")
        config = config.with_overrides(sets)
    return config.with_values({**flags, **(fixed or {})})


def add_set(parser: argparse.ArgumentParser) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable): any RunConfig field, after ``--config``, validated as the YAML."""
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set any RunConfig field, e.g. --set train.epochs=2 --set determine.rank_mode=adaptive "
                             "(repeatable; applied after --config; a flag and --set may not set the same field)")
