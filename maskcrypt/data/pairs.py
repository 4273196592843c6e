"""Verification pairs generated from a labelled image set, LFW-style (``SPEC#pairs=generate``).

LFW's ``pairs.txt`` has 10 folds of 300 same and 300 different pairs, and its folds
share no identity, so a threshold chosen on nine folds is tested on people it never
saw. :func:`generate_pairs` builds the same shape from any labelled set: identities are
dealt (seeded) into 10 folds; inside each fold, positive pairs are two images of one
identity and negative pairs images of two, sampled without repetition. Every fold gets
the same number of each (``per_fold``, or fewer when some fold has fewer distinct
positive pairs). With fewer than two identities per fold the folds cannot be identity-
disjoint: then pairs are drawn over all identities and dealt into folds in turn
(``disjoint`` says which was done).
"""

from __future__ import annotations

import numpy as np

from maskcrypt.core.errors import MaskcryptError

#: Folds of the verification protocol (10, as LFW's and insightface's).
FOLDS = 10


def consecutive_folds(n_pairs: int, folds: int = FOLDS) -> np.ndarray:
    """Fold of each of ``n_pairs`` consecutive pairs: sklearn ``KFold(folds)`` without shuffling.

    The first ``n_pairs % folds`` folds are one pair longer, as in insightface's ``LFold``.
    """
    if n_pairs < folds:
        raise MaskcryptError(f"verification: {n_pairs} pairs cannot make {folds} folds")
    sizes = np.full(folds, n_pairs // folds)
    sizes[: n_pairs % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def _positive_pool(labels: np.ndarray, members: np.ndarray) -> int:
    counts = np.bincount(labels[members])
    return int((counts * (counts - 1) // 2).sum())


def _sample(labels: np.ndarray, members: np.ndarray, n: int, same: bool, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct unordered pairs (i < j) of ``members`` with equal (``same``) or different labels."""
    if n == 0:
        return np.zeros((0, 2), np.int64)
    lab = labels[members]
    if same:
        groups = [members[lab == c] for c in np.unique(lab)]
        groups = [g for g in groups if g.size >= 2]
        total = sum(g.size * (g.size - 1) // 2 for g in groups)
    else:
        total = members.size * (members.size - 1) // 2 - _positive_pool(labels, members)
    if total < n:
        raise MaskcryptError(f"generated pairs: only {total} {'same' if same else 'different'}-identity pairs "
                             f"available, {n} needed")
    if total <= 4 * n + 64:  # few: enumerate them all, then choose
        if same:
            rows = [np.stack(np.triu_indices(g.size, 1), 1) for g in groups]
            allp = np.concatenate([g[r] for g, r in zip(groups, rows)])
        else:
            i, j = np.triu_indices(members.size, 1)
            keep = lab[i] != lab[j]
            allp = np.stack([members[i[keep]], members[j[keep]]], 1)
        return allp[np.sort(rng.choice(len(allp), n, replace=False))]
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    if same:
        weights = np.array([g.size * (g.size - 1) / 2 for g in groups])
        weights /= weights.sum()
    while len(out) < n:
        if same:
            g = groups[rng.choice(len(groups), p=weights)]
            a, b = rng.choice(g, 2, replace=False)
        else:
            a, b = rng.choice(members, 2, replace=False)
            if labels[a] == labels[b]:
                continue
        key = (int(min(a, b)), int(max(a, b)))
        if key not in seen:
            seen.add(key)
            out.append(key)
    return np.asarray(out, np.int64)


def generate_pairs(labels: np.ndarray, per_fold: int = 300, seed: int = 0,
                   folds: int = FOLDS) -> tuple[np.ndarray, bool]:
    """Rows ``(index_a, index_b, same, fold)`` into ``labels``' images, fold by fold, same pairs first.

    Returns the pairs and whether the folds are identity-disjoint.
    """
    labels = np.asarray(labels, np.int64)
    if per_fold < 1:
        raise MaskcryptError(f"pairs_per_fold: expected >= 1, got {per_fold}")
    idents = np.unique(labels)
    rng = np.random.default_rng([seed, 0x9A175])
    disjoint = idents.size >= 2 * folds
    if disjoint:
        dealt = rng.permutation(idents)
        groups = [np.flatnonzero(np.isin(labels, dealt[k::folds])) for k in range(folds)]
    else:
        groups = [np.arange(labels.size)]
    pos_avail = min(_positive_pool(labels, g) for g in groups)
    neg_avail = min(g.size * (g.size - 1) // 2 - _positive_pool(labels, g) for g in groups)
    per_group = per_fold if disjoint else per_fold * folds
    n = min(per_group, pos_avail, neg_avail)
    if n < (1 if disjoint else folds):
        raise MaskcryptError(
            f"generated pairs: {labels.size} images of {idents.size} identities give too few same-identity "
            f"pairs (need identities with at least 2 images)"
        )
    rows = []
    for k, g in enumerate(groups):
        pos = _sample(labels, g, n, True, rng)
        neg = _sample(labels, g, n, False, rng)
        if disjoint:
            rows.append(np.c_[pos, np.ones(n, np.int64), np.full(n, k)])
            rows.append(np.c_[neg, np.zeros(n, np.int64), np.full(n, k)])
        else:  # deal each kind into the folds in turn, then order fold by fold
            fold = np.arange(n) % folds
            both = np.r_[np.c_[pos, np.ones(n, np.int64), fold], np.c_[neg, np.zeros(n, np.int64), fold]]
            rows.append(both[np.argsort(both[:, 3], kind="stable")])
    return np.concatenate(rows).astype(np.int64), disjoint
