"""Libraries and result folders as outside readers (pandas, pyarrow, Ray Data) find them: shared by both test tiers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from maskcrypt.masks import MaskLibrary
from maskcrypt.masks.generate import generate_into


# -- outside readers: pandas, pyarrow datasets, Ray Data, DuckDB ---------------------------------
def _outside_library(tmp_path):
    """A library with every bucket, bucket -1 included, as an outside reader finds it on disk."""
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    generate_into(lib, 24, seed=6)
    lib.append([(np.ones((1, 16, 16), np.uint8), ["none"], ["hand"])])  # bucket -1
    assert sorted({p["path"].split("/")[0] for p in lib.parts}) == ["b-1", "b1", "b2", "b3", "b4", "b5", "b6"]
    expected = lib.table().to_pandas().set_index("mask_id")
    return tmp_path / "lib", expected


def _results_dir(tmp_path):
    """``results/`` as a determination writes it: single tables and a folder of parts with its key.

    The parts are written by the evaluation's own writer; the folder also holds ``_key.json``
    and a temporary file left by an interrupted write, which no reader may take for a part.
    """
    from maskcrypt.core.fileio import write_json, write_parquet
    from maskcrypt.evaluation.crossproduct import _write_part

    results = tmp_path / "results"
    rng = np.random.default_rng(0)

    def block(ids):
        return pd.DataFrame({"mask_id": ids, "bucket": np.array([3] * len(ids), np.int8), "split": "selection",
                             "n": np.full(len(ids), 40), "correct_E": rng.integers(0, 40, len(ids)),
                             "score_E": rng.random(len(ids)), "hits_E": [rng.bytes(5) for _ in ids]})

    write_parquet(block(["a", "b"]).assign(third=0.5), results / "table1.parquet")
    parts = results / "per_mask.parts"
    parts.mkdir(parents=True)
    write_json(parts / "_key.json", {"library": "x"})
    _write_part(block(["m0", "m1", "m2"]), parts)
    _write_part(block(["m3"]), parts)
    (parts / ".part-dead.parquet.0123abcd.tmp").write_bytes(b"PAR1 half a file")
    return results


_RESULT_TYPES = {"bucket": pa.int8(), "n": pa.int64(), "correct_E": pa.int64(), "score_E": pa.float64(),
                 "hits_E": pa.binary()}


def _check_arrow_schema(schema: pa.Schema, expected: dict) -> None:
    got = {f.name: f.type for f in schema}
    assert set(got) == set(expected), schema  # no extra partition column
    for name, typ in expected.items():
        assert got[name] == typ or (typ == pa.string() and got[name] == pa.large_string()), (name, got[name])
