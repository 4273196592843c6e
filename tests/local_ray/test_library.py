from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from library_readers import _RESULT_TYPES, _check_arrow_schema, _outside_library, _results_dir

from maskcrypt.masks import MaskLibrary
from maskcrypt.masks.generate import generate_into
from maskcrypt.masks.library import SCHEMA


def test_to_ray_dataset_streams_committed_rows(tmp_path, ray_session):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    generate_into(lib, 24, seed=6)
    ds = lib.to_ray_dataset(buckets=[5, 6])
    rows = ds.take_all()
    assert len(rows) == 8
    assert {int(r["bucket"]) for r in rows} == {5, 6}
    by_id = {r["mask_id"]: r for r in rows}
    expected = lib.get(sorted(by_id))
    for mid, mask in zip(expected.mask_ids, expected.masks):
        assert by_id[mid]["bits"] == np.packbits(mask).tobytes()


def test_to_ray_dataset_cuts_parts_into_small_blocks_and_skips_excluded(tmp_path, ray_session):
    """Blocks of rows_per_block masks, read from row groups or sliced from single-group parts."""

    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    generate_into(lib, 60, seed=6, buckets=[3])
    part = lib.part_paths([3])[0]
    assert pq.ParquetFile(part).num_row_groups == 1  # 60 masks < one row group of 64
    ds = lib.to_ray_dataset(rows_per_block=7, exclude={"g6-0000002"}).materialize()
    rows = ds.take_all()
    assert ds.num_blocks() == 9  # ceil(60 / 7)
    assert sorted(r["mask_id"] for r in rows) == sorted(set(lib.column("mask_id")) - {"g6-0000002"})
    big = MaskLibrary.create(str(tmp_path / "big"), 8, 8)
    generate_into(big, 150, seed=2, buckets=[2])
    assert pq.ParquetFile(big.part_paths([2])[0]).num_row_groups == 3  # written as row groups of 64
    got = big.to_ray_dataset(rows_per_block=50).take_all()  # slices straddle row groups
    assert [r["mask_id"] for r in got] == big.column("mask_id")


def test_ray_data_reads_a_library_and_results_with_the_stored_types(tmp_path, ray_session):
    import ray.data

    root, expected = _outside_library(tmp_path)
    ds = ray.data.read_parquet(str(root))
    _check_arrow_schema(ds.schema().base_schema, {f.name: f.type for f in SCHEMA})
    rows = ds.take_all()
    assert sorted(r["mask_id"] for r in rows) == sorted(expected.index)
    assert {r["mask_id"]: int(r["bucket"]) for r in rows} == expected["bucket"].astype(int).to_dict()
    results = _results_dir(tmp_path)
    parts = ray.data.read_parquet(str(results / "per_mask.parts"))
    _check_arrow_schema(parts.schema().base_schema, {**_RESULT_TYPES, "mask_id": pa.string(), "split": pa.string()})
    assert parts.count() == 4

