"""The verification protocol (numpy only), the insightface .bin source and generated pairs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data import describe, load
from maskcrypt.data.binfile import read_bin, write_bin
from maskcrypt.data.pairs import generate_pairs
from maskcrypt.verification.protocol import (
    best_threshold,
    consecutive_folds,
    evaluate,
    fold_accuracy,
    insightface_grid,
    roc,
    tar_at_far,
)


# -- the protocol --------------------------------------------------------------------------------------------
def test_fold_accuracy_matches_a_hand_computed_case():
    # (similarity, same, fold); worked out by hand in the comments.
    sims = np.array([0.9, 0.2, 0.7, 0.6, 0.5, 0.8])
    same = np.array([1, 0, 1, 0, 1, 0])
    folds = np.array([0, 0, 1, 1, 2, 2])
    r = fold_accuracy(sims, same, folds)
    # Fold 0, trained on {0.7 T, 0.6 F, 0.5 T, 0.8 F}: cuts -0.5 / 0.65 / 1.8 all judge 2 of 4 right; the highest
    # (1.8: every pair "different") wins the tie; on fold 0, 0.9 T is then wrong and 0.2 F right: 1/2.
    # Fold 1, trained on {0.9 T, 0.2 F, 0.5 T, 0.8 F}: cuts 0.35 and 0.85 both get 3 of 4; 0.85 wins the tie;
    # 0.7 T is wrong, 0.6 F right: 1/2.
    # Fold 2, trained on {0.9 T, 0.2 F, 0.7 T, 0.6 F}: 0.65 separates them; 0.5 T and 0.8 F are both wrong: 0.
    np.testing.assert_allclose(r.thresholds, [1.8, 0.85, 0.65])
    np.testing.assert_allclose(r.accuracy, [0.5, 0.5, 0.0])
    assert r.mean == pytest.approx(1 / 3)
    assert r.std == pytest.approx(np.sqrt(1 / 18))  # population std, as insightface's np.std


def test_ties_are_exact_and_deterministic():
    # Equal similarities always get the same decision: the only cuts are below and above them all.
    t, correct = best_threshold(np.full(4, 0.3), np.array([1, 1, 1, 0]))
    assert t < 0.3 and correct == 3
    t, correct = best_threshold(np.full(4, 0.3), np.array([1, 0, 0, 0]))
    assert t > 0.3 and correct == 3
    # A tie in accuracy between two cuts: the higher one.
    t, correct = best_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 1, 0, 1]))
    assert correct == 3 and t == pytest.approx(0.75)
    # Shuffling the pairs inside the folds changes nothing.
    rng = np.random.default_rng(0)
    sims = np.round(rng.random(200), 1)  # many ties
    same = rng.random(200) < 0.5
    folds = consecutive_folds(200)
    perm = rng.permutation(200)
    a = fold_accuracy(sims, same, folds)
    b = fold_accuracy(sims[perm], same[perm], folds[perm])
    np.testing.assert_array_equal(a.accuracy, b.accuracy)


def test_tar_at_far_hand_case_ties_and_resolution():
    neg = [0.9, 0.5, 0.4, 0.3, 0.1]
    pos = [0.95, 0.85, 0.5, 0.2]
    sims = np.array(neg + pos)
    same = np.array([0] * 5 + [1] * 4)
    r = tar_at_far(sims, same, 0.2)  # one false accept allowed: threshold at the second-highest negative
    assert (r.threshold, r.tar, r.far_achieved, r.negatives, r.resolvable) == (0.5, 0.5, 0.2, 5, True)
    r = tar_at_far(sims, same, 0.1)  # 0.1 x 5 < 1: no false accept allowed, flagged
    assert (r.threshold, r.tar, r.far_achieved, r.resolvable) == (0.9, 0.25, 0.0, False)
    tied = np.array([0.9, 0.9, 0.4, 0.3, 0.1, *pos])
    r = tar_at_far(tied, same, 0.2)  # both 0.9s or neither: neither, so FAR 0 and only 0.95 accepted
    assert (r.threshold, r.far_achieved, r.tar) == (0.9, 0.0, 0.25)
    fpr, tpr, _ = roc(sims, same)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    with pytest.raises(MaskcryptError, match="positive and negative"):
        tar_at_far(np.array([0.1, 0.2]), np.array([1, 1]), 1e-3)


def _insightface_accuracy(emb1, emb2, same, thresholds_d, n_folds=10):
    """insightface's calculate_roc, re-expressed here in loops: squared distance, grid, first best."""
    dist = ((emb1 - emb2) ** 2).sum(1)
    folds = consecutive_folds(len(same), n_folds)
    acc = []
    for k in range(n_folds):
        train, test = folds != k, folds == k
        train_acc = [np.mean((dist[train] < t) == same[train]) for t in thresholds_d]
        best = thresholds_d[int(np.argmax(train_acc))]
        acc.append(np.mean((dist[test] < best) == same[test]))
    return np.array(acc)


