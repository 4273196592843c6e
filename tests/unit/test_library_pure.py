from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from library_readers import _RESULT_TYPES, _check_arrow_schema, _outside_library, _results_dir

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks import MaskLibrary, assign_buckets, generate, mask_sha256, occlusion_ratio
from maskcrypt.masks.generate import generate_into
from maskcrypt.masks.library import MANIFEST, SCHEMA


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_roundtrip_is_bit_exact_and_partitioned(tmp_path):
    masks = generate(60, (20, 28), seed=3)
    lib = MaskLibrary.create(str(tmp_path / "lib"), 20, 28)
    res = lib.append([(masks, _ids("m", 60), ["test"] * 60)])
    assert res.added == 60 and res.duplicates == 0
    again = MaskLibrary.open(str(tmp_path / "lib"))
    batch = again.get(_ids("m", 60))
    np.testing.assert_array_equal(batch.masks, masks)
    assert batch.sha256 == [mask_sha256(m) for m in masks]
    # Every stored bucket agrees with the ratio recomputed from the stored bits.
    full = again.load()
    np.testing.assert_array_equal(full.buckets, assign_buckets(full.masks))
    np.testing.assert_allclose(full.ratios, occlusion_ratio(full.masks))
    # One folder per bucket (b<bucket>/, no hive key), with the edges in every part's Parquet metadata.
    for part in again.parts:
        assert part["path"].startswith(f"b{part['bucket']}/")
        meta = pq.read_schema(tmp_path / "lib" / part["path"]).metadata
        assert json.loads(meta[b"maskcrypt.edges"]) == list(again.edges)
        table = pq.read_table(tmp_path / "lib" / part["path"])
        assert set(table.column("bucket").to_pylist()) == {part["bucket"]}
        assert table.column_names == ["mask_id", "bucket", "ratio", "height", "width", "bits", "source", "sha256"]


def test_append_dedupes_by_content_and_refuses_id_reuse(tmp_path):
    masks = generate(10, 16, seed=0)
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    lib.append([(masks[:6], _ids("a", 6), ["x"] * 6)])
    res = lib.append([(masks, _ids("b", 10), ["y"] * 10)])  # 6 already stored under other ids
    assert (res.added, res.duplicates) == (4, 6)
    assert len(MaskLibrary.open(str(tmp_path / "lib"))) == 10
    other = generate(1, 16, seed=99)
    with pytest.raises(MaskcryptError, match="id 'a0' is already used"):
        lib.append([(other, ["a0"], ["z"])])


def test_generate_into_is_idempotent(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 24, 24)
    first = generate_into(lib, 30, seed=4)
    second = generate_into(lib, 30, seed=4)
    assert (first.added, second.added, second.duplicates) == (30, 0, 30)
    assert len(lib) == 30


