"""Pictures for people: image grids, mask grids and the report's plots.

Every picture is written via :mod:`maskcrypt.core.fileio` (temporary name, then rename), so
a PNG that exists is complete. Nothing here decides anything: the report
(:mod:`maskcrypt.reporting.report`) and the CLI call these with tables the stages wrote.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from maskcrypt.core.fileio import atomic_path, save_figure
from maskcrypt.masks import MaskLibrary, overlay
from maskcrypt.models import Inpainter

if TYPE_CHECKING:
    from maskcrypt.masks import MaskLibrary


def grid_image(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    ncol: int = 8,
    scale: int = 1,
    pad: int = 2,
) -> Image.Image:
    """Tile uint8 ``N x C x H x W`` images (C = 1 or 3) into one RGB picture with captions.

    Small images are enlarged by ``scale`` (nearest) so a 32 px face stays legible;
    captions, when given, go under each tile in PIL's built-in font.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"grid_image: expected N x C x H x W with C in (1, 3), got {arr.shape}")
    n, c, h, w = arr.shape
    ncol = max(1, min(ncol, n))
    nrow = max(1, -(-n // ncol))
    th, tw = h * scale, w * scale
    cap_h = 12 if captions else 0
    canvas = Image.new("RGB", (ncol * (tw + pad) + pad, nrow * (th + cap_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(n):
        tile = arr[i].transpose(1, 2, 0)
        tile = np.repeat(tile, 3, axis=2) if c == 1 else tile
        img = Image.fromarray(np.ascontiguousarray(tile))
        if scale != 1:
            img = img.resize((tw, th), Image.NEAREST)
        x = pad + (i % ncol) * (tw + pad)
        y = pad + (i // ncol) * (th + cap_h + pad)
        canvas.paste(img, (x, y))
        if captions:
            draw.text((x, y + th), str(captions[i])[: max(4, tw // 6)], fill=(0, 0, 0), font=font)
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save ``image`` as PNG via a temporary name, so a partial file never looks complete."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def auto_scale(height: int, target: int = 96) -> int:
    """Integer enlargement that brings a tile of ``height`` pixels near ``target`` pixels."""
    return max(1, target // max(height, 1))


def mask_grid(library: MaskLibrary, ids: Sequence[str] | None = None, per_bucket: int = 8) -> Image.Image:
    """Tile masks with id and ratio captions: the chosen ``ids``, or ``per_bucket`` per bucket (rows)."""
    if ids:
        batches = [library.get(list(ids))]
        ncol = min(len(ids), 8)
    else:
        batches = []
        for b in [*range(1, len(library.edges)), -1]:
            batch = next(library.iter_batches(per_bucket, buckets=[b]), None)
            if batch is not None and len(batch):
                batches.append(batch)
        ncol = per_bucket
    masks = np.concatenate([b.masks[:, None] * 255 for b in batches]) if batches else np.zeros((0, 1, 1, 1))
    captions = [f"b{int(bk)} {r:.3f}" if not ids else f"{mid} {r:.2f}"
                for b in batches for mid, bk, r in zip(b.mask_ids, b.buckets, b.ratios)]
    # Rows per bucket: pad each bucket's run to a full row so buckets start on new rows.
    if not ids:
        tiles, caps = [], []
        pos = 0
        for b in batches:
            n = len(b)
            tiles.append(masks[pos:pos + n])
            caps.extend(captions[pos:pos + n])
            pad = (-n) % ncol
            if pad:
                tiles.append(np.full((pad, 1, library.height, library.width), 255, np.uint8))
                caps.extend([""] * pad)
            pos += n
        masks, captions = (np.concatenate(tiles), caps) if tiles else (masks, captions)
    return grid_image(masks.astype(np.uint8), captions, ncol=ncol, scale=auto_scale(library.height))


def plot_table1(t1: pd.DataFrame, path: Path, t_gap: float) -> Path:
    """Grouped bars per bucket: first (E) and second (O) accuracy with their Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(t1))
    fig, ax = plt.subplots(figsize=(1.1 * len(t1) + 2, 3.6))
    for off, key, name, colour in ((-0.2, "first", "E (trained on masked)", "#2b6cb0"),
                                   (0.2, "second", "O (trained on clean)", "#c05621")):
        v = t1[key].to_numpy() * 100
        err = np.vstack([v - t1[f"{key}_lo"].to_numpy() * 100, t1[f"{key}_hi"].to_numpy() * 100 - v])
        ax.bar(x + off, v, 0.4, yerr=err, capsize=3, label=name, color=colour)
    for i, r in enumerate(t1.itertuples()):
        if r.target:
            ax.annotate("target", (i, 101), ha="center", fontsize=8, color="#276749")
    ax.set_xticks(x, t1["range"] if "range" in t1 else t1["bucket"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 108)
    ax.set_title(f"Table 1: accuracy per occlusion bucket (target: gap > {100 * t_gap:.0f} points)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def plot_table2(t2: pd.DataFrame, path: Path) -> Path:
    """Before/after bars per attacked mask: E on masked vs inpainted, and O on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(t2))
    fig, ax = plt.subplots(figsize=(0.7 * len(t2) + 2.5, 3.6))
    bars = [("fourth", "E on masked", "#2b6cb0"), ("fifth", "E on inpainted", "#90cdf4"),
            ("O_masked", "O on masked", "#c05621"), ("O_inpainted", "O on inpainted", "#fbd38d")]
    bars = [b for b in bars if b[0] in t2]
    width = 0.8 / len(bars)
    for k, (key, name, colour) in enumerate(bars):
        ax.bar(x - 0.4 + width * (k + 0.5), t2[key].to_numpy() * 100, width, label=name, color=colour)
    ax.set_xticks(x, [f"{m}\n{'*' if t else ''}" for m, t in zip(t2["mask_id"], t2["target"])], rotation=60,
                  fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Table 2: the inpainting attack (* = target mask)", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return save_figure(fig, path)


def target_gallery(run: Path, mask_ids: Sequence[str], images: np.ndarray, per_mask: int = 3) -> Image.Image:
    """Per target mask: the mask (white = hole), test images masked by it, and R's fill of them."""
    import torch

    lib = MaskLibrary.open(str(run / "masks"))
    r = Inpainter.from_checkpoint(run / "models" / "inpainter")
    x = torch.from_numpy(np.ascontiguousarray(images[:per_mask]))
    tiles, captions = [], []
    for mid, mask in zip(mask_ids, lib.get(list(mask_ids)).masks):
        m = torch.from_numpy(mask)
        masked = overlay(x, m)
        filled = r.inpaint(masked, m[None].expand(len(x), -1, -1))
        hole = np.repeat(((1 - mask) * 255).astype(np.uint8)[None, None], x.shape[1], axis=1)
        tiles += [hole, masked.numpy(), filled.numpy()]
        captions += [mid] + [f"masked {i}" for i in range(len(x))] + [f"inpainted {i}" for i in range(len(x))]
    arr = np.concatenate(tiles)
    return grid_image(arr, captions, ncol=1 + 2 * len(x), scale=auto_scale(arr.shape[2]))


def plot_attackers(table: pd.DataFrame, mask_ids: Sequence[str], path: Path, labels: dict[int, str] | None = None,
                   ) -> Path:
    """Per mask, one panel: every attacker's accuracy on each split with its interval, chance level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(mask_ids)
    ncol = min(3, max(1, len(ids)))
    nrow = -(-len(ids) // ncol) if ids else 1
    attackers = list(dict.fromkeys(table["attacker"]))
    fig, axes = plt.subplots(nrow, ncol, figsize=(0.55 * len(attackers) * ncol + 1.5, 3.2 * nrow), squeeze=False)
    splits = [s for s in ("selection", "confirmation") if s in set(table["split"])]
    width = 0.8 / max(1, len(splits))
    for ax in axes.ravel()[len(ids):]:
        ax.axis("off")
    for ax, mid in zip(axes.ravel(), ids):
        rows = table[table["mask_id"] == mid]
        x = np.arange(len(attackers))
        for k, (split, colour) in enumerate(zip(splits, ("#c05621", "#fbd38d"))):
            part = rows[rows["split"] == split].set_index("attacker").reindex(attackers)
            v = part["accuracy"].to_numpy() * 100
            err = np.vstack([v - part["accuracy_lo"].to_numpy() * 100, part["accuracy_hi"].to_numpy() * 100 - v])
            ax.bar(x - 0.4 + width * (k + 0.5), v, width, yerr=err, capsize=2, label=split, color=colour)
        chance = float(rows["chance"].iloc[0]) if len(rows) else float("nan")
        if np.isfinite(chance):
            ax.axhline(100 * chance, ls="--", c="k", lw=1, label="chance")
        bucket = int(rows["bucket"].iloc[0]) if len(rows) else 0
        ax.set_title(f"{mid} {labels.get(bucket, '') if labels else ''}", fontsize=9)
        ax.set_xticks(x, attackers, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel("attacker accuracy (%)", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("What an attacker gets: identification accuracy under each mask", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_ladder(table: pd.DataFrame, mask_ids: Sequence[str], path: Path, labels: dict[int, str] | None = None,
                ) -> Path:
    """The attacker ladder: accuracy against the attacker's labelled photos, one colour per mask.

    Selection solid, confirmation dotted; intervals shaded; chance dashed. The x axis is
    symmetric-log with a tick at every rung (0 photos, O itself, at the left edge).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, mid in enumerate(mask_ids):
        mine = table[table["mask_id"] == mid]
        bucket = int(mine["bucket"].iloc[0]) if len(mine) else 0
        colour = colours[i % len(colours)]
        for split, style in (("selection", "-"), ("confirmation", ":")):
            part = mine[mine["split"] == split].sort_values("photos")
            if part.empty:
                continue
            x = part["photos"].to_numpy()
            ax.plot(x, 100 * part["accuracy"], style, marker="o", ms=3, color=colour,
                    label=f"{mid} {labels.get(bucket, '') if labels else ''}" if split == "selection" else None)
            ax.fill_between(x, 100 * part["accuracy_lo"], 100 * part["accuracy_hi"], color=colour, alpha=0.08)
    photos = sorted(int(p) for p in table["photos"].unique())
    positive = [p for p in photos if p > 0]
    ax.set_xscale("symlog", linthresh=max(1.0, min(positive, default=2) / 2))
    ax.set_xticks(photos, [f"{p:,}" for p in photos], fontsize=7)
    ax.minorticks_off()
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], ls="-", c="grey", label="selection"),
                Line2D([], [], ls=":", c="grey", label="confirmation")]
    if len(table):
        handles.append(ax.axhline(100 * float(table["chance"].iloc[0]), ls="--", c="k", lw=1, label="chance"))
    ax.set_xlabel("the attacker's labelled photos (0: O itself)", fontsize=8)
    ax.set_ylabel("identification accuracy (%)", fontsize=8)
    ax.set_ylim(0, 105)
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("What an attacker gets with N photos", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_unlinkability(curves: dict[str, Any], path: Path) -> Path:
    """The local D(s) of the worst pair of masks per model, over the mated and non-mated score densities.

    ``curves``: a title per panel -> an :class:`~maskcrypt.verification.unlinkability.Unlinkability`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4.6 * max(1, len(curves)), 3.4), squeeze=False)
    for ax, (title, u) in zip(axes[0], curves.items()):
        width = float(u.centres[1] - u.centres[0]) if len(u.centres) > 1 else 1.0
        ax.bar(u.centres, u.mated_density / width, width=width, alpha=0.35, color="tab:red", label="mated")
        ax.bar(u.centres, u.non_mated_density / width, width=width, alpha=0.35, color="tab:blue", label="non-mated")
        ax.set_xlabel("cosine score, mask A vs mask B", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        twin = ax.twinx()
        twin.plot(u.centres, u.local, c="k", lw=1.2, label="D(s)")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("local D(s)", fontsize=8)
        ax.set_title(f"{title}: D_sys = {u.d_sys:.2f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)
