"""The Ray Data evaluator against a plain in-process loop, on the tiny trained run (fp32)."""

from __future__ import annotations

import numpy as np
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.evaluation.testset import prepare_test
from maskcrypt.masks import MaskLibrary
from maskcrypt.masks.generate import generate_into


def test_sampled_mode_ships_only_the_drawn_masks_packed(tmp_path):
    """Table 1's actors get at most repeats x images masks per bucket, bit-packed, however big the library."""
    from maskcrypt.evaluation.crossproduct import _drawn_masks
    from maskcrypt.masks.core import unpack_masks

    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    generate_into(lib, 120, seed=0, buckets=[6])
    got = _drawn_masks(lib, 6, repeats=2, seed=3, n_input=5)
    pool = lib.load([6]).masks
    drawn = {int(i) for r in range(2) for i in np.random.default_rng([3, 6, r]).integers(0, len(pool), 5)}
    assert got["size"] == len(pool) == 120 and list(got["index"]) == sorted(drawn) and len(drawn) <= 10
    assert got["packed"].shape == (len(drawn), 16 * 16 // 8)
    assert (unpack_masks(got["packed"], 16, 16) == pool[got["index"]]).all()


def test_prepare_test_scoring_gallery_and_splits():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 3, 8, 8), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 8)
    labels[-1] = 4
    names = ["a", "b", "c", "d", "e"]
    closed = prepare_test(images, labels, names, ["e", "d", "c", "b", "a", "z"], confirm_fraction=0.5, seed=1)
    assert closed.scoring == "closed" and closed.classes[0] == "e"
    # Labels now index the model's classes; every image kept exactly once, half of each identity held out.
    assert sorted(closed.order.tolist()) == list(range(40))
    assert [closed.classes[k] for k in closed.labels] == [names[k] for k in labels[closed.order]]
    for k in range(5):
        assert (closed.split[closed.labels == 4 - k] == 1).sum() == 4
    assert (np.diff(closed.split.astype(int)) >= 0).all()  # selection first, then confirmation
    assert np.array_equal(closed.images, images[closed.order])

    opened = prepare_test(images, labels, names, ["x", "y"], enroll=3, confirm_fraction=0.5, seed=1)
    assert opened.scoring == "open" and opened.classes == names
    assert opened.gallery[:15].all() and not opened.gallery[15:].any()  # 3 per identity, gallery first
    assert opened.probes("selection") + opened.probes("confirmation") == 25
    # Partly known identities are still open set; forcing closed names the unknown ones.
    assert prepare_test(images, labels, names, ["a", "b"]).scoring == "open"
    with pytest.raises(MaskcryptError, match=r"test identities \['c', 'd', 'e'\]"):
        prepare_test(images, labels, names, ["a", "b"], scoring="closed")
    few = prepare_test(images[:17], labels[:17], names, ["x"], enroll=2)  # identity c has 1 image: dropped
    assert few.dropped == ["c"] and len(few) == 16
    with pytest.raises(MaskcryptError, match="--confirm-fraction"):
        prepare_test(images, labels, names, names, confirm_fraction=1.0)
    with pytest.raises(MaskcryptError, match="at least two identities"):
        prepare_test(images[:8], labels[:8], names, ["x"])

