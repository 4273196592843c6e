"""The face-verification protocol, in numpy only: folds, best thresholds, accuracy, TAR@FAR, ROC.

This is the field's protocol (LFW's "View 2" as insightface's ``verification.py``
computes it), with two departures that make it exact:

* **Similarity, not distance.** Embeddings are unit vectors (flip-sum, then
  normalized: :mod:`maskcrypt.verification.stage` makes them), a pair's score is the cosine
  similarity ``s``, and a pair is judged "same" when ``s > t``. insightface thresholds
  the squared distance ``d = |a - b|^2 = 2 - 2s`` with "same" when ``d < t_d``: the
  same rule with ``t = 1 - t_d / 2``.
* **Every threshold, not a grid.** insightface tries ``t_d`` on a grid of 0.01 (400
  values) and keeps the first best. Here the candidates are every cut between two
  consecutive distinct training similarities (their midpoint), plus one below all and
  one above all, so the best threshold is the true best on the training folds. Pairs
  with equal similarity always get the same decision (ties are exact), and among
  equally accurate thresholds the highest wins (insightface's first best on its
  ascending distance grid is the same rule). Passing ``thresholds=insightface_grid()``
  reproduces insightface's grid search.

Accuracy: for each of the 10 folds, the threshold is chosen on the other nine and the
accuracy measured on it; the figure is the mean and the (population) standard
deviation over folds, insightface's ``Accuracy-Flip: mean+-std``. The fold spread is
not a confidence interval: given each pair's subject, :func:`evaluate` adds intervals over
subjects (accuracy: design-effect Wilson; TAR@FAR: a bootstrap over subjects).

TAR@FAR is computed on *all* pairs (the ROC's operating point): the threshold is the
lowest similarity above which at most ``floor(FAR x negatives)`` negative pairs fall;
TAR is the share of positive pairs above it. With fewer than ``1 / FAR`` negatives no
false accept is allowed and the figure is flagged as not resolvable (LFW's 3,000
negatives resolve FAR = 1e-3 with 3 false accepts and cannot resolve 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import clustered_wilson, design_effect
from maskcrypt.data.pairs import FOLDS, consecutive_folds  # noqa: F401  (part of the protocol's API)

#: The FARs every verification table reports.
FARS = (1e-3, 1e-4)
def cosine(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (float64) of two N x D embedding arrays."""
    a = np.asarray(emb_a, np.float64)
    b = np.asarray(emb_b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def insightface_grid() -> np.ndarray:
    """insightface's accuracy thresholds as similarities: ``t_d`` in ``arange(0, 4, 0.01)`` -> ``1 - t_d / 2``."""
    return 1.0 - np.arange(0, 4, 0.01) / 2.0


def _check(sims: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sims, np.float64).ravel()
    y = np.asarray(same).astype(bool).ravel()
    if s.shape != y.shape:
        raise MaskcryptError(f"verification: {s.size} similarities for {y.size} pair labels")
    if s.size and not np.isfinite(s).all():
        raise MaskcryptError("verification: similarities must be finite (an embedding of zeros or NaN?)")
    return s, y


def correct_counts(sims: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Integer number of correctly judged pairs for each threshold (``same`` iff ``sim > t``)."""
    s, y = _check(sims, same)
    t = np.asarray(thresholds, np.float64)
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, t, side="right")  # positives above t
    tn = np.searchsorted(neg, t, side="right")  # negatives at or below t
    return tp + tn


def best_threshold(sims: np.ndarray, same: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[float, int]:
    """The threshold with the most correct judgements on these pairs, and that count.

    ``thresholds`` None: every cut between consecutive distinct similarities (exact);
    else the given candidates. Ties: the highest threshold.
    """
    s, y = _check(sims, same)
    if s.size == 0:
        raise MaskcryptError("verification: no pairs to choose a threshold on")
    if thresholds is None:
        u = np.unique(s)
        thresholds = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    t = np.asarray(thresholds, np.float64)
    correct = correct_counts(s, y, t)
    best = np.flatnonzero(correct == correct.max())
    pick = best[np.argmax(t[best])]
    return float(t[pick]), int(correct[pick])


@dataclass(frozen=True)
class FoldResult:
    """10-fold accuracy: per fold the threshold chosen on the others and the accuracy on it."""

    accuracy: np.ndarray
    thresholds: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.accuracy.mean())

    @property
    def std(self) -> float:
        return float(self.accuracy.std())


def fold_accuracy(sims: np.ndarray, same: np.ndarray, folds: np.ndarray,
                  thresholds: np.ndarray | None = None) -> FoldResult:
    """Accuracy on each fold with the threshold chosen on all other folds."""
    s, y = _check(sims, same)
    f = np.asarray(folds).ravel()
    if f.shape != s.shape:
        raise MaskcryptError(f"verification: {f.size} fold labels for {s.size} pairs")
    ids = np.unique(f)
    if ids.size < 2:
        raise MaskcryptError("verification: needs at least 2 folds (the threshold is chosen on the other folds)")
    acc = np.empty(ids.size)
    chosen = np.empty(ids.size)
    for i, k in enumerate(ids):
        test = f == k
        t, _ = best_threshold(s[~test], y[~test], thresholds)
        chosen[i] = t
        acc[i] = correct_counts(s[test], y[test], np.array([t]))[0] / test.sum()
    return FoldResult(acc, chosen)


@dataclass(frozen=True)
class TarAtFar:
    """TAR at one FAR on all pairs, with what it rests on."""

    far: float
    tar: float
    threshold: float
    far_achieved: float
    negatives: int
    positives: int
    false_accepts_allowed: int

    @property
    def resolvable(self) -> bool:
        """At least one false accept is allowed: the figure is measured at this FAR, not at zero."""
        return self.false_accepts_allowed >= 1


def tar_at_far(sims: np.ndarray, same: np.ndarray, far: float) -> TarAtFar:
    """TAR at the lowest threshold that lets at most ``floor(far x negatives)`` negatives above it."""
    s, y = _check(sims, same)
    if not 0.0 < far <= 1.0:
        raise MaskcryptError(f"verification: FAR must be in (0, 1], got {far}")
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    if neg.size == 0 or pos.size == 0:
        raise MaskcryptError(f"verification: TAR@FAR needs positive and negative pairs, got {pos.size} and "
                             f"{neg.size}")
    allowed = int(np.floor(far * neg.size + 1e-9))
    t = float(neg[allowed]) if allowed < neg.size else float(neg[-1]) - 1.0
    return TarAtFar(far, float((pos > t).mean()), t, float((neg > t).mean()), int(neg.size), int(pos.size),
                    allowed)


def roc(sims: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, threshold) at every distinct similarity, from (0, 0) to (1, 1); ``same`` iff ``sim >= t``."""
    s, y = _check(sims, same)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each distinct value
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fp / n]
    tpr = np.r_[0.0, tp / p]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def subject_accuracy_interval(sims: np.ndarray, same: np.ndarray, folds: np.ndarray, chosen: np.ndarray,
                              subjects: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The 10-fold accuracy's interval over subjects: each pair judged at its fold's threshold, pairs clustered
    by subject, the design-effect Wilson interval (:func:`maskcrypt.core.stats.clustered_wilson`)."""
    f = np.asarray(folds).ravel()
    ids = np.unique(f)
    t = np.asarray(chosen, np.float64)[np.searchsorted(ids, f)]
    right = ((sims > t) == same).astype(np.float64)
    _, who = np.unique(np.asarray(subjects).ravel(), return_inverse=True)
    per = np.bincount(who, weights=right)
    deff = design_effect(per, per, np.bincount(who))
    lo, hi = clustered_wilson(right.sum(), right.size, deff, int(who.max()) + 1, confidence)
    return float(lo), float(hi)


def subject_bootstrap_tar(sims: np.ndarray, same: np.ndarray, subjects: np.ndarray, far: float,
                          confidence: float = 0.95, replicates: int = 200, seed: int = 0) -> tuple[float, float]:
    """TAR at ``far``'s percentile interval from a bootstrap over subjects (Bolle et al.'s subsets bootstrap).

    Each replicate draws the subjects with replacement and takes every pair of a drawn
    subject (its first image's) as many times as it was drawn; the threshold is found
    again on each replicate's impostors. Seeded: the same pairs give the same interval.
    """
    s, y = _check(sims, same)
    _, who = np.unique(np.asarray(subjects).ravel(), return_inverse=True)
    k = int(who.max()) + 1 if who.size else 0
    members = np.split(np.argsort(who, kind="stable"), np.cumsum(np.bincount(who, minlength=k))[:-1])
    rng = np.random.default_rng([seed, 0x5B])
    tars = []
    for _ in range(replicates):
        rows = np.concatenate([members[i] for i in rng.integers(0, k, k)])
        if y[rows].all() or not y[rows].any():
            continue
        tars.append(tar_at_far(s[rows], y[rows], far).tar)
    if not tars:
        return float("nan"), float("nan")
    lo, hi = np.quantile(tars, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def evaluate(sims: np.ndarray, same: np.ndarray, folds: np.ndarray, fars: tuple[float, ...] = FARS,
             thresholds: np.ndarray | None = None, subjects: np.ndarray | None = None,
             confidence: float = 0.95) -> dict[str, Any]:
    """Every figure of one condition: 10-fold accuracy, TAR at each FAR, AUC, and the ROC arrays.

    With ``subjects`` (each pair's subject: its first image's identity), intervals over
    subjects: ``accuracy_lo``/``_hi`` (:func:`subject_accuracy_interval`) and
    ``tar_<far>_lo``/``_hi`` (:func:`subject_bootstrap_tar`); a subject's pairs are not
    independent draws, so the fold standard deviation alone says little about other people.
    """
    s, y = _check(sims, same)
    fa = fold_accuracy(s, y, folds, thresholds)
    fpr, tpr, _ = roc(s, y)
    out: dict[str, Any] = {
        "pairs": int(s.size), "positives": int(y.sum()), "negatives": int((~y).sum()),
        "folds": int(np.unique(folds).size), "accuracy": fa.mean, "accuracy_std": fa.std,
        "threshold": float(fa.thresholds.mean()), "auc": auc(fpr, tpr), "roc": (fpr, tpr),
    }
    for far in fars:
        r = tar_at_far(s, y, far)
        key = far_key(far)
        out[f"tar_{key}"] = r.tar
        out[f"threshold_{key}"] = r.threshold
        out[f"far_achieved_{key}"] = r.far_achieved
        out[f"resolvable_{key}"] = r.resolvable
        if subjects is not None:
            out[f"tar_{key}_lo"], out[f"tar_{key}_hi"] = subject_bootstrap_tar(s, y, subjects, far, confidence)
    if subjects is not None:
        out["accuracy_lo"], out["accuracy_hi"] = subject_accuracy_interval(s, y, folds, fa.thresholds, subjects,
                                                                           confidence)
        out["subjects"] = int(np.unique(subjects).size)
    return out


def far_label(far: float) -> str:
    """``1e-3`` for 0.001 (no zero padding)."""
    return f"{far:.0e}".replace("e-0", "e-").replace("e+0", "e")


def far_key(far: float) -> str:
    """Column suffix of one FAR: 0.001 -> ``far_1e-3``."""
    return f"far_{far_label(far)}"
