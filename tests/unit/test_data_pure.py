from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
from datasets import write_celeba, write_idx, write_imagefolder, write_lfw

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data import describe, load, parse_spec, source_split
from maskcrypt.data.sources import read_idx
from maskcrypt.data.spec import closed_held_out


# -- specs -----------------------------------------------------------------------------------
def test_spec_parsing_and_errors():
    s = parse_spec("synthetic:identities=5,per_identity=4,size=16#split=test")
    assert (s.kind, s.path, s.get("identities"), s.split) == ("synthetic", "", 5, "test")
    s = parse_spec("lfw:/data/lfw#split=all,crop=10,20,110,120,size=64")
    assert s.get("crop") == "10,20,110,120" and s.get("size") == "64"
    for bad, needle in [("nokind", "KIND:PATH"), ("foo:/x", "unknown kind 'foo'"),
                        ("imagefolder:", "needs a path"), ("npz:/x#bogus=1", "unknown option 'bogus'"),
                        ("npz:/x#split=dev", "split must be"), ("npz:/x#limit=abc", "not a valid int"),
                        ("synthetic:identities=0", "identities must be >= 1"), ("npz:/x#size=2", "at least 4x4")]:
        with pytest.raises(MaskcryptError, match=needle):
            parse_spec(bad)


# -- synthetic -------------------------------------------------------------------------------
def test_synthetic_is_deterministic_split_and_sized():
    spec = "synthetic:identities=6,per_identity=10,size=24"
    train = load(spec, default_split="train")
    test = load(spec + "#split=test")
    # synthetic's own test fraction (0.12: 6 of the default 50 faces per person) rounds to 1 of 10 here
    assert train.images.shape == (54, 3, 24, 24) and test.images.shape == (6, 3, 24, 24)
    assert train.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [1] * 6
    assert len(load(spec + "#split=test,test_fraction=0.2")) == 12
    again = load(spec + "#split=test")
    np.testing.assert_array_equal(test.images, again.images)
    assert test.content_hash() == again.content_hash()
    other_seed = load(spec + "#split=test,seed=1")
    assert not np.array_equal(test.images, other_seed.images)
    grey = load(spec + "#split=test,channels=1", size=40)
    assert grey.images.shape == (6, 1, 40, 40)
    assert train.class_names[:2] == ["id000", "id001"]


def test_identity_cues_cover_the_whole_face():
    """Masking any half of the face must leave identity information on the other half."""
    ds = load("synthetic:identities=8,per_identity=12,size=32", default_split="all")
    x = ds.images.astype(np.float32)
    for region in (np.s_[:, :, :16, :], np.s_[:, :, 16:, :], np.s_[:, :, :, :16], np.s_[:, :, :, 16:]):
        part = x[region].reshape(len(ds), -1)
        means = np.stack([part[ds.labels == k].mean(0) for k in range(8)])
        within = np.mean([np.linalg.norm(part[ds.labels == k] - means[k], axis=1).mean() for k in range(8)])
        between = np.linalg.norm(means[:, None] - means[None], axis=2)[np.triu_indices(8, 1)].mean()
        assert between > 0.5 * within, (region, between, within)


def test_identity_split_is_disjoint():
    spec = "synthetic:identities=10,per_identity=3,size=16#split_by=identity,test_fraction=0.3"
    train, test = load(spec, default_split="train"), load(spec, default_split="test")
    assert set(train.labels).isdisjoint(set(test.labels))
    assert len(set(test.labels)) == 3 and len(train) + len(load(spec, default_split="val")) + len(test) == 30


def test_identity_split_holds_out_val_images_of_the_training_identities():
    """Training measures held-out accuracy on unseen images of its own classes: under split_by=identity that is
    ``val`` (a seeded val_fraction of each training identity's images), since test has only other identities."""
    spec = "synthetic:identities=10,per_identity=10,size=16#split_by=identity,test_fraction=0.3,val_fraction=0.2"
    train, val, test = (load(spec, default_split=s) for s in ("train", "val", "test"))
    assert set(test.labels).isdisjoint(set(train.labels)) and set(val.labels) == set(train.labels)
    assert (len(train), len(val), len(test)) == (56, 14, 30)
    assert load(spec.replace("val_fraction=0.2", "val_fraction=0"), default_split="train").labels.size == 70
    # the test identities do not move with val_fraction
    assert set(load(spec.replace("0.2", "0.5"), default_split="test").labels) == set(test.labels)
    assert closed_held_out(spec) == spec + ",split=val"
    assert closed_held_out("synthetic:identities=4") == "synthetic:identities=4"  # by image: test already is
    assert closed_held_out(spec + ",split=test") == spec + ",split=test"  # an explicit split is kept
    with pytest.raises(MaskcryptError, match="val_fraction"):
        parse_spec(spec.replace("0.2", "1.5"))


