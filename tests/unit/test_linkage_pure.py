"""Linkage of unseen identities (maskcrypt.verification.linkage): the split, the layout and the figures."""

from __future__ import annotations

import numpy as np
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.verification.linkage import linkage_figures, split_identities, victim_layout


def test_identities_split_by_name_seeded_disjoint_and_both_sides_kept():
    names = [f"id{i}" for i in range(10)]
    victims, others = split_identities(names, 0.5, 3)
    assert len(victims) == 5 and not set(victims) & set(others) and sorted(victims + others) == sorted(names)
    assert split_identities(names[::-1], 0.5, 3) == (victims, others)  # the order given does not matter
    assert split_identities(names, 0.5, 4) != (victims, others)
    assert [len(v) for v, _ in (split_identities(names[:2], 0.9, 0), split_identities(names[:3], 0.01, 0))] == [1, 1]
    assert split_identities(["a", "a"], 0.5, 0) == ([], ["a"])  # one identity: nobody can be a victim


def test_closed_set_victims_get_a_seeded_gallery_and_probes_that_keep_their_split():
    labels = np.repeat([0, 1, 2, 3], [4, 1, 3, 5])
    split = np.arange(len(labels)) % 2
    lay = victim_layout(labels, split, np.zeros(len(labels), bool), ["a", "b", "c", "d"], ["a", "b", "d"], 2, 0)
    assert lay.dropped == ["b"]  # one photo: no gallery and probe both
    assert np.bincount(labels[lay.gallery], minlength=4).tolist() == [2, 0, 0, 2]
    assert np.bincount(labels[lay.probes], minlength=4).tolist() == [2, 0, 0, 3]
    assert not set(lay.gallery) & set(lay.probes) and (lay.probe_split == split[lay.probes]).all()
    open_gallery = np.isin(np.arange(len(labels)), [0, 8])  # an open-set test set brings its own gallery
    lay = victim_layout(labels, split, open_gallery, ["a", "b", "c", "d"], ["a", "d"], 2, 0)
    assert lay.gallery.tolist() == [0, 8] and lay.probes.tolist() == [1, 2, 3, 9, 10, 11, 12]


def test_recall_at_1_and_tar_equal_a_brute_force_and_small_sets_leave_the_tar_empty():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    g_labels = np.repeat(np.arange(40), 2)
    p_labels = np.repeat(np.arange(40), 4)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    gallery = unit(centres[g_labels] + 0.8 * rng.normal(size=(80, 16)))
    probes = unit(centres[p_labels] + 1.2 * rng.normal(size=(160, 16)))
    got = linkage_figures(probes, p_labels, gallery, g_labels)
    sims = probes @ gallery.T
    assert got["recall_at_1"] == np.mean([g_labels[np.argmax(s)] == y for s, y in zip(sims, p_labels)])
    assert got["recall_at_1_chance"] == 1 / 40 and (got["n_probes"], got["n_gallery"]) == (160, 80)
    same = p_labels[:, None] == g_labels[None, :]
    neg = np.sort(sims[~same])[::-1]
    assert got["impostor_pairs"] == neg.size == 160 * 80 - 320
    for far, key in ((1e-2, "tar_at_far_1e-2"), (1e-3, "tar_at_far_1e-3")):  # 12,480 impostors >= 10 / FAR
        threshold = neg[int(np.floor(far * neg.size))]
        assert got[key] == pytest.approx((sims[same] > threshold).mean())
    fewer = linkage_figures(probes[:100], p_labels[:100], gallery, g_labels)  # 7,800 impostor pairs
    assert np.isnan(fewer["tar_at_far_1e-3"]) and not np.isnan(fewer["tar_at_far_1e-2"])
    small = linkage_figures(probes[:8], p_labels[:8], gallery[:8], g_labels[:8])
    assert np.isnan(small["tar_at_far_1e-2"]) and 0 <= small["recall_at_1"] <= 1
    with pytest.raises(MaskcryptError, match="at least one probe"):
        linkage_figures(probes[:0], p_labels[:0], gallery, g_labels)


def test_linkage_refuses_missing_weights_by_name_and_skips_with_too_few_identities(tmp_path):
    """The linkage job's inputs (no model, no Ray): a missing --attacker-weights file is named; a test set whose
    identities cannot fill both sides is skipped with the reason recorded."""
    from types import SimpleNamespace

    from maskcrypt.config import AttackConfig
    from maskcrypt.determine.attackers import linkage_job

    def determination(weights: str, test_ids: int):
        test = SimpleNamespace(classes=[f"id{i}" for i in range(6)], labels=np.arange(test_ids).repeat(3))
        return SimpleNamespace(test=test, attack=AttackConfig(attacker_weights=weights), result={"attack": {}},
                               log=lambda *_: None,
                               paths=SimpleNamespace(attackers=tmp_path, models=tmp_path / "models"))

    data = {"labels": np.arange(6).repeat(4), "class_names": [f"id{i}" for i in range(6)], "spec": "x",
            "sha256": "0"}
    meta = {"train_config": {"seed": 0}}
    with pytest.raises(MaskcryptError, match=r"--attacker-weights .*nowhere\.pt: no such file"):
        linkage_job(determination(str(tmp_path / "nowhere.pt"), 6), data, np.ones((2, 8, 8), np.uint8), 1,
                    tmp_path, meta)
    d = determination("", 1)
    assert linkage_job(d, data, np.ones((2, 8, 8), np.uint8), 1, tmp_path, meta) is None
    assert "too few identities" in d.result["attack"]["linkage"]["skipped"]
