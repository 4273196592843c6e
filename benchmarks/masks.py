"""Mask generation and library I/O throughput, with a raw-array baseline from the same run.

    python benchmarks/masks.py --quick     # ~1 minute: 2,000 masks at 112 x 112
    python benchmarks/masks.py             # 20,000 masks

Prints a table and one ``RESULT <name> <value>`` line per headline figure. The
baseline is the same masks written and read as one uncompressed uint8 ``.npy``
array (what a naive pipeline would keep): the library's ratios against it show what
bit-packing + Parquet cost or save.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskcrypt.masks import MaskLibrary, plan_masks
from maskcrypt.masks.generate import generated_names, render_plan


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _column_bytes(path: Path) -> dict[str, int]:
    """Compressed bytes per column over a library's Parquet files: what the mask bits
    cost against the per-mask names and hashes beside them."""
    out: dict[str, int] = {}
    for f in path.rglob("*.parquet"):
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                col = group.column(c)
                out[col.path_in_schema] = out.get(col.path_in_schema, 0) + col.total_compressed_size
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    count = args.count or (2_000 if args.quick else 20_000)

    plan = plan_masks(count, args.size, seed=0)
    render_plan(plan, 0, 50)  # warm-up
    t0 = time.perf_counter()
    masks = render_plan(plan)
    gen_s = time.perf_counter() - t0
    raw_mb = masks.nbytes / 1e6

    work = Path(tempfile.mkdtemp(prefix="maskcrypt-bench-"))
    write, read, base_write, base_read = [], [], [], []
    try:
        for r in range(args.repeats):
            lib_dir = work / f"lib{r}"
            ids, sources = generated_names(0, count, range(count))
            t0 = time.perf_counter()
            lib = MaskLibrary.create(str(lib_dir), args.size, args.size)
            lib.append([(masks, ids, sources)])
            write.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n = sum(len(b) for b in MaskLibrary.open(str(lib_dir)).iter_batches(4096))
            read.append(time.perf_counter() - t0)
            assert n == count

            npy = work / f"raw{r}.npy"
            t0 = time.perf_counter()
            np.save(npy, masks)
            base_write.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = np.load(npy)
            base_read.append(time.perf_counter() - t0)
            assert back.shape == masks.shape
        lib_bytes = _dir_bytes(work / "lib0")
        columns = _column_bytes(work / "lib0")
        raw_bytes = (work / "raw0.npy").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)

    w, rd, bw, br = (statistics.median(x) for x in (write, read, base_write, base_read))
    print(f"masks: {count} at {args.size}x{args.size} ({raw_mb:.1f} MB as uint8 arrays); medians of {args.repeats}")
    print(f"{'':24}{'seconds':>10}{'masks/s':>12}{'MB/s (uint8)':>14}")
    print(f"{'generate':24}{gen_s:>10.3f}{count / gen_s:>12.0f}{raw_mb / gen_s:>14.1f}")
    print(f"{'library write':24}{w:>10.3f}{count / w:>12.0f}{raw_mb / w:>14.1f}")
    print(f"{'library read+unpack':24}{rd:>10.3f}{count / rd:>12.0f}{raw_mb / rd:>14.1f}")
    print(f"{'baseline npy write':24}{bw:>10.3f}{count / bw:>12.0f}{raw_mb / bw:>14.1f}")
    print(f"{'baseline npy read':24}{br:>10.3f}{count / br:>12.0f}{raw_mb / br:>14.1f}")
    print(f"bytes per mask: library {lib_bytes / count:.0f}, raw npy {raw_bytes / count:.0f} "
          f"({raw_bytes / lib_bytes:.1f}x smaller); per column: "
          + ", ".join(f"{k} {v / count:.0f}" for k, v in sorted(columns.items(), key=lambda kv: -kv[1])))
    print(f"RESULT masks_generate_per_s {count / gen_s:.0f}")
    print(f"RESULT library_write_MBps {raw_mb / w:.1f}")
    print(f"RESULT library_read_MBps {raw_mb / rd:.1f}")
    print(f"RESULT library_bytes_per_mask {lib_bytes / count:.0f}")
    print(f"RESULT library_size_ratio_vs_npy {raw_bytes / lib_bytes:.2f}")
    print(f"RESULT library_read_ratio_vs_npy {br / rd:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
