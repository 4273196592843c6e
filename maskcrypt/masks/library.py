"""The mask library: bit-packed masks in Parquet, one folder per bucket, committed atomically.

Layout of a library directory ``LIB/`` (a local path or any URI pyarrow understands,
such as ``s3://bucket/run/masks``)::

    LIB/_library.json             the manifest: format, size, edges, committed parts
    LIB/b3/part-<uuid>.parquet
    LIB/b-1/part-<uuid>.parquet

The folders are named ``b<bucket>``, not ``bucket=<bucket>``: every outside reader
(pandas, pyarrow datasets, Ray Data, DuckDB) takes ``key=value`` folders for hive
partition keys and then clashes with, or overrides, the stored int8 ``bucket`` column.
``b3/`` is no partition key to any of them, so they read the files' own columns with the
stored types; the manifest is ``_``-prefixed, which they skip. Libraries written with
``bucket=<b>/`` folders still open and load (the manifest lists each part's path).

One row per mask: ``mask_id``, ``bucket``, ``ratio``, ``height``, ``width``, ``bits``
(``np.packbits`` of the row-major mask, 1 = kept), ``source``, ``sha256``. Each part
also carries the edges and size in its Parquet schema metadata, so a part copied on
its own still says how it was bucketed.

Why a manifest: parts are written first under fresh names, then the manifest is
replaced in one step. A reader only sees parts the manifest lists, so a crash in the
middle of a large import leaves the library exactly as it was before (the orphaned
parts are reported by :meth:`MaskLibrary.orphans`). Outside readers do not know the
manifest: they see every ``*.parquet`` file, orphans included. A part is written under
a hidden temporary name and renamed, so even an orphan is a complete file, never half of
one. There must be one writer at a time.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks.core import (
    DEFAULT_EDGES,
    buckets_from_counts,
    check_mask,
    mask_sha256,
    occluded_counts,
    pack_masks,
    ratio_to_counts,
    unpack_masks,
    validate_edges,
)

#: Masks per Parquet row group and per Ray Data block when a library is streamed.
ROWS_PER_BLOCK = 64

if TYPE_CHECKING:
    import ray.data

MANIFEST = "_library.json"


def bucket_dir(bucket: int) -> str:
    """The folder of a bucket's parts: ``b3``, ``b-1`` (no ``=``: no reader takes it for a hive key)."""
    return f"b{int(bucket)}"


FORMAT = "maskcrypt-mask-library/1"

SCHEMA = pa.schema(
    [
        ("mask_id", pa.string()),
        ("bucket", pa.int8()),
        ("ratio", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("bits", pa.binary()),
        ("source", pa.string()),
        ("sha256", pa.string()),
    ]
)


@dataclass
class MaskBatch:
    """Masks unpacked in memory: ``masks`` is uint8 ``(n, H, W)`` with 0 = occluded."""

    mask_ids: list[str]
    buckets: np.ndarray
    ratios: np.ndarray
    masks: np.ndarray
    sha256: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.mask_ids)


@dataclass(frozen=True)
class AppendResult:
    """What an append did: rows written, and masks skipped as duplicates of stored ones."""

    added: int
    duplicates: int
    duplicate_ids: tuple[str, ...] = ()


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        # Plain relative or absolute local paths.

        return pafs.LocalFileSystem(), os.path.abspath(uri)


