"""The attack stage's settings: which attackers, how the trained ones train, the ladder, linkage, fidelity.

Split from :mod:`maskcrypt.config.sections` (re-exported by :mod:`maskcrypt.config`) so
that each module stays readable; docs/determination.md, "What an attacker gets", says
what every field means for a deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskcrypt.core.errors import MaskcryptError

# -- attackers -------------------------------------------------------------------------------------------
#: Every attacker the attack stage can run (docs/determination.md, "What an attacker gets"), in report order.
#: "O" and "R+O" are Table 2's own O figures and always measured; the others are chosen with ``--attackers``.
ATTACKERS = ("O", "R+O", "telea+O", "ns+O", "adaptive-family", "adaptive-family+R", "adaptive-known")
#: Attackers that need no training (run inside the attack stage's inference pass).
NO_TRAINING = ("O", "R+O", "telea+O", "ns+O")
#: ``--attackers default``: every attacker without training, plus the one trained family attacker per run.
DEFAULT_ATTACKERS = (*NO_TRAINING, "adaptive-family", "adaptive-family+R")


def parse_attackers(text: str) -> tuple[str, ...]:
    """``--attackers``: ``default``, ``all`` or a comma list of :data:`ATTACKERS` (O and R+O always added)."""
    words = [w.strip() for w in str(text).split(",") if w.strip()]
    if words == ["all"]:
        return ATTACKERS
    if words == ["default"]:
        return DEFAULT_ATTACKERS
    unknown = [w for w in words if w not in ATTACKERS]
    if unknown or not words:
        raise MaskcryptError(f"--attackers: expected default, all or a comma list of {', '.join(ATTACKERS)}; "
                             f"got {text!r}")
    return tuple(a for a in ATTACKERS if a in {"O", "R+O", *words})


def parse_ladder(text: str) -> tuple[int | None, ...]:
    """``--attacker-ladder``: increasing photo counts, ``all`` (None) last; ``off`` or empty: no ladder.

    >>> parse_ladder("256,1024,all")
    (256, 1024, None)
    """
    words = [w.strip().lower() for w in str(text).split(",") if w.strip()]
    if words in ([], ["off"], ["none"]):
        return ()
    out: list[int | None] = []
    for w in words:
        if w == "all":
            out.append(None)
            continue
        try:
            n = int(w)
        except ValueError:
            n = 0
        if n < 1:
            raise MaskcryptError(f"--attacker-ladder: expected photo counts >= 1, 'all' or 'off', got {w!r} "
                                 f"in {text!r}")
        out.append(n)
    counts = [n for n in out if n is not None]
    if counts != sorted(set(counts)) or (None in out and out[-1] is not None) or out.count(None) > 1:
        raise MaskcryptError(f"--attacker-ladder: expected increasing counts, 'all' at most once and last, got "
                             f"{text!r}")
    return tuple(out)


@dataclass(frozen=True)
class AttackConfig:
    """The attackers the attack stage measures and how the trained ones train (docs/determination.md)."""

    attackers: str = "default"  # default | all | a comma list of ATTACKERS
    #: The adaptive attackers train from O's weights with O's TrainConfig, its epochs replaced by this
    #: (each epoch: K masked copies of every image, like E's).
    epochs: int = 2
    #: The attacker's labelled images; "" = the run's training data, train split (as much data as the operator:
    #: the worst case). ``SPEC#limit=N`` gives a weaker attacker.
    data: str = ""
    #: CPUs (torch threads) per training trial; trials run side by side on the cluster's CPUs. 0 = auto: the
    #: CPUs spread over the trials (one each when there are more trials than CPUs; the whole node, up to 8,
    #: for a lone trial such as the default's family attacker: 1.7x on 2 threads here). Threads never exceed
    #: the CPUs a trial holds: two threads per process on a *busy* 2-core machine ran 10-100x slower than one.
    trial_cpus: float = 0.0
    trial_gpus: float = 0.0  # GPUs per training trial
    #: The attacker ladder (docs/determination.md): the family attacker also trained on this many labelled
    #: photos each (stratified per identity, seeded, nested; ``all`` = every photo; rung 0, O itself, always
    #: shown), the same optimizer steps on every rung. ``off`` turns it off.
    ladder: str = "256,1024,all"
    #: PSNR and SSIM of every inpainting attacker's fill against the original (results/attacks.parquet).
    fidelity: bool = True
    #: Linkage of identities the attacker never saw: an embedder trained only on photos of other identities
    #: links the victims' masked probes to clean photos of them (results/linkage.parquet).
    linkage: bool = True
    #: The share of the test identities that are victims (seeded); the attacker trains on the others' photos.
    linkage_victims: float = 0.5
    #: Epochs of the linkage embedder (the family recipe: K fresh masks of the target buckets per photo and epoch).
    linkage_epochs: int = 4
    #: Unlinkability across the target masks (Gomez-Barrero et al.'s D_sys of mated and non-mated scores between
    #: a person's photos under two masks; results/unlinkability.parquet).
    unlinkability: bool = True
    #: Weights the linkage embedder starts from (public face weights: ``maskcrypt.models.weights``); "" = random
    #: initialisation. Never O's: O saw the victims.
    attacker_weights: str = ""

    def __post_init__(self) -> None:
        parse_attackers(self.attackers)
        parse_ladder(self.ladder)
        if not 0.0 < self.linkage_victims < 1.0:
            raise MaskcryptError(f"--linkage-victims: expected a fraction in (0, 1), got {self.linkage_victims!r}")
        if self.linkage_epochs < 1:
            raise MaskcryptError(f"--linkage-epochs: expected at least 1, got {self.linkage_epochs}")
        if self.epochs < 1:
            raise MaskcryptError(f"--attack-epochs: expected at least 1, got {self.epochs}")
        if self.trial_cpus < 0 or self.trial_gpus < 0:
            raise MaskcryptError("attack trials: cpus per trial must be >= 0 (0 = auto) and gpus per trial >= 0")

    def names(self) -> tuple[str, ...]:
        return parse_attackers(self.attackers)

    def rungs(self) -> tuple[int | None, ...]:
        """The ladder's photo counts (None: all), empty when it is off."""
        return parse_ladder(self.ladder)

    @property
    def trained(self) -> tuple[str, ...]:
        """The adaptive attackers' models to train: ``family`` (also the ladder's top rung), ``known``, ``linkage``."""
        names = self.names()
        # The ladder is built on the family model's job (its masks and K) and caps a rung above the attacker's
        # photos at all of them, which is the family model: trained whenever the ladder is on.
        family = {"adaptive-family", "adaptive-family+R"} & set(names) or self.rungs()
        return tuple(k for k, wanted in (("family", family), ("known", {"adaptive-known"} & set(names)),
                                         ("linkage", self.linkage)) if wanted)