def test_insightface_grid_reproduces_insightface_and_exact_cuts_do_at_least_as_well_on_training():
    rng = np.random.default_rng(3)
    n = 300
    a = rng.normal(size=(n, 16))
    b = a + rng.normal(scale=1.2, size=(n, 16))
    same = np.zeros(n, bool)
    same[::2] = True
    b[~same] = rng.normal(size=((~same).sum(), 16))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sims = (a * b).sum(1)
    folds = consecutive_folds(n)
    ours = fold_accuracy(sims, same, folds, thresholds=insightface_grid())
    theirs = _insightface_accuracy(a, b, same, np.arange(0, 4, 0.01))
    np.testing.assert_allclose(ours.accuracy, theirs)
    exact = fold_accuracy(sims, same, folds)
    for k in range(10):
        train = folds != k
        _, best_exact = best_threshold(sims[train], same[train])
        _, best_grid = best_threshold(sims[train], same[train], insightface_grid())
        assert best_exact >= best_grid
    assert abs(exact.mean - ours.mean) < 0.05
    out = evaluate(sims, same, folds)
    assert out["pairs"] == n and out["negatives"] == 150 and out["resolvable_far_1e-3"] is False
    assert 0.5 < out["auc"] <= 1.0


def test_consecutive_folds_are_sklearn_kfold_sizes():
    f = consecutive_folds(23)
    assert np.bincount(f).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2] and np.all(np.diff(f) >= 0)
    with pytest.raises(MaskcryptError, match="cannot make 10 folds"):
        consecutive_folds(5)


# -- generated pairs -----------------------------------------------------------------------------------------
def test_generated_pairs_are_identity_disjoint_balanced_and_seeded():
    labels = np.repeat(np.arange(30), 6)
    pairs, disjoint = generate_pairs(labels, per_fold=20, seed=1)
    assert disjoint and len(pairs) == 10 * 40
    a, b, same, fold = pairs.T
    assert np.array_equal(labels[a] == labels[b], same == 1)
    for k in range(10):
        assert (same[fold == k] == 1).sum() == (same[fold == k] == 0).sum() == 20
        for j in range(k + 1, 10):
            assert not set(labels[a[fold == k]]) & set(labels[a[fold == j]])
    assert len({(min(x, y), max(x, y)) for x, y in zip(a, b)}) == len(pairs)  # no pair twice
    assert np.array_equal(generate_pairs(labels, per_fold=20, seed=1)[0], pairs)
    assert not np.array_equal(generate_pairs(labels, per_fold=20, seed=2)[0], pairs)
    few, disjoint = generate_pairs(np.repeat(np.arange(4), 5), per_fold=3)
    assert not disjoint and set(few[:, 3]) == set(range(10))
    with pytest.raises(MaskcryptError, match="too few same-identity pairs"):
        generate_pairs(np.arange(40))


def test_synthetic_split_with_generated_pairs():
    ds = load("synthetic:identities=20,per_identity=5#split=all,pairs=generate,pairs_per_fold=4")
    assert ds.pairs.shape == (80, 4) and set(ds.pairs[:, 3]) == set(range(10))
    assert np.array_equal(ds.labels[ds.pairs[:, 0]] == ds.labels[ds.pairs[:, 1]], ds.pairs[:, 2] == 1)
    with pytest.raises(MaskcryptError, match="pairs must be 'generate'"):
        load("synthetic:#pairs=maybe")


# -- insightface .bin --------------------------------------------------------------------------------------------
def _bin_images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 112, 112), dtype=np.uint8)


