"""Training input at scale: driver memory flat as the data grows 16x, throughput against a plain DataLoader.

    python benchmarks/scale.py --quick     # 500 -> 2,000 -> 8,000 JPEG faces at 112 px
    python benchmarks/scale.py             # 2,000 -> 8,000 -> 32,000

1. For each size, ``maskcrypt data export`` writes an image folder of synthetic faces
   as JPEG files at 112 px, in a process of its own, before anything is measured.
2. For each size, a fresh driver process trains O (the default compact recognizer at
   112 px, the default TrainConfig, 2 Ray Train workers) for one epoch through the real
   path: the folder's index on the driver, decode/crop/resize in Ray Data tasks, the
   streaming split into the workers. It samples its own peak RSS and the object store's.
3. At the largest size, the baseline in the same run: one process, a plain PyTorch
   ``DataLoader`` over the same files with the same decode, the same model, global
   batch and optimizer, as many torch threads as the Ray Train workers have together,
   and ``num_workers`` = CPUs - 1.

Throughput is the steady state: images/s after the first 10% of the epoch's steps (the
workers report it, ``images_per_s_steady``; the baseline measures the same way).

``RESULT`` lines: ``scale_driver_rss_ratio`` (peak driver RSS at the largest size over
the smallest; target <= 1.2), ``scale_train_vs_dataloader`` (target >= 0.8 on 2 cores),
``scale_object_store_peak_mb`` (at the largest size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 112
IDENTITIES = 80
BATCH = 128


def export(n: int, folder: Path) -> None:
    spec = f"synthetic:identities={IDENTITIES},per_identity={n // IDENTITIES},size={SIZE}#split=all"
    subprocess.run([sys.executable, "-m", "maskcrypt", "data", "export", spec, "--out", str(folder)], check=True,
                   capture_output=True, text=True)


def child_ray(folder: str, workers: int) -> dict:
    """One epoch of O through Ray Train + Ray Data in this (fresh) process: peaks and steady images/s."""
    from maskcrypt.config import ModelSettings, Resources, TrainConfig, TrainSources
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into
    from maskcrypt.runtime.cluster import init_ray
    from maskcrypt.runtime.monitor import PeakRSS
    from maskcrypt.train.driver import train_run

    init_ray(num_cpus=os.cpu_count(), include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        generate_into(MaskLibrary.create(str(run / "masks_train"), SIZE, SIZE), 4, seed=1)
        with PeakRSS(object_store=True) as peak:
            t0 = time.perf_counter()
            metas = train_run(run, f"imagefolder:{folder}", SIZE, sources=TrainSources(models="original"),
                              models=ModelSettings(), train_config=TrainConfig(epochs=1, batch_size=BATCH),
                              resources=Resources(workers=workers, sharding="stream"), log=lambda *_: None)
            wall = time.perf_counter() - t0
    m = metas["original"]["metrics"]
    return {"driver_mb": peak.driver_mb, "object_store_mb": peak.object_store_mb, "wall_s": wall,
            "images_per_s": m["images_per_s"], "images_per_s_steady": m["images_per_s_steady"]}


def child_dataloader(folder: str, threads: int) -> dict:
    """The same epoch as a plain PyTorch loop over a DataLoader (same files, decode, model, batch, optimizer)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from maskcrypt.config import ModelSettings, TrainConfig
    from maskcrypt.core.precision import autocast, channels_last, use_bf16
    from maskcrypt.data import source_split
    from maskcrypt.data.images import decode_file
    from maskcrypt.models.recognizer import Recognizer, RecognizerConfig
    from maskcrypt.train.loop import lr_lambda

    split = source_split(f"imagefolder:{folder}", default_split="train", size=SIZE)

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(split)

        def __getitem__(self, i: int):
            return decode_file(split.paths[i], split.size, split.channels, split.crop), int(split.labels[i])

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tc = TrainConfig(epochs=1, batch_size=BATCH)
    bf16 = use_bf16(tc.precision, "cpu")
    ms = ModelSettings()  # the Ray path's model: train_run builds it from the same defaults
    model = Recognizer(RecognizerConfig(arch=ms.arch, num_classes=len(split.class_names), channels=split.channels,
                                        image_size=SIZE, width=ms.width, depth=tuple(ms.depth), head=ms.head))
    if channels_last("cpu", bf16):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
                          nesterov=True)
    loader = torch.utils.data.DataLoader(Files(), batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=max(1, (os.cpu_count() or 2) - 1))
    steps = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.to_dict(), steps))
    warm, seen, t_warm, seen_warm = max(1, steps // 10), 0, time.perf_counter(), 0
    t0 = time.perf_counter()
    model.train()
    for step, (x, y) in enumerate(loader, 1):
        x = x.contiguous(memory_format=torch.channels_last) if bf16 else x
        with autocast("cpu", bf16):
            logits = model(x, y)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(y)
        if step == warm:
            t_warm, seen_warm = time.perf_counter(), seen
    now = time.perf_counter()
    assert np.isfinite(float(loss))
    return {"images_per_s": seen / (now - t0), "images_per_s_steady": (seen - seen_warm) / (now - t_warm)}


def run_child(kind: str, folder: Path, n: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(folder), str(n)], capture_output=True,
                       text=True, timeout=6 * 3600)
    if r.returncode != 0:
        raise SystemExit(f"{kind} on {folder} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="500 -> 2,000 -> 8,000 images")
    p.add_argument("--sizes", default="", help="comma list of image counts (default 2000,8000,32000)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, folder, n = args.child
        got = (child_ray(folder, args.workers) if kind == "ray"
               else child_dataloader(folder, threads=args.workers))
        print(json.dumps(got))
        return 0
    sizes = [int(s) for s in (args.sizes or ("500,2000,8000" if args.quick else "2000,8000,32000")).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for n in sizes:
            folders[n] = Path(tmp) / f"faces_{n}"
            t0 = time.perf_counter()
            export(n, folders[n])
            print(f"{n:>6} JPEG faces at {SIZE} px written in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = {}
        for n in sizes:
            rows[n] = run_child("ray", folders[n], n)
            r = rows[n]
            print(f"{n:>6} images: Ray Train + Ray Data {r['images_per_s_steady']:.1f} img/s steady "
                  f"({r['images_per_s']:.1f} over the epoch, {r['wall_s']:.0f} s wall), driver peak "
                  f"{r['driver_mb']:.0f} MB, object store peak {r['object_store_mb'] or 0:.1f} MB", flush=True)
        base = run_child("dataloader", folders[sizes[-1]], sizes[-1])
        print(f"{sizes[-1]:>6} images: plain DataLoader loop {base['images_per_s_steady']:.1f} img/s steady "
              f"({base['images_per_s']:.1f} over the epoch)")
    big, small = rows[sizes[-1]], rows[sizes[0]]
    print(f"RESULT scale_driver_rss_ratio {big['driver_mb'] / small['driver_mb']:.3f}")
    print(f"RESULT scale_train_vs_dataloader {big['images_per_s_steady'] / base['images_per_s_steady']:.3f}")
    print(f"RESULT scale_object_store_peak_mb {big['object_store_mb'] or 0:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
