"""Irregular free-form masks, steered into requested occlusion buckets.

Masks are drawn the way DeepFill v2 draws its training holes: brush strokes that
start at a random point and walk through several vertices, turning by about
2pi/5 +- 2pi/15 (alternately left and right), with segment lengths ~ N(r, r/2),
``r = sqrt(H^2 + W^2) / 8``, and a brush width of 12-40 px at 256 px, all scaled to
the image size. Each segment is a capsule (a thick line with round ends), so joints
are round. Optionally, axis-aligned boxes are OR-ed in, as LaMa's mixed masks do.

Instead of drawing blind and rejecting, every mask gets a *target* occluded-pixel
count drawn inside its bucket, and strokes are added segment by segment until the
target is reached; a segment that would overshoot the bucket is shortened and
thinned. Targets are stratified across each bucket (one per equal slice, in a
seeded order), so ratios spread over the whole bucket instead of piling at an edge.

Everything is deterministic: mask ``i`` of ``generate(count, size, seed, buckets)``
depends only on ``(seed, i)`` and the plan, so chunks can be drawn in any order or
in parallel and give the same library.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks.core import DEFAULT_EDGES, bucket_count_range, mask_sha256, validate_edges

if TYPE_CHECKING:  # the library needs pyarrow: imported only where a library is written
    from maskcrypt.masks.library import AppendResult, MaskLibrary

#: Brush width range at 256 px (DeepFill v2); scaled linearly with the image size.
_WIDTH_AT_256 = (12.0, 40.0)
_MAX_STEPS = 100_000


@dataclass(frozen=True)
class StrokeStyle:
    """Shape parameters of the brush strokes and boxes; defaults follow DeepFill v2 / LaMa."""

    min_vertices: int = 4
    max_vertices: int = 11
    mean_angle: float = 2 * math.pi / 5
    angle_range: float = 2 * math.pi / 15
    box_probability: float = 0.0  # chance that a step adds a box instead of a stroke segment
    max_box_fraction: float = 0.3  # largest box side, as a fraction of the image side

    def __post_init__(self) -> None:
        if not 1 <= self.min_vertices <= self.max_vertices:
            raise MaskcryptError(
                f"stroke vertices: expected 1 <= min_vertices <= max_vertices, got "
                f"{self.min_vertices}..{self.max_vertices}"
            )
        if not 0.0 <= self.box_probability <= 1.0:
            raise MaskcryptError(f"box_probability: expected a fraction in [0, 1], got {self.box_probability}")
        if not 0.0 < self.max_box_fraction <= 1.0:
            raise MaskcryptError(f"max_box_fraction: expected (0, 1], got {self.max_box_fraction}")


@dataclass(frozen=True)
class MaskPlan:
    """What to draw: for each mask index, its bucket and its target occluded-pixel count."""

    height: int
    width: int
    seed: int
    buckets: np.ndarray  # int8 (count,)
    targets: np.ndarray  # int64 (count,), occluded pixels
    edges: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.buckets.shape[0])


def parse_buckets(text: str, edges: Sequence[float] = DEFAULT_EDGES) -> list[int]:
    """Parse a bucket list like ``1-6``, ``5,6`` or ``2-3,6`` into sorted bucket numbers."""
    valid = range(1, len(edges))
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.update(range(a, b + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise MaskcryptError(f"--buckets: expected numbers and ranges like '1-6' or '5,6', got {text!r}") from None
    bad = sorted(b for b in out if b not in valid)
    if bad or not out:
        raise MaskcryptError(f"--buckets: expected buckets in {valid.start}..{valid.stop - 1}, got {text!r}")
    return sorted(out)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 4 or w < 4:
        raise MaskcryptError(f"--size: expected at least 4 x 4 pixels, got {h} x {w}")
    return int(h), int(w)


def plan_masks(
    count: int,
    size: int | tuple[int, int],
    seed: int = 0,
    buckets: Sequence[int] = (1, 2, 3, 4, 5, 6),
    edges: Sequence[float] = DEFAULT_EDGES,
) -> MaskPlan:
    """Spread ``count`` masks evenly over ``buckets`` and give each a stratified target ratio.

    Bucket counts differ by at most one (the first buckets get the remainder). Within
    a bucket of ``n`` masks, target ``k`` lies in the ``k``-th of ``n`` equal slices of
    the bucket's count range, and slices are dealt to masks in a seeded random order.
    """
    if count < 0:
        raise MaskcryptError(f"--count: expected a non-negative number of masks, got {count}")
    edges = validate_edges(edges)
    h, w = _size_hw(size)
    total = h * w
    bks = list(buckets)
    out_b = np.empty(count, dtype=np.int8)
    out_t = np.empty(count, dtype=np.int64)
    for j, b in enumerate(bks):
        first, last = bucket_count_range(b, total, edges)
        idx = np.arange(j, count, len(bks))
        n = idx.size
        if n == 0:
            continue
        rng = np.random.default_rng([seed, 0x6D61736B, b, n])
        slots = rng.permutation(n)
        u = rng.random(n)
        span = last - first + 1
        targets = first + np.floor((slots + u) / n * span).astype(np.int64)
        out_b[idx] = b
        out_t[idx] = np.clip(targets, first, last)
    return MaskPlan(h, w, seed, out_b, out_t, edges)


def _capsule(h: int, w: int, p0: tuple[float, float], p1: tuple[float, float], radius: float):
    """Pixels within ``radius`` of segment p0-p1, as (row slice, col slice, bool patch)."""
    (y0, x0), (y1, x1) = p0, p1
    r0 = max(math.floor(min(y0, y1) - radius), 0)
    r1 = min(math.ceil(max(y0, y1) + radius) + 1, h)
    c0 = max(math.floor(min(x0, x1) - radius), 0)
    c1 = min(math.ceil(max(x0, x1) + radius) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool)
    ys = np.arange(r0, r1, dtype=np.float32)[:, None]
    xs = np.arange(c0, c1, dtype=np.float32)[None, :]
    dy, dx = y1 - y0, x1 - x0
    seg2 = dy * dy + dx * dx
    # Parameter of the closest point on the segment (0 for a dot).
    t = np.clip(((ys - y0) * dy + (xs - x0) * dx) / seg2, 0.0, 1.0) if seg2 > 0 else np.zeros((1, 1), np.float32)
    py = ys - (y0 + t * dy)
    px = xs - (x0 + t * dx)
    return slice(r0, r1), slice(c0, c1), py * py + px * px <= radius * radius


def draw_mask(
    height: int,
    width: int,
    target: int,
    limit: int,
    rng: np.random.Generator,
    style: StrokeStyle = StrokeStyle(),
) -> np.ndarray:
    """Draw one mask with ``target <= occluded <= limit`` pixels (0 = occluded, 1 = kept).

    Strokes are added one segment at a time; a segment whose new pixels would push the
    count past ``limit`` is retried shorter and thinner, down to single dots, so every
    bucket that holds at least one pixel count can be reached.
    """
    if not 0 <= target <= limit <= height * width:
        raise MaskcryptError(f"mask target: expected 0 <= {target} <= {limit} <= {height * width}")
    hole = np.zeros((height, width), dtype=bool)
    count = 0
    scale = math.sqrt(height * height + width * width)
    mean_len = scale / 8.0
    w_lo, w_hi = (max(v * min(height, width) / 256.0, 1.0) for v in _WIDTH_AT_256)
    slack = max(1, (height * width) // 100)
    steps = 0
    while count < target:
        # One stroke: start, vertices, brush width.
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        n_vertices = int(rng.integers(style.min_vertices, style.max_vertices + 1))
        brush = rng.uniform(w_lo, w_hi)
        base = rng.uniform(0, 2 * math.pi)
        for v in range(n_vertices):
            if count >= target:
                break
            steps += 1
            if steps > _MAX_STEPS:
                raise MaskcryptError(f"mask generator: no progress toward {target} pixels in {height}x{width}")
            if style.box_probability and rng.random() < style.box_probability:
                bh = int(rng.integers(1, max(2, int(style.max_box_fraction * height)) + 1))
                bw = int(rng.integers(1, max(2, int(style.max_box_fraction * width)) + 1))
                r0, c0 = int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1))
                rows, cols = slice(r0, r0 + bh), slice(c0, c0 + bw)
                patch = np.ones((bh, bw), dtype=bool)
                count = _commit(hole, rows, cols, patch, count, limit)
                continue
            turn = rng.uniform(style.mean_angle - style.angle_range, style.mean_angle + style.angle_range)
            angle = base + (turn if v % 2 == 0 else 2 * math.pi - turn)
            length = min(max(rng.normal(mean_len, mean_len / 2), 1.0), 2 * mean_len)
            ny, nx = y + length * math.sin(angle), x + length * math.cos(angle)
            if not (0 <= ny < height and 0 <= nx < width):
                # Turn back into the image rather than piling a stub against the border.
                angle += math.pi
                ny, nx = y + length * math.sin(angle), x + length * math.cos(angle)
            radius = brush / 2.0
            # Land near the target: a segment may overshoot it by ~1% of the image at most.
            cap = min(limit, max(target + slack, count + 1))
            for _attempt in range(10):
                ny = min(max(ny, 0.0), height - 1.0)
                nx = min(max(nx, 0.0), width - 1.0)
                rows, cols, patch = _capsule(height, width, (y, x), (ny, nx), radius)
                new = _commit(hole, rows, cols, patch, count, cap)
                if new != count:
                    count = new
                    y, x = ny, nx
                    break
                ny, nx = (y + ny) / 2, (x + nx) / 2
                radius = max(radius * 0.6, 0.5)
            base = angle
    return (~hole).astype(np.uint8)


def _commit(hole: np.ndarray, rows: slice, cols: slice, patch: np.ndarray, count: int, limit: int) -> int:
    """OR ``patch`` into ``hole`` unless that would exceed ``limit``; return the new count."""
    if patch.size == 0:
        return count
    region = hole[rows, cols]
    added = int(np.count_nonzero(patch & ~region))
    if count + added > limit:
        return count
    region |= patch
    return count + added


def render_plan(plan: MaskPlan, start: int = 0, stop: int | None = None,
                style: StrokeStyle = StrokeStyle()) -> np.ndarray:
    """Draw masks ``start:stop`` of ``plan`` as a uint8 ``(n, H, W)`` array."""
    stop = len(plan) if stop is None else min(stop, len(plan))
    out = np.empty((max(stop - start, 0), plan.height, plan.width), dtype=np.uint8)
    for k, i in enumerate(range(start, stop)):
        b = int(plan.buckets[i])
        _, last = bucket_count_range(b, plan.height * plan.width, plan.edges)
        rng = np.random.default_rng([plan.seed, 0x64726177, i])
        out[k] = draw_mask(plan.height, plan.width, int(plan.targets[i]), last, rng, style)
    return out


def generate(
    count: int,
    size: int | tuple[int, int],
    seed: int = 0,
    buckets: Sequence[int] = (1, 2, 3, 4, 5, 6),
    edges: Sequence[float] = DEFAULT_EDGES,
    style: StrokeStyle = StrokeStyle(),
) -> np.ndarray:
    """``count`` masks of ``size``, spread evenly over ``buckets``: uint8 ``(count, H, W)``, 0 = occluded."""
    return render_plan(plan_masks(count, size, seed, buckets, edges), style=style)


def generate_chunks(
    plan: MaskPlan, chunk: int = 10_000, style: StrokeStyle = StrokeStyle()
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_index, masks)`` chunks of ``plan`` so huge libraries never sit in memory."""
    for start in range(0, len(plan), chunk):
        yield start, render_plan(plan, start, start + chunk, style)


