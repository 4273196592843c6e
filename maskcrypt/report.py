"""Pictures and tables for people: image grids, the determination report (``report.md``).

Pictures are written with :func:`save_png` (temp name, then rename), so a PNG that
exists is complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont


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
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, target)
    return target


def auto_scale(height: int, target: int = 96) -> int:
    """Integer enlargement that brings a tile of ``height`` pixels near ``target`` pixels."""
    return max(1, target // max(height, 1))


# -- the determination report ----------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * float(v):.2f}"


def _interval(row: Any, key: str) -> str:
    return f"{_pct(row[key])} [{_pct(row[key + '_lo'])}, {_pct(row[key + '_hi'])}]"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


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
    return _save_figure(fig, path)


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
    return _save_figure(fig, path)


def target_gallery(run: Path, mask_ids: Sequence[str], images: np.ndarray, per_mask: int = 3) -> Image.Image:
    """Per target mask: the mask (white = hole), test images masked by it, and R's fill of them."""
    import torch

    from maskcrypt.masks import MaskLibrary, overlay
    from maskcrypt.models import Inpainter

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


def write_report(run: str | os.PathLike[str], test: Any, log: Any = print) -> Path:
    """``RUN/report.md`` and its pictures from the result tables and ``targets.json``.

    Written last (pictures first, the Markdown via a temporary name), so a report that
    exists describes complete tables.
    """
    from maskcrypt.run import code_version

    root = Path(run)
    res = root / "results"
    result = json.loads((root / "targets.json").read_text())
    th = result["thresholds"]
    t1 = pd.read_parquet(res / "table1.parquet")
    out: list[str] = [f"# maskcrypt report: {root.name}", ""]
    out.append(f"Run `{root}`, code {code_version()}, written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.")
    splits = result.get("splits", {})
    out.append(f"Test data `{result['test_data']}`: {result['test_images']} images, {result['scoring']}-set "
               f"scoring; selection split {splits.get('selection')} images, confirmation split "
               f"{splits.get('confirmation', 0)} images (held out: no rule sees it).")
    out.append("Thresholds: " + ", ".join(f"{k} = {v}" for k, v in th.items()) + ".")
    out += ["", "## Table 1: accuracy per bucket (selection split)", ""]
    plot_table1(t1, res / "table1.png", th["t_gap"])
    out.append(f"Mode `{t1['mode'].iloc[0]}`; accuracies in %, mean ± std over {int(t1['repeats'].max())} "
               "repetitions (full mode: over the bucket's masks), Wilson interval of the pooled counts in brackets.")
    out += ["", "![Table 1](results/table1.png)", ""]
    out.append(_md_table(
        ["bucket", "first (E)", "±", "second (O)", "±", "gap", "target", "gap near t_gap"],
        [[r["range"], _interval(r, "first"), _pct(r["first_std"]), _interval(r, "second"), _pct(r["second_std"]),
          _pct(r["gap"]), "yes" if r["target"] else "", "yes" if r["gap_uncertain"] else ""]
         for _, r in t1.iterrows()]))
    if (res / "per_mask.parquet").exists():
        pm = pd.read_parquet(res / "per_mask.parquet")
        out += ["", "## Per-mask third accuracy and candidates", ""]
        out.append(f"{len(pm)} masks measured on every selection image; basic rule (E > {th['t_enc']}, "
                   f"O < {th['t_orig']}) passed by {int(pm['basic_pass'].sum())}. Candidates (top {th['top_k']} "
                   "per target bucket):")
        cands = pd.read_parquet(res / "candidates.parquet")
        out += ["", _md_table(["bucket", "rank", "mask", "third (E)", "O"],
                              [[r["bucket"], r["rank"], r["mask_id"], _interval(r, "third"), _pct(r["acc_O"])]
                               for _, r in cands.iterrows()])]
    if result.get("adaptive"):
        ad = result["adaptive"]
        rounds = ad["rounds"]
        out += ["", f"Ranked adaptively (a race on {ad['confidence']:.0%} Wilson bounds, top {ad['keep']} kept per "
                f"bucket): {ad['forward_passes']:,} forward passes against {ad['full_forward_passes']:,} in full mode "
                f"({ad['full_forward_passes'] / max(ad['forward_passes'], 1):.1f}x fewer), {len(rounds)} rounds.", "",
                _md_table(["round", "masks", "masked images", "forward passes", "still open after", "seconds"],
                          [[r["round"], r["masks"], f"{r['images']:,}", f"{r['forward_passes']:,}", r["open"],
                            r["seconds"]] for r in rounds])]
    if (res / "table2.parquet").exists():
        t2 = pd.read_parquet(res / "table2.parquet")
        plot_table2(t2, res / "table2.png")
        out += ["", "## Table 2: the inpainting attack (selection split)", "",
                "E on the masked images (fourth), on the same images inpainted by R (fifth), the drop with its "
                "paired 95% interval, and O on both: what an attacker holding an inpainter and an ordinary model "
                "gets back.", "", "![Table 2](results/table2.png)", ""]
        out.append(_md_table(
            ["bucket", "rank", "mask", "fourth", "fifth", "drop", "drop near t_drop", "O masked", "O inpainted",
             "target"],
            [[r["bucket"], r["rank"], r["mask_id"], _interval(r, "fourth"), _interval(r, "fifth"),
              _interval(r, "drop"), "yes" if r["drop_uncertain"] else "", _pct(r.get("O_masked")),
              _pct(r.get("O_inpainted")), "yes" if r["target"] else ""] for _, r in t2.iterrows()]))
    out += ["", "## Target masks", ""]
    targets = result["targets"]
    if targets:
        out.append("Best first. Figures on the selection split (where they were chosen) and on the held-out "
                   "confirmation split: a fall from one to the other is selection bias.")
        out.append("")
        rows = []
        for t in targets:
            c = t.get("confirmation") or {}
            rows.append([t["mask_id"], t["range"], _interval(t, "fourth"), _interval(c, "fourth") if c else "",
                         _interval(t, "drop"), _interval(c, "drop") if c else "", _pct(t.get("O_masked")),
                         _pct(c.get("O_masked")), _pct(t.get("O_inpainted")), _pct(c.get("O_inpainted")),
                         "yes" if t["in_training_pool"] else "no"])
        out.append(_md_table(["mask", "bucket", "E masked (sel.)", "E masked (conf.)", "drop (sel.)",
                              "drop (conf.)", "O masked (sel.)", "O masked (conf.)", "O inpainted (sel.)",
                              "O inpainted (conf.)", "in E's training pool"], rows))
        out.append("")
        out.append(f"{result['training_pool_overlap']} of {len(targets)} target masks are in E's training pool "
                   "(compared by sha256).")
        probe = np.flatnonzero(~np.asarray(test.gallery) & (np.asarray(test.split) == 0))
        _, first = np.unique(np.asarray(test.labels)[probe], return_index=True)
        pics = test.images[probe[np.sort(first)][:3]]
        save_png(target_gallery(root, [t["mask_id"] for t in targets], pics), res / "targets.png")
        out += ["", "Each target mask (white = hole), test images masked by it, and R's inpainting of them:", "",
                "![target masks](results/targets.png)"]
    else:
        reason = result.get("reason") or {}
        out.append(f"None. Rule `{reason.get('rule')}`: {reason.get('message')}")
        if reason.get("closest"):
            out += ["", "Closest values:", "", "```", json.dumps(reason["closest"], indent=1), "```"]
    out += ["", "## Time and throughput", ""]
    out.append(", ".join(f"{k} {v} s" for k, v in result.get("seconds", {}).items()) + ".")
    tp = result.get("throughput")
    if tp and tp.get("per_mask_images_per_s") is None:
        out.append(f"Per-mask stage: every mask's counts came from earlier work ({tp.get('resumed_masks', 0)} masks "
                   "resumed from results/per_mask.parts, or measured by Table 1's full mode): no throughput to "
                   "report.")
    elif tp:
        line = f"Per-mask stage: {tp['per_mask_images_per_s']:,.0f} masked images recognized per second"
        if "ratio" in tp:
            line += (f", {tp['ratio']:.2f}x the bare forward pass of the same models on pre-built tensors "
                     f"({tp['bare_forward_images_per_s']:,.0f}/s on {tp['actors']} actors' CPUs; start-up included)")
        out.append(line + ".")
    path = root / "report.md"
    tmp = root / ".report.md.tmp"
    tmp.write_text("\n".join(out) + "\n")
    os.replace(tmp, path)
    log(f"report: {path}")
    return path