def test_bin_roundtrip_pairs_and_folds(tmp_path):
    images = _bin_images()
    pairs = np.array([(2 * i, 2 * i + 1, i % 2, i // 2) for i in range(20)])
    write_bin(tmp_path / "lfw.bin", images, pairs)
    bins, same = read_bin(tmp_path / "lfw.bin")
    assert len(bins) == 40 and same == [bool(i % 2) for i in range(20)]
    ds = load(f"bin:{tmp_path / 'lfw.bin'}", default_split="test", verification=True)
    np.testing.assert_array_equal(ds.images, images)  # PNG: lossless
    np.testing.assert_array_equal(ds.pairs, pairs)  # consecutive pairs, 10 consecutive folds of 2
    assert ds.verification_only
    info = describe(f"bin:{tmp_path / 'lfw.bin'}")
    assert info["pairs"] == 20 and info["verification_only"] and "112x112 PNG" in info["native"]
    small = load(f"bin:{tmp_path / 'lfw.bin'}#size=32", verification=True)
    assert small.images.shape == (40, 3, 32, 32)


def test_bin_written_by_python2_with_jpeg_bytes_reads(tmp_path):
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, 112)
    images = np.stack([np.stack([np.add.outer(ramp, ramp * (k % 3)) / (1 + k % 3)] * 3) for k in range(20)])
    images = images.clip(0, 255).astype(np.uint8)  # smooth: what JPEG keeps
    bins = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im.transpose(1, 2, 0)).save(buf, format="JPEG", quality=95)
        bins.append(buf.getvalue())
    # Protocol 2 as Python 2's cPickle wrote it: the byte strings are py2 str (BINSTRING opcodes), which only
    # encoding="bytes" reads back as bytes (Python 3's own protocol 2 would go through _codecs.encode instead).
    payload = b"\x80\x02](" + b"".join(b"T" + len(b).to_bytes(4, "little") + b for b in bins) + b"e]("
    payload += b"\x88\x89" * 5 + b"e\x86."
    (tmp_path / "py2.bin").write_bytes(payload)
    ds = load(f"bin:{tmp_path / 'py2.bin'}", verification=True)
    assert ds.images.shape == (20, 3, 112, 112) and ds.pairs[:, 2].tolist() == [1, 0] * 5
    assert np.abs(ds.images.astype(int) - images).mean() < 8  # JPEG


def test_bad_bin_files_are_named_errors(tmp_path):
    images = _bin_images(4)
    ok = tmp_path / "ok.bin"
    write_bin(ok, images, np.array([(0, 1, 1, 0), (2, 3, 0, 1)]))
    with pytest.raises(MaskcryptError, match="serves verification only"):
        load(f"bin:{ok}")  # training or identification
    with pytest.raises(MaskcryptError, match="serves verification only"):
        from maskcrypt.data import ray_dataset

        ray_dataset(f"bin:{ok}")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))  # not print: a Ray session in the process replaces it

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Evil()], [True])))
    with pytest.raises(MaskcryptError, match=r"refers to (posix|os)\.system.*only lists, tuples, bytes and bools"):
        read_bin(tmp_path / "evil.bin")
    (tmp_path / "np.bin").write_bytes(pickle.dumps((images, [True, False])))
    with pytest.raises(MaskcryptError, match="refers to numpy"):
        read_bin(tmp_path / "np.bin")
    (tmp_path / "dict.bin").write_bytes(pickle.dumps({"bins": []}))
    with pytest.raises(MaskcryptError, match=r"expected a pickle of \(bins, issame_list\), got a dict"):
        read_bin(tmp_path / "dict.bin")
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(MaskcryptError, match="3 images, an odd count"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "count.bin").write_bytes(pickle.dumps(([b"a", b"b"], [True, False])))
    with pytest.raises(MaskcryptError, match="2 images for 2 pairs"):
        read_bin(tmp_path / "count.bin")
    (tmp_path / "ints.bin").write_bytes(pickle.dumps(([b"a", b"b"], [1])))
    with pytest.raises(MaskcryptError, match="issame_list must be a list of bools"):
        read_bin(tmp_path / "ints.bin")
    (tmp_path / "text.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(MaskcryptError, match="not a readable pickle"):
        read_bin(tmp_path / "text.bin")
    bins, same = read_bin(ok)
    (tmp_path / "broken.bin").write_bytes(pickle.dumps(([bins[0], b"\xff\xd8 garbage", *bins[2:]], same)))
    with pytest.raises(MaskcryptError, match=r"broken\.bin: image 1 \(pair 0\): not a decodable JPEG/PNG"):
        load(f"bin:{tmp_path / 'broken.bin'}", verification=True)
    with pytest.raises(MaskcryptError, match=r"a \.bin holds its own pairs"):
        load(f"bin:{ok}#pairs=generate", verification=True)
