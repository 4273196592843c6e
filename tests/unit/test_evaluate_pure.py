"""The evaluator's pure parts: test-set preparation, sampled-mode shipping, the race's gallery cache and its cost."""

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



def test_the_race_keeps_each_masks_gallery_centroids_once_within_a_budget():
    """The open-set race's per-actor cache: least recently used out first, dropped masks free their bytes."""
    import torch

    from maskcrypt.evaluation.scorer import CentroidCache

    def cents(v: float) -> dict[str, torch.Tensor]:
        return {"E": torch.full((4, 8), v)}  # 4 x 8 float32: 128 bytes a mask

    cache = CentroidCache(budget_bytes=3 * 128)
    for key in "abc":
        cache.put(key, cents(float(ord(key))))
    assert len(cache) == 3 and cache.nbytes == 3 * 128
    assert cache.get("a") is not None  # "a" is now the most recently used: "b" goes first
    cache.put("d", cents(1.0))
    assert cache.get("b") is None and cache.evicted == 1 and {k for k in "acd" if cache.get(k)} == set("acd")
    cache.drop(["c", "zz"])  # an unknown id is no error: the race releases masks an actor may have evicted
    assert len(cache) == 2 and cache.nbytes == 2 * 128
    cache.put("a", cents(2.0))  # replacing an entry counts its bytes once
    assert cache.nbytes == 2 * 128 and float(cache.get("a")["E"][0, 0]) == 2.0
    off = CentroidCache(budget_bytes=0)  # gallery_cache_mb 0: nothing kept, every round re-embeds
    off.put("a", cents(1.0))
    assert len(off) == 0 and off.nbytes == 0


def test_full_modes_passes_count_a_masked_gallery_per_mask_and_a_clean_one_per_actor():
    from maskcrypt.selection.race import full_mode_passes, versus_full

    # Closed set: every model on every probe of every mask.
    assert full_mode_passes(600, 240, 0, 1, 1, actors=2) == 600 * 240 * 2
    # Open set: E re-embeds the 160-image gallery under each mask, O embeds its clean one once in each actor.
    assert full_mode_passes(600, 160, 160, 1, 1, actors=2) == 600 * (160 * 2 + 160) + 160 * 2
    assert versus_full(1000, 400) == "2.5x fewer" and versus_full(1000, 1800) == "1.8x more"
