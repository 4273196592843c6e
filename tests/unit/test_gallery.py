"""The enrolled gallery's pure parts: entries, merges, centroids per mask, stale model versions."""

from __future__ import annotations

import numpy as np
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.serving.gallery import Gallery, check_identity, entry_from, unit


def _emb(seed: int, n: int, m: int, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, m, d)).astype(np.float32)


def test_centroids_are_per_mask_and_fall_back_to_all_masks(tmp_path):
    g = Gallery(tmp_path / "gallery")
    emb = _emb(0, 3, 2)
    g.add(entry_from("ann", "v1", ["m0", "m1"], emb))
    names, mat, fallback = g.matrix("m1", "v1")
    assert names == ["ann"] and fallback == []
    np.testing.assert_allclose(mat[0], unit(unit(emb[:, 1]).sum(0)), atol=1e-6)
    names, mat, fallback = g.matrix("m9", "v1")  # a mask served after the enrollment
    assert fallback == ["ann"] and np.isclose(np.linalg.norm(mat[0]), 1)
    assert g.matrix("m0", "v2")[0] == []  # another model's embeddings are never matched
    # A second replica enrolls: the cached matrix of this one gives way once it sees the change.
    Gallery(tmp_path / "gallery").add(entry_from("cy", "v1", ["m0", "m1"], _emb(5, 1, 2)))
    assert g.matrix("m1", "v1")[0] == ["ann", "cy"]


def test_merging_counts_images_and_a_retrained_model_replaces_stale_entries(tmp_path):
    g = Gallery(tmp_path)
    g.add(entry_from("bo", "v1", ["m0"], _emb(1, 1, 1)))  # a premasked upload: one mask
    entry, replaced = g.add(entry_from("bo", "v1", ["m0", "m1"], _emb(2, 2, 2)))
    assert (entry.images, entry.mask_ids, replaced) == (3, ["m0", "m1"], False)
    assert Gallery(tmp_path).entries()["bo"].images == 3  # a second replica reads the same
    entry, replaced = g.add(entry_from("bo", "v2", ["m0"], _emb(3, 1, 1)))
    assert (entry.images, replaced) == (1, True)
    assert g.remove("bo") and not g.remove("bo") and g.entries() == {}
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_bad_names_and_unreadable_entries_are_named(tmp_path):
    for bad in ("", "  ", " x", "a\nb", "x" * 201):
        with pytest.raises(MaskcryptError, match="identity name"):
            check_identity(bad)
    assert check_identity("Ann O'Neil (2)") == "Ann O'Neil (2)"
    with pytest.raises(MaskcryptError, match="1 image"):
        entry_from("x", "v", ["m0", "m1"], _emb(0, 1, 1))
    (tmp_path / "0123.npz").write_bytes(b"not a zip")
    with pytest.raises(MaskcryptError, match=r"0123\.npz is unreadable"):
        Gallery(tmp_path).entries()
