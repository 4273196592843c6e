"""Deterministic train/test splits for sources that have none of their own.

Two kinds, both a pure function of (labels, seed, fraction):

* by image within each class (closed set: the test classes are training classes);
  each class's images are shuffled with a seed of their own and the first
  ``round(fraction * n)`` go to test, at least one when a class has two or more
  images, none when it has one;
* by identity (open set: test identities are never seen in training), a seeded
  ``round(fraction * K)`` of the classes, at least one, go to test; within the other
  classes a seeded ``val_fraction`` of each class's images goes to ``val``, the closed-set
  held-out images that training and its report measure E and O on (the test split has none
  of their classes).
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


def split_by_identity(labels: np.ndarray, test_fraction: float, seed: int, val_fraction: float = 0.0) -> np.ndarray:
    """``'train'``/``'val'``/``'test'`` per item: whole classes to test (disjoint identities), then ``val`` a
    fraction of each remaining class's images, by the by-image rule (none with ``val_fraction`` 0)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise MaskcryptError(
            f"split_by=identity: needs at least two identities, found {classes.size}"
        )
    n_test = min(max(round(test_fraction * classes.size), 1), classes.size - 1)
    order = np.random.default_rng([seed, 0x1DE7]).permutation(classes.size)
    test_classes = classes[order[:n_test]]
    out = np.where(np.isin(labels, test_classes), "test", "train").astype("<U5")
    if val_fraction > 0:
        kept = np.flatnonzero(out == "train")
        out[kept] = np.char.replace(split_by_image(labels[kept], val_fraction, seed), "test", "val")
    return out
