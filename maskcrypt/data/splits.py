"""Deterministic train/test splits for sources that have none of their own.

Two kinds, both a pure function of (labels, seed, fraction):

* by image within each class (closed set: the test classes are training classes);
  each class's images are shuffled with a seed of their own and the first
  ``round(fraction * n)`` go to test, at least one when a class has two or more
  images, none when it has one;
* by identity (open set: test identities are never seen in training), a seeded
  ``round(fraction * K)`` of the classes, at least one, go to test.
"""

from __future__ import annotations

import numpy as np

from maskcrypt.core.errors import MaskcryptError


def split_by_image(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """``'train'``/``'test'`` per item, a seeded fraction of each class's images in test."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, "train", dtype="<U5")
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if idx.size < 2:
            continue
        n_test = min(max(round(test_fraction * idx.size), 1), idx.size - 1)
        order = np.random.default_rng([seed, 0x5EED, int(cls)]).permutation(idx.size)
        out[idx[order[:n_test]]] = "test"
    return out


def split_by_identity(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """``'train'``/``'test'`` per item, whole classes assigned (disjoint identities)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise MaskcryptError(
            f"split_by=identity: needs at least two identities, found {classes.size}"
        )
    n_test = min(max(round(test_fraction * classes.size), 1), classes.size - 1)
    order = np.random.default_rng([seed, 0x1DE7]).permutation(classes.size)
    test_classes = classes[order[:n_test]]
    return np.where(np.isin(labels, test_classes), "test", "train").astype("<U5")