def test_interrupted_append_leaves_library_unchanged(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    lib.append([(generate(6, 16, seed=1), _ids("a", 6), ["x"] * 6)])

    def batches():
        yield generate(6, 16, seed=2), _ids("b", 6), ["y"] * 6
        raise KeyboardInterrupt  # the process dies half way

    with pytest.raises(KeyboardInterrupt):
        lib.append(batches())
    reopened = MaskLibrary.open(str(tmp_path / "lib"))
    assert len(reopened) == 6
    assert reopened.orphans()  # the half-written parts are on disk but not listed
    assert sorted(reopened.column("mask_id")) == sorted(_ids("a", 6))


def test_wrong_size_and_missing_library_errors(tmp_path):
    with pytest.raises(MaskcryptError, match="does not exist"):
        MaskLibrary.open(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskcryptError, match="holds no library"):
        MaskLibrary.open(str(tmp_path / "empty"))
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    with pytest.raises(MaskcryptError, match="expected masks of 16x16"):
        lib.append([(np.ones((1, 8, 8), np.uint8), ["x"], ["x"])])
    with pytest.raises(MaskcryptError, match="cannot add 32x32"):
        MaskLibrary.open_or_create(str(tmp_path / "lib"), 32, 32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(MaskcryptError, match="not valid JSON"):
        MaskLibrary.open(str(tmp_path / "bad"))


def test_filter_batches_stats_and_read_time_edges(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 32, 32)
    generate_into(lib, 60, seed=5)
    # Add two masks outside every bucket: one empty, one 90% occluded.
    empty = np.ones((1, 32, 32), np.uint8)
    full = np.zeros((1, 32, 32), np.uint8)
    full[0, :4] = 1
    lib.append([(np.concatenate([empty, full]), ["none", "most"], ["hand", "hand"])])
    stats = lib.stats()
    assert stats["count"] == 62
    assert stats["buckets"]["-1"]["count"] == 2
    assert [stats["buckets"][str(b)]["count"] for b in range(1, 7)] == [10] * 6
    assert len(lib.load([5, 6])) == 20
    seen = sum(len(b) for b in lib.iter_batches(7))
    assert seen == 62
    # Other edges at read time: two coarse buckets, exact from the stored ratios.
    t = lib.table(edges=(0.0, 0.3, 0.6), columns=["mask_id", "bucket"])
    b = dict(zip(t.column("mask_id").to_pylist(), t.column("bucket").to_pylist()))
    assert b["none"] == -1 and b["most"] == -1
    coarse = np.bincount(np.array([v for v in b.values() if v > 0]))
    assert coarse[1:].tolist() == [30, 30]
    with pytest.raises(MaskcryptError, match="unknown mask id"):
        lib.get(["nope"])


def test_pandas_reads_a_library_and_results_with_the_stored_types(tmp_path):
    root, expected = _outside_library(tmp_path)
    df = pd.read_parquet(root)
    assert dict(df.dtypes.astype(str)) == {"mask_id": "str", "bucket": "int8", "ratio": "float64",
                                          "height": "int32", "width": "int32", "bits": "object",
                                          "source": "str", "sha256": "str"}
    df = df.set_index("mask_id").loc[expected.index]
    np.testing.assert_array_equal(df["bucket"], expected["bucket"])
    assert list(df["bits"]) == list(expected["bits"])
    results = _results_dir(tmp_path)
    parts = pd.read_parquet(results / "per_mask.parts")
    assert sorted(parts["mask_id"]) == ["m0", "m1", "m2", "m3"] and parts["bucket"].dtype == np.int8
    assert pd.read_parquet(results / "table1.parquet")["bucket"].dtype == np.int8


def test_pyarrow_dataset_reads_a_library_and_results_with_the_stored_types(tmp_path):
    import pyarrow.dataset as pads

    root, expected = _outside_library(tmp_path)
    table = pads.dataset(root, partitioning="hive").to_table()
    _check_arrow_schema(table.schema, {f.name: f.type for f in SCHEMA})
    assert sorted(table.column("mask_id").to_pylist()) == sorted(expected.index)
    results = _results_dir(tmp_path)
    parts = pads.dataset(results / "per_mask.parts", partitioning="hive").to_table()
    _check_arrow_schema(parts.schema, {**_RESULT_TYPES, "mask_id": pa.string(), "split": pa.string()})
    assert parts.num_rows == 4


def test_duckdb_reads_a_library_and_results_with_the_stored_types(tmp_path):
    import duckdb

    root, expected = _outside_library(tmp_path)
    con = duckdb.connect()
    rel = con.sql(f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")
    assert dict(zip(rel.columns, map(str, rel.types))) == {
        "mask_id": "VARCHAR", "bucket": "TINYINT", "ratio": "DOUBLE", "height": "INTEGER", "width": "INTEGER",
        "bits": "BLOB", "source": "VARCHAR", "sha256": "VARCHAR"}
    got = dict(con.sql(f"SELECT mask_id, bucket FROM read_parquet('{root}/**/*.parquet', "
                       "hive_partitioning=true)").fetchall())
    assert got == expected["bucket"].astype(int).to_dict()
    results = _results_dir(tmp_path)
    rel = con.sql(f"SELECT * FROM read_parquet('{results}/per_mask.parts/*.parquet', hive_partitioning=true)")
    types = dict(zip(rel.columns, map(str, rel.types)))
    assert (types["bucket"], types["n"], types["hits_E"], len(rel.fetchall())) == ("TINYINT", "BIGINT", "BLOB", 4)
    assert str(con.sql(f"SELECT bucket FROM '{results}/table1.parquet'").types[0]) == "TINYINT"


def test_a_library_with_hive_style_folders_still_opens_loads_and_grows(tmp_path):
    """Libraries written before the b<bucket>/ folders list bucket=<b>/ paths in their manifest."""
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    generate_into(lib, 12, seed=1)
    before = lib.load()
    manifest = json.loads((tmp_path / "lib" / MANIFEST).read_text())
    for part in manifest["parts"]:  # move every part to the old layout, as the old code wrote it
        old = f"bucket={part['bucket']}/{part['path'].split('/')[-1]}"
        (tmp_path / "lib" / old).parent.mkdir(exist_ok=True)
        (tmp_path / "lib" / part["path"]).rename(tmp_path / "lib" / old)
        part["path"] = old
    (tmp_path / "lib" / MANIFEST).write_text(json.dumps(manifest))
    old = MaskLibrary.open(str(tmp_path / "lib"))
    again = old.load()
    assert again.mask_ids == before.mask_ids
    np.testing.assert_array_equal(again.masks, before.masks)
    assert old.orphans() == []
    generate_into(old, 6, seed=2)  # appended in the new layout, beside the old folders
    grown = MaskLibrary.open(str(tmp_path / "lib"))
    assert len(grown) == 18 and len(grown.load()) == 18
    assert {"old" if p["path"].startswith("bucket=") else "new" for p in grown.parts} == {"old", "new"}


def test_uncommitted_parts_are_complete_files_that_outside_readers_see(tmp_path):
    """What docs/data.md says an outside reader sees after an interrupted write."""
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    lib.append([(generate(6, 16, seed=1), _ids("a", 6), ["x"] * 6)])

    def batches():
        yield generate(6, 16, seed=2), _ids("b", 6), ["y"] * 6
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lib.append(batches())
    assert len(MaskLibrary.open(str(tmp_path / "lib"))) == 6
    orphans = lib.orphans()
    assert orphans and all(o.endswith(".parquet") for o in orphans)
    assert len(pd.read_parquet(tmp_path / "lib")) == 12  # maskcrypt ignores them, pandas does not
    for rel in orphans:
        (tmp_path / "lib" / rel).unlink()
    assert len(pd.read_parquet(tmp_path / "lib")) == 6