def generated_names(seed: int, count: int, index: Sequence[int]) -> tuple[list[str], list[str]]:
    """The ids and sources of generated masks ``index`` of a ``count``-mask draw.

    Named here once so that a benchmark writes the very strings a generated library
    holds: they are about a quarter of its bytes on disk.
    """
    return ([f"g{seed}-{i:07d}" for i in index],
            [f"generate:seed={seed},count={count},index={i}" for i in index])


def generate_into(
    library: MaskLibrary,
    count: int,
    seed: int = 0,
    buckets: Sequence[int] = (1, 2, 3, 4, 5, 6),
    style: StrokeStyle = StrokeStyle(),
    chunk: int = 10_000,
    progress: bool = False,
    exclude_sha256: set[str] | None = None,
) -> AppendResult:
    """Generate ``count`` masks into ``library`` in one commit, streaming chunk by chunk.

    Ids are ``g<seed>-<index>``; re-running the same command is idempotent (the
    masks are identical, so they dedupe). ``exclude_sha256`` drops masks that must
    not appear (e.g. those of another pool that has to stay disjoint).
    """
    plan = plan_masks(count, (library.height, library.width), seed, buckets, library.edges)

    def batches() -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
        done = 0
        for start, masks in generate_chunks(plan, chunk, style):
            index = range(start, start + len(masks))
            if exclude_sha256:
                keep = [k for k, m in enumerate(masks) if mask_sha256(m) not in exclude_sha256]
                masks, index = masks[keep], [index[k] for k in keep]
            ids, sources = generated_names(seed, count, index)
            done += len(masks)
            if progress:
                print(f"  generated {done}/{count}", file=sys.stderr, flush=True)
            yield masks, ids, sources

    return library.append(batches())
