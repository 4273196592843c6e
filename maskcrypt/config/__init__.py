"""A run's settings: the sections (:mod:`.sections`, :mod:`.attack`), the thresholds (:mod:`.thresholds`) and the
whole run's :class:`~maskcrypt.config.runconfig.RunConfig` (:mod:`.runconfig`: YAML, ``--set``).

The section names are re-exported here, so ``from maskcrypt.config import EvalSettings``
reads the same as before the package existed.
"""

from maskcrypt.config.attack import (
    ATTACKERS,
    DEFAULT_ATTACKERS,
    NO_TRAINING,
    AttackConfig,
    parse_attackers,
    parse_ladder,
)
from maskcrypt.config.sections import (
    ROLES,
    STAGES,
    AdaptivePlan,
    Budget,
    DetermineConfig,
    EvalSettings,
    InpaintTrainConfig,
    MaskSampling,
    ModelSettings,
    PrepareConfig,
    Resources,
    TrainConfig,
    TrainSources,
    TuneConfig,
    check_same_training,
    config_hash,
)
from maskcrypt.config.thresholds import Thresholds

__all__ = [
    "ATTACKERS",
    "DEFAULT_ATTACKERS",
    "NO_TRAINING",
    "ROLES",
    "STAGES",
    "AdaptivePlan",
    "AttackConfig",
    "Budget",
    "DetermineConfig",
    "EvalSettings",
    "InpaintTrainConfig",
    "MaskSampling",
    "ModelSettings",
    "PrepareConfig",
    "Resources",
    "Thresholds",
    "TrainConfig",
    "TrainSources",
    "TuneConfig",
    "check_same_training",
    "config_hash",
    "parse_attackers",
    "parse_ladder",
]
