from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import write_imagefolder

from maskcrypt.data import load, ray_dataset


def test_imagefolder_streams_through_ray_data(tmp_path, ray_session):
    root = write_imagefolder(tmp_path / "faces", classes=3, per_class=5, corrupt=True)
    spec = f"imagefolder:{root}#size=16"
    ds = ray_dataset(spec, default_split="all", blocks=3)
    rows = ds.take_all()
    assert len(rows) == 15  # the corrupt file is dropped
    assert rows[0]["image"].shape == (3, 16, 16) and rows[0]["image"].dtype == np.uint8
    with pytest.warns(UserWarning):
        mem = load(spec, default_split="all")
    streamed = sorted((int(r["label"]), r["image"].tobytes()) for r in rows)
    in_memory = sorted((int(lab), img.tobytes()) for lab, img in zip(mem.labels, mem.images))
    assert streamed == in_memory  # same decode, same labels from the path


def test_a_training_stream_mixes_identities_in_every_block_and_reorders_blocks_each_epoch(ray_session):
    """Face sources list identity by identity: a streamed training set must not keep that order.

    Without the shuffle, a block (and with it a worker's shard of the streaming split) holds
    one identity here; with it, every block mixes them, and each execution (epoch) reads the
    blocks in a new order that the seed reproduces.
    """
    import ray.data

    from maskcrypt.data.stream import SourceSplit
    from maskcrypt.train.placement import held_out_order

    labels = np.repeat(np.arange(8), 256)  # 8 blocks of 256 rows (ROWS_PER_BLOCK)
    images = np.broadcast_to(labels.astype(np.uint8)[:, None, None, None], (labels.size, 1, 4, 4))
    split = SourceSplit.from_arrays(np.ascontiguousarray(images), labels, [f"id{i}" for i in range(8)])

    def blocks(ds: ray.data.Dataset) -> list[np.ndarray]:
        return [b["label"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")]

    ctx = ray.data.DataContext.get_current()
    kept, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        assert all(len(np.unique(b)) == 1 for b in blocks(split.dataset(blocks=8)))  # the sorted order
        ds = split.dataset(blocks=8, shuffle_seed=3)
        first, second = ds.take_all(), ds.take_all()
        again = split.dataset(blocks=8, shuffle_seed=3).take_all()
        mixed = blocks(split.dataset(blocks=8, shuffle_seed=3))
    finally:
        ctx.execution_options.preserve_order = kept
    assert len(mixed) == 8 and all(len(np.unique(b)) == 8 for b in mixed)
    items = [[int(r["item"]) for r in rows] for rows in (first, second, again)]
    assert sorted(items[0]) == list(range(labels.size))  # every image once per epoch
    assert items[0] != items[1] and items[0] == items[2]  # a new block order per epoch, reproduced by the seed
    with pytest.raises(ValueError, match="not both"):
        split.dataset(order=np.arange(4), shuffle_seed=3)

    assert np.array_equal(held_out_order(50, 2000, seed=0), np.arange(50))
    sample = held_out_order(5000, 2000, seed=0)  # the per-epoch held-out figures: spread, not the first 2,000
    assert len(np.unique(sample)) == 2000 and np.all(np.diff(sample) > 0) and sample[-1] > 4500


def test_file_digests_are_by_content_cached_by_stat_and_hashed_in_ray_tasks_past_the_limit(ray_session, tmp_path):
    """Content sha256 per file: the same past the Ray-task limit as in process; the cache spares unchanged files."""
    import hashlib

    import pandas as pd

    from maskcrypt.data import identity

    files = []
    for i in range(9):
        p = tmp_path / "d" / f"{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * (i + 1))
        files.append(str(p))
    expected = [hashlib.sha256(bytes([i]) * (i + 1)).hexdigest() for i in range(9)]
    identity._KNOWN.clear()
    in_process, _, _ = identity.content_digests(files, ray_above=100)
    identity._KNOWN.clear()
    in_ray, _, _ = identity.content_digests(files, ray_above=4, chunk=2)  # 9 files > 4: five Ray tasks
    assert list(in_process) == list(in_ray) == expected

    cache = tmp_path / "cache" / "files.parquet"
    identity._KNOWN.clear()
    identity.content_digests(files, cache)
    frame = pd.read_parquet(cache)
    frame.loc[frame["path"] == files[2], "sha256"] = "stale"  # what the cache says is what a same-stat file gets
    frame.to_parquet(cache)
    identity._KNOWN.clear()
    assert identity.content_digests(files, cache)[0][2] == "stale"
    Path(files[2]).write_bytes(b"new content")  # size and mtime move: read again
    identity._KNOWN.clear()
    digests, sizes, _ = identity.content_digests(files, cache)
    assert digests[2] == hashlib.sha256(b"new content").hexdigest() and sizes[2] == 11
    gone, _, _ = identity.content_digests([*files, str(tmp_path / "missing.bin")], cache)
    assert gone[-1] == ""  # a missing file has no digest (and changes the fingerprint)

    change = identity.compare(["a", "b", "c"], ["1", "2", "3"], [0, 0, 1], ["a", "b", "d"], ["1", "9", "4"], [1, 0, 1])
    assert (change.changed, change.added, change.removed, change.relabelled) == (["b"], ["d"], ["c"], ["a"])
    assert change.describe().startswith("1 file(s) changed (e.g. b), 1 file(s) added (e.g. d)")



def test_the_object_store_copy_keeps_the_asked_order_whatever_order_the_tasks_finish(ray_session):
    """Several blocks decoded by Ray tasks come back in the split's (or the asked) order, so a hash over the
    decoded items (the attackers' data key) is the same on every launch."""
    from maskcrypt.data import source_split

    split = source_split("synthetic:identities=10,per_identity=120#size=8", default_split="all")  # several blocks
    for order in (None, np.random.default_rng(3).permutation(len(split))[:900]):
        images, kept = split.to_object_store(order=order)
        want = np.arange(len(split)) if order is None else order
        assert (kept == want).all() and len(images.counts) >= 2