class MaskLibrary:
    """A bucketed, content-addressed mask library on a local or remote filesystem."""

    def __init__(self, uri: str, manifest: dict[str, Any]):
        self.uri = uri
        self._fs, self._root = _fs(uri)
        self._manifest = manifest

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def exists(cls, uri: str) -> bool:
        fs, root = _fs(uri)
        return fs.get_file_info(f"{root}/{MANIFEST}").type == pafs.FileType.File

    @classmethod
    def open(cls, uri: str) -> MaskLibrary:
        """Open an existing library; a path without a manifest is refused by name."""
        fs, root = _fs(uri)
        info = fs.get_file_info(f"{root}/{MANIFEST}")
        if info.type != pafs.FileType.File:
            what = "does not exist" if fs.get_file_info(root).type == pafs.FileType.NotFound else "holds no library"
            raise MaskcryptError(
                f"mask library {uri}: {what} (expected {MANIFEST}; build one with "
                "'maskcrypt masks generate' or 'maskcrypt masks import')"
            )
        with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
            try:
                manifest = json.loads(f.read())
            except ValueError as exc:
                raise MaskcryptError(f"mask library {uri}: {MANIFEST} is not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise MaskcryptError(
                f"mask library {uri}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}"
            )
        return cls(uri, manifest)

    @classmethod
    def create(
        cls, uri: str, height: int, width: int, edges: Sequence[float] = DEFAULT_EDGES
    ) -> MaskLibrary:
        """Create an empty library (committed at once, so an empty library is a valid one)."""
        if cls.exists(uri):
            raise MaskcryptError(f"mask library {uri}: already exists (open it to append)")
        if height < 1 or width < 1:
            raise MaskcryptError(f"mask library size: expected positive height and width, got {height}x{width}")
        fs, root = _fs(uri)
        fs.create_dir(root, recursive=True)
        lib = cls(uri, {"format": FORMAT, "height": int(height), "width": int(width),
                        "edges": list(validate_edges(edges)), "parts": []})
        lib._write_manifest()
        return lib

    @classmethod
    def open_or_create(
        cls, uri: str, height: int, width: int, edges: Sequence[float] = DEFAULT_EDGES
    ) -> MaskLibrary:
        """Open ``uri`` if it is a library of this size and these edges, else create it."""
        if not cls.exists(uri):
            return cls.create(uri, height, width, edges)
        lib = cls.open(uri)
        if (lib.height, lib.width) != (height, width):
            raise MaskcryptError(
                f"mask library {uri}: holds {lib.height}x{lib.width} masks, cannot add {height}x{width} "
                "(use another --out or the same --size)"
            )
        if tuple(lib.edges) != validate_edges(edges):
            raise MaskcryptError(f"mask library {uri}: bucketed with edges {list(lib.edges)}, not {list(edges)}")
        return lib

    # -- properties --------------------------------------------------------------------
    @property
    def height(self) -> int:
        return int(self._manifest["height"])

    @property
    def width(self) -> int:
        return int(self._manifest["width"])

    @property
    def edges(self) -> tuple[float, ...]:
        return tuple(float(e) for e in self._manifest["edges"])

    @property
    def parts(self) -> list[dict[str, Any]]:
        return list(self._manifest["parts"])

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem that :meth:`part_paths` are paths in (local, S3, ...)."""
        return self._fs

    def part_paths(self, buckets: Iterable[int] | None = None) -> list[str]:
        """Paths, in :attr:`filesystem`, of the committed parts (optionally only ``buckets``)."""
        wanted = None if buckets is None else {int(b) for b in buckets}
        return [f"{self._root}/{p['path']}" for p in self._manifest["parts"]
                if wanted is None or int(p["bucket"]) in wanted]

    def __len__(self) -> int:
        return sum(int(p["rows"]) for p in self._manifest["parts"])

    def __repr__(self) -> str:
        return f"MaskLibrary({self.uri!r}, {len(self)} masks, {self.height}x{self.width})"

    # -- writing -----------------------------------------------------------------------
    def _write_manifest(self) -> None:
        tmp = f"{self._root}/.{MANIFEST}.{uuid.uuid4().hex}.tmp"
        with self._fs.open_output_stream(tmp) as f:
            f.write(json.dumps(self._manifest, indent=1).encode())
        self._fs.move(tmp, f"{self._root}/{MANIFEST}")

    def _metadata(self) -> dict[bytes, bytes]:
        return {
            b"maskcrypt.format": FORMAT.encode(),
            b"maskcrypt.edges": json.dumps(list(self.edges)).encode(),
            b"maskcrypt.height": str(self.height).encode(),
            b"maskcrypt.width": str(self.width).encode(),
        }

    def append(
        self,
        batches: Iterable[tuple[np.ndarray, Sequence[str], Sequence[str]]],
    ) -> AppendResult:
        """Add masks from ``(masks (n,H,W) 0/1, ids, sources)`` batches in one commit.

        Masks whose sha256 is already stored (or repeated within the input) are skipped
        and counted; an id already used by a *different* mask is an error. Parts are
        written as batches arrive; the manifest lists them only after the last batch,
        so an interrupted append changes nothing a reader sees.
        """
        known_sha = set(self.column("sha256"))
        known_ids = set(self.column("mask_id"))
        new_parts: list[dict[str, Any]] = []
        added = 0
        dups: list[str] = []
        for masks, ids, sources in batches:
            masks = check_mask(masks, "masks")
            if masks.ndim != 3 or masks.shape[1:] != (self.height, self.width):
                raise MaskcryptError(
                    f"mask library {self.uri}: expected masks of {self.height}x{self.width}, got shape "
                    f"{masks.shape} (use the library's --size)"
                )
            if not len(ids) == len(sources) == masks.shape[0]:
                raise MaskcryptError("append: masks, ids and sources must have the same length")
            keep: list[int] = []
            digests: list[str] = []
            for i, (mid, mask) in enumerate(zip(ids, masks)):
                digest = mask_sha256(mask)
                if digest in known_sha:
                    dups.append(str(mid))
                    continue
                if mid in known_ids:
                    raise MaskcryptError(
                        f"mask library {self.uri}: id {mid!r} is already used by a different mask"
                    )
                known_sha.add(digest)
                known_ids.add(str(mid))
                keep.append(i)
                digests.append(digest)
            if not keep:
                continue
            kept = masks[keep]
            total = self.height * self.width
            counts = occluded_counts(kept)
            table = pa.table(
                {
                    "mask_id": [str(ids[i]) for i in keep],
                    "bucket": buckets_from_counts(counts, total, self.edges),
                    "ratio": counts / float(total),
                    "height": np.full(len(keep), self.height, dtype=np.int32),
                    "width": np.full(len(keep), self.width, dtype=np.int32),
                    "bits": pack_masks(kept),
                    "source": [str(sources[i]) for i in keep],
                    "sha256": digests,
                },
                schema=SCHEMA.with_metadata(self._metadata()),
            )
            new_parts.extend(self._write_parts(table))
            added += len(keep)
        if new_parts:
            self._manifest["parts"] = self._manifest["parts"] + new_parts
            self._write_manifest()
        return AppendResult(added, len(dups), tuple(dups))

    def _write_parts(self, table: pa.Table) -> list[dict[str, Any]]:
        parts = []
        buckets = table.column("bucket").to_numpy()
        for b in np.unique(buckets):
            sub = table.filter(pa.array(buckets == b))
            name = f"part-{uuid.uuid4().hex}.parquet"
            rel = f"{bucket_dir(b)}/{name}"
            self._fs.create_dir(f"{self._root}/{bucket_dir(b)}", recursive=True)
            # Hidden until complete: outside readers skip dot files, so they never meet half a part.
            tmp = f"{self._root}/{bucket_dir(b)}/.{name}.tmp"
            pq.write_table(sub, tmp, filesystem=self._fs, compression="zstd", row_group_size=ROWS_PER_BLOCK)
            self._fs.move(tmp, f"{self._root}/{rel}")
            parts.append({"path": rel, "bucket": int(b), "rows": sub.num_rows})
        return parts

    # -- reading -----------------------------------------------------------------------
    def table(
        self,
        buckets: Iterable[int] | None = None,
        columns: Sequence[str] | None = None,
        edges: Sequence[float] | None = None,
    ) -> pa.Table:
        """All rows (of ``buckets``) as one Arrow table, in commit order.

        With ``edges``, buckets are recomputed from the stored ratios (exactly: the ratio
        round-trips to the pixel count), and ``buckets`` filters on the new buckets.
        """
        cols = list(columns) if columns is not None else list(SCHEMA.names)
        need = list(dict.fromkeys([*cols, "ratio"])) if edges is not None else cols
        paths = self.part_paths(None if edges is not None else buckets)
        if not paths:
            return pa.schema([SCHEMA.field(c) for c in cols]).empty_table()
        tables = [pq.read_table(p, columns=need, filesystem=self._fs) for p in paths]
        table = pa.concat_tables(tables)
        if edges is not None:
            counts = ratio_to_counts(table.column("ratio").to_numpy(), self.height * self.width)
            new_b = buckets_from_counts(counts, self.height * self.width, edges)
            table = table.drop_columns([c for c in ["bucket"] if c in table.column_names])
            table = table.append_column("bucket", pa.array(new_b, pa.int8()))
            if buckets is not None:
                table = table.filter(pa.array(np.isin(new_b, list(buckets))))
            table = table.select(cols)
        return table

    def column(self, name: str) -> list[Any]:
        return self.table(columns=[name]).column(name).to_pylist()

    def iter_batches(self, batch_size: int = 4096, buckets: Iterable[int] | None = None) -> Iterator[MaskBatch]:
        """Stream masks part by part in batches of at most ``batch_size``: memory stays flat."""
        for path in self.part_paths(buckets):
            with self._fs.open_input_file(path) as f:
                for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                    yield self._to_batch(pa.Table.from_batches([rb]))

    def get(self, mask_ids: Sequence[str]) -> MaskBatch:
        """The masks with these ids, in the order asked; an unknown id is an error naming it."""
        table = self.table()
        ids = table.column("mask_id").to_pylist()
        pos = {m: i for i, m in enumerate(ids)}
        missing = [m for m in mask_ids if m not in pos]
        if missing:
            raise MaskcryptError(f"mask library {self.uri}: unknown mask id(s) {missing[:10]}")
        return self._to_batch(table.take(pa.array([pos[m] for m in mask_ids], pa.int64())))

    def load(self, buckets: Iterable[int] | None = None) -> MaskBatch:
        """All masks (of ``buckets``) unpacked in memory; use :meth:`iter_batches` for huge libraries."""
        return self._to_batch(self.table(buckets))

    def _to_batch(self, table: pa.Table) -> MaskBatch:
        bits = table.column("bits").to_pylist()
        masks = (unpack_masks(bits, self.height, self.width) if bits
                 else np.zeros((0, self.height, self.width), np.uint8))
        names = table.column_names
        return MaskBatch(
            mask_ids=table.column("mask_id").to_pylist(),
            buckets=table.column("bucket").to_numpy().astype(np.int8),
            ratios=table.column("ratio").to_numpy(),
            masks=masks,
            sha256=table.column("sha256").to_pylist() if "sha256" in names else [],
            sources=table.column("source").to_pylist() if "source" in names else [],
        )

    def stats(self) -> dict[str, Any]:
        """Count and ratio min/mean/max per bucket (bucket -1 included), plus storage size."""
        table = self.table(columns=["bucket", "ratio"])
        buckets = table.column("bucket").to_numpy() if table.num_rows else np.zeros(0, np.int8)
        ratios = table.column("ratio").to_numpy() if table.num_rows else np.zeros(0)
        per: dict[str, Any] = {}
        for b in [-1, *range(1, len(self.edges))]:
            r = ratios[buckets == b]
            per[str(b)] = {
                "count": int(r.size),
                "ratio_min": float(r.min()) if r.size else None,
                "ratio_mean": float(r.mean()) if r.size else None,
                "ratio_max": float(r.max()) if r.size else None,
            }
        nbytes = sum(self._fs.get_file_info(f"{self._root}/{p['path']}").size or 0 for p in self.parts)
        return {
            "uri": self.uri,
            "count": int(buckets.size),
            "height": self.height,
            "width": self.width,
            "edges": list(self.edges),
            "buckets": per,
            "bytes_on_disk": int(nbytes),
            "bytes_per_mask": float(nbytes / buckets.size) if buckets.size else None,
        }

    def orphans(self) -> list[str]:
        """Files that no commit lists, left by an interrupted append: parts and temporary files.

        maskcrypt never reads them; outside readers (pandas, DuckDB, ...) do read the
        ``*.parquet`` ones, whose masks a rerun of the write commits again in new parts:
        delete them before handing the library to such readers.
        """
        listed = {p["path"] for p in self._manifest["parts"]}
        sel = pafs.FileSelector(self._root, recursive=True, allow_not_found=True)
        found = []
        for info in self._fs.get_file_info(sel):
            rel = info.path[len(self._root):].lstrip("/")
            if (info.type == pafs.FileType.File and rel not in listed
                    and (rel.endswith(".parquet") or rel.endswith(".tmp"))):
                found.append(rel)
        return sorted(found)

    def to_ray_dataset(self, buckets: Iterable[int] | None = None, exclude: Iterable[str] = (),
                       rows_per_block: int = ROWS_PER_BLOCK) -> ray.data.Dataset:
        """A Ray Dataset over the committed parts (rows are masks, ``bits`` still packed).

        ``exclude``: mask ids to leave out (e.g. those a resumed evaluation already has).

        Only manifest-listed parts are read, so uncommitted parts never leak in; bucket
        comes from the column, not the directory name. Each part is cut into blocks of
        ``rows_per_block`` masks (parts are written with row groups of that size, so a
        block reads only its row group): small blocks keep an actor pool balanced, make
        progress and resumable results fine-grained, and stop one huge imported part
        from becoming one task. The read tasks reserve no CPU: they only decode small
        Parquet rows, and an actor pool that takes every CPU (the usual evaluation
        set-up) would otherwise leave them unscheduled, stalling the pipeline; and run one
        at a time, since zero-CPU tasks are otherwise unlimited and Ray would start a
        worker process for each (measured: 32 processes, half the evaluation's speed).
        """
        import ray
        import ray.data

        wanted = None if buckets is None else {int(b) for b in buckets}
        items = [{"path": f"{self._root}/{p['path']}", "start": s, "stop": min(s + rows_per_block, int(p["rows"]))}
                 for p in self._manifest["parts"] if wanted is None or int(p["bucket"]) in wanted
                 for s in range(0, int(p["rows"]), rows_per_block)]
        if not items:
            raise MaskcryptError(f"mask library {self.uri}: no masks in buckets {buckets}")
        skip = sorted(set(exclude))
        source = _slice_source(self._fs, items, ray.put(pa.array(skip, pa.string())) if skip else None)
        # One read task per slice, made by the read itself when the pipeline pulls it: from_items would put
        # every item in the object store up front, held to the end (~2.7 KB a block: 4.3 MB at 100k masks,
        # growing with the library). No CPU reserved and one at a time: see above.
        return ray.data.read_datasource(source, num_cpus=0, concurrency=1, override_num_blocks=len(items))


def _read_slice(fs: pafs.FileSystem, path: str, start: int, stop: int, skip: Any) -> pa.Table:
    """Rows ``start:stop`` of one library part, reading only the row groups that hold them."""
    import ray

    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        ends = np.cumsum([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(ends, stop - 1, side="right"))
        offset = int(ends[first - 1]) if first else 0
        table = pf.read_row_groups(list(range(first, last + 1)))
    table = table.slice(start - offset, stop - start)
    if skip is not None:
        table = table.filter(pc.invert(pc.is_in(table.column("mask_id"), value_set=ray.get(skip))))
    return table


def _slice_source(fs: pafs.FileSystem, items: list[dict[str, Any]], skip: Any) -> Any:
    """A Ray Data datasource with one read task per library slice (defined here: Ray imports lazily)."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class SliceSource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            return [ReadTask(lambda it=it: [_read_slice(fs, it["path"], it["start"], it["stop"], skip)],
                             BlockMetadata(num_rows=it["stop"] - it["start"], size_bytes=None, exec_stats=None,
                                           input_files=(it["path"],)))
                    for it in items]

    return SliceSource()