def test_val_fraction_leaves_the_fingerprints_of_image_splits_unchanged():
    """val_fraction moves images only between an identity split's train and val, so it is in their fingerprints
    only (runs made before it existed keep matching)."""
    plain = source_split("synthetic:identities=4,per_identity=5,size=16", default_split="test")
    other = source_split("synthetic:identities=4,per_identity=5,size=16#val_fraction=0.5", default_split="test")
    assert plain.fingerprint() == other.fingerprint()
    ident = "synthetic:identities=6,per_identity=5,size=16#split_by=identity"
    assert (source_split(ident, default_split="test").fingerprint()
            == source_split(ident + ",val_fraction=0.4", default_split="test").fingerprint())
    assert (source_split(ident, default_split="train").fingerprint()
            != source_split(ident + ",val_fraction=0.4", default_split="train").fingerprint())


# -- imagefolder -----------------------------------------------------------------------------
def test_imagefolder_split_filters_and_corrupt_files(tmp_path):
    root = write_imagefolder(tmp_path / "faces", classes=3, per_class=5, corrupt=True, empty_class=True)
    spec = f"imagefolder:{root}#size=20"
    with pytest.warns(UserWarning, match="no images"):
        info = describe(spec)
    assert info["classes"] == 3 and info["images"] == 16
    with pytest.warns(UserWarning) as caught:
        ds = load(spec, default_split="all")
    assert any("skipped 1 unreadable" in str(w.message) for w in caught)
    assert ds.images.shape == (15, 3, 20, 20)
    assert ds.skipped and "zzz_broken.jpg" in ds.skipped[0][0]
    assert ds.class_names == ["person_0", "person_1", "person_2"]
    with pytest.warns(UserWarning), pytest.raises(MaskcryptError, match="strict=1"):
        load(spec + ",strict=1", default_split="all")
    # Seeded split by image within each class: same classes on both sides, disjoint images.
    with pytest.warns(UserWarning):
        train = load(spec, default_split="train")
        test = load(spec, default_split="test")
    assert set(train.paths).isdisjoint(test.paths)
    assert set(test.labels) == {0, 1, 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the seeded pick may or may not include the broken file
        limited = load(spec + ",limit=4,max_classes=2", default_split="all")
    assert len(limited) + len(limited.skipped) == 4 and set(limited.labels) <= {0, 1}
    assert limited.class_names == ["person_0", "person_1"]


def test_imagefolder_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskcryptError, match="no images under"):
        load(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(MaskcryptError, match="is not a directory"):
        load(f"imagefolder:{tmp_path / 'missing'}")


def test_held_out_masks_are_drawn_per_item_of_the_whole_split_whatever_the_sample():
    """A held-out split over the per-epoch limit: items are numbers in the whole split, past the sample's size.

    Before, masks were drawn for the sample's size and indexed by the item number: an
    IndexError at the end of E's first epoch on any held-out split over 2,000 images.
    """
    from maskcrypt.train.feed import held_out_masks, per_item_choice
    from maskcrypt.train.placement import held_out_order

    pool = np.arange(7, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)  # mask i is filled with i
    cfg = {"train_config": {"seed": 0}, "eval_masks": pool, "masks": None, "val_size": 20}
    sample = held_out_order(3000, 20, seed=0)  # the 3,000-image held-out split of the report, limit 20
    assert sample.max() >= 20
    got = held_out_masks(cfg, sample)[:, 0, 0]
    whole = held_out_masks({**cfg, "val_size": 3000}, np.arange(3000))[:, 0, 0]
    assert np.array_equal(got, whole[sample])  # the same mask for the same image, in the sample or the whole split
    assert np.array_equal(held_out_masks(cfg, sample[::-1])[:, 0, 0], got[::-1])  # by item, not position
    draws = per_item_choice(0, np.arange(70_000), 7)
    assert draws.min() == 0 and draws.max() == 6 and np.bincount(draws).min() > 9_000  # spread over the pool
    assert not np.array_equal(per_item_choice(1, np.arange(100), 7), per_item_choice(0, np.arange(100), 7))


# -- lfw -------------------------------------------------------------------------------------
def test_lfw_crop_pairs_and_min_images(tmp_path):
    root = write_lfw(tmp_path / "lfw")
    ds = load(f"lfw:{root}#size=32", default_split="all")
    assert ds.images.shape == (6, 3, 32, 32)
    assert ds.class_names == ["Alice_Smith", "Bob_Jones", "Carol_White"]
    assert ds.pairs.shape == (3, 4)  # the pair naming a missing image is dropped
    a, b, same, fold = ds.pairs[0]
    assert ds.labels[a] == ds.labels[b] and same == 1 and fold == 0
    assert ds.pairs[1][2] == 0
    assert ds.pairs[2][3] == 1  # second fold
    info = describe(f"lfw:{tmp_path}")  # the parent of the name folders works too
    assert info["pairs"] == 4 and info["classes"] == 3
    multi = load(f"lfw:{root}#min_images_per_identity=2,size=16", default_split="all")
    assert multi.class_names == ["Alice_Smith", "Bob_Jones"] and len(multi) == 5
    # The default crop is the centre 150 x 150 box: a different picture from the full frame.
    full = load(f"lfw:{root}#size=32,crop=none", default_split="all")
    assert not np.array_equal(full.images, ds.images)


# -- celeba ----------------------------------------------------------------------------------
@pytest.mark.parametrize("official", [False, True])
def test_celeba_partition_is_the_split(tmp_path, official):
    root = write_celeba(tmp_path / "celeba", official_layout=official)
    spec = f"celeba:{root}#size=24"
    assert describe(spec)["splits"] == {"train": 8, "val": 2, "test": 2}
    test = load(spec, default_split="test")
    assert test.images.shape == (2, 3, 24, 24)
    assert [p.rsplit("/", 1)[1] for p in test.paths] == ["000011.jpg", "000012.jpg"]
    assert load(spec + ",split=val").paths[0].endswith("000009.jpg")
    assert load(spec, default_split="train").class_names == ["100", "101", "102"]


def test_celeba_missing_identity_file(tmp_path):
    (tmp_path / "c" / "img_align_celeba").mkdir(parents=True)
    with pytest.raises(MaskcryptError, match=r"identity_CelebA\.txt"):
        load(f"celeba:{tmp_path / 'c'}")


# -- idx ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_train_and_t10k_are_the_splits(tmp_path, gz):
    root = write_idx(tmp_path / "mnist", gz=gz)
    info = describe(f"idx:{root}")
    assert info["splits"] == {"train": 20, "test": 10} and info["channels"] == 1 and info["size"] == [28, 28]
    test = load(f"idx:{root}", default_split="test")
    assert test.images.shape == (10, 1, 28, 28) and test.labels.tolist() == list(range(10))
    resized = load(f"idx:{root}#size=32,channels=3", default_split="train")
    assert resized.images.shape == (20, 3, 32, 32)


def test_idx_truncated_file_is_named(tmp_path):
    root = write_idx(tmp_path / "mnist", gz=False)
    f = root / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(MaskcryptError, match="train-images-idx3-ubyte: truncated idx file"):
        load(f"idx:{root}")
    g = root / "bad.gz"
    g.write_bytes(gzip.compress(b"hello")[:-4])
    with pytest.raises(MaskcryptError, match=r"corrupt gzip|not an idx"):
        read_idx(g)


# -- npz ---------------------------------------------------------------------------------------
def test_npz_layouts_split_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)  # N x H x W x C
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", images=x, labels=y, class_names=np.array(["a", "b", "c"]),
             split=np.array(["train"] * 9 + ["test"] * 3))
    test = load(f"npz:{tmp_path / 'd.npz'}", default_split="test")
    assert test.images.shape == (3, 3, 10, 10) and test.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(test.images[0], x[9].transpose(2, 0, 1))
    np.savez(tmp_path / "f.npz", images=x.astype(np.float32) / 255, labels=y)
    with pytest.raises(MaskcryptError, match="must be uint8"):
        load(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "m.npz", pixels=x)
    with pytest.raises(MaskcryptError, match=r"missing array\(s\) \['images', 'labels'\]"):
        load(f"npz:{tmp_path / 'm.npz'}")
    np.savez(tmp_path / "g.npz", images=x[..., 0], labels=y)  # N x H x W grey, seeded split
    assert describe(f"npz:{tmp_path / 'g.npz'}")["splits"] == {"train": 9, "test": 3}
    with pytest.raises(MaskcryptError, match="split 'val' is empty"):
        load(f"npz:{tmp_path / 'g.npz'}#split=val")


def test_held_out_synthetic_faces_share_no_image_with_any_training_split():
    """Benchmarks' and the capacity job's extra test faces are new images of the same people.

    The old way to get more faces (a larger ``per_identity``) rendered the training
    variants again: 40 of each identity's first 44 images were the default set's.
    """
    import hashlib

    from maskcrypt.data.synthetic import held_out_spec

    def digests(spec):
        return {hashlib.sha256(im.tobytes()).hexdigest() for im in load(spec, default_split="all", size=16).images}

    trained = digests("synthetic:#split=all")  # every image of the default source, train and test split
    assert len(trained) == 4000
    assert not trained & digests(held_out_spec(80, 2))
    assert len(trained & digests("synthetic:per_identity=52#split=all")) == 4000
    same_people = load(held_out_spec(80, 2), default_split="all", size=16)
    assert same_people.class_names == load("synthetic:", default_split="all", size=16).class_names

