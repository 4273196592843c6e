"""Driver memory of the training report and of verify as the test set grows: it must stay flat (<= 1.2x).

    python benchmarks/driver_memory.py --quick          # 1,000 and 8,000 test images at 112 px
    python benchmarks/driver_memory.py                  # 1,000, 2,000, 4,000 and 8,000
    python benchmarks/driver_memory.py --code OLD_TREE  # the same measurement of another checkout's code

Both stages used to decode the whole test split in the driver and run the models there;
they now decode in Ray tasks into the object store and run the models in evaluation
actors. For each size a fresh process builds a run directory at 112 x 112 with untrained
models (compact recognizer width 8, RFR-Net width 4 with one iteration: memory, not
accuracy, is measured), a library of 12 masks of the (0.5,0.6] bucket and one target
mask, then measures, on a local Ray of 2 CPUs, the training report (E, O and R under one
mask per image) and ``verify`` (pairs generated from the labels, one target mask) inside
a :class:`maskcrypt.runtime.monitor.PeakRSS` sampler: the driver's peak RSS, the evaluation
actors' and the object store's. The test images are the synthetic source at 112 px
(``synthetic:identities=N/20,per_identity=20,size=112#split=all``).

``--code`` runs the measurement with another checkout first on the import path (e.g. a
``git worktree`` of the commit before the change), calling whichever API that code has:
the figures of both land side by side. Prints a table and ``RESULT driver_memory_*`` lines
(ratios of the largest size's driver peak to the smallest's).
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SIZE = 112


def make_run(root: Path, spec: str) -> None:
    """A run directory whose models are untrained but valid, with a (0.5,0.6] library and one target mask."""
    import torch

    from maskcrypt.core.fileio import write_json, write_parquet
    from maskcrypt.data import source_split
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into
    from maskcrypt.models import Inpainter, InpainterConfig, Recognizer, RecognizerConfig
    from maskcrypt.models.checkpoint import save_checkpoint

    names = source_split(spec, size=SIZE).class_names
    torch.manual_seed(0)
    lib = MaskLibrary.open_or_create(str(root / "masks"), SIZE, SIZE)
    generate_into(lib, 12, seed=0, buckets=[6])
    same = {"train_config_sha256": "same", "train_config": {}}
    for role in ("original", "encrypted"):
        cfg = RecognizerConfig(num_classes=len(names), image_size=SIZE, width=8)
        save_checkpoint(root / "models" / role / "checkpoint_epoch_0001", Recognizer(cfg).eval(),
                        {"kind": "recognizer", "role": role, "model_config": cfg.to_dict(), "epoch": 1, "epochs": 1,
                         "image_size": SIZE, "channels": 3, "class_names": names, **same})
    r = Inpainter(InpainterConfig(width=4, iterations=1, image_size=SIZE)).eval()
    save_checkpoint(root / "models" / "inpainter" / "checkpoint_epoch_0001", r,
                    {"kind": "inpainter", "model_config": r.config.to_dict(), "epoch": 1, "epochs": 1})
    keep = lib.table().slice(0, 1)
    write_parquet(keep, root / "targets.parquet")
    write_json(root / "targets.json", {"targets": [{"mask_id": keep.column("mask_id")[0].as_py(),
                                                    "sha256": keep.column("sha256")[0].as_py()}], "scoring": "closed"})
    write_json(root / "run.json", {"prepare": {"data": spec}})


def measure(n: int) -> dict[str, float]:
    """One test-set size, in this process: each stage's wall time and peaks."""
    import ray

    from maskcrypt.runtime.monitor import PeakRSS
    from maskcrypt.train.report import training_quality
    from maskcrypt.verification.stage import verify

    spec = f"synthetic:identities={n // 20},per_identity=20,size={SIZE}#split=all"
    out: dict[str, float] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        make_run(root, spec)
        new_api = "settings" in inspect.signature(training_quality).parameters
        if new_api:
            from maskcrypt.config import EvalSettings

            settings = EvalSettings(actors=2)
        for stage in ("report", "verify"):
            t0 = time.perf_counter()
            with PeakRSS(object_store=True, interval=0.1) as peak:
                if stage == "report":
                    q = (training_quality(root, spec, settings=settings) if new_api
                         else training_quality(root, spec))
                    assert q["images"] == n, q["images"]
                else:
                    table = (verify(root, spec + ",pairs=generate", settings=settings, log=lambda _: None) if new_api
                             else verify(root, spec + ",pairs=generate", device="cpu", log=lambda _: None))
                    assert len(table) >= 5
            out |= {f"{stage}_driver_mb": peak.driver_mb, f"{stage}_actor_mb": peak.actor_mb,
                    f"{stage}_store_mb": peak.object_store_mb or 0.0, f"{stage}_s": time.perf_counter() - t0}
    ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 and 8,000 test images only")
    ap.add_argument("--code", default="", help="a checkout whose maskcrypt is measured (default: this one)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("CHILD " + json.dumps(measure(args.child)), flush=True)
        return
    code = str(Path(args.code).resolve()) if args.code else str(HERE.parents[1])
    sizes = (1000, 8000) if args.quick else (1000, 2000, 4000, 8000)
    rows = {}
    for n in sizes:
        env_path = f"{code}:{HERE.parents[1]}"
        done = subprocess.run([sys.executable, str(HERE), "--child", str(n)], capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": env_path}, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("CHILD ")), None)
        if line is None:
            sys.exit(f"size {n} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        rows[n] = json.loads(line[6:])
        r = rows[n]
        print(f"{n:>6} images: report {r['report_s']:6.1f}s driver {r['report_driver_mb']:6.0f} MB actors "
              f"{r['report_actor_mb']:5.0f} MB store {r['report_store_mb']:5.0f} MB | verify {r['verify_s']:6.1f}s "
              f"driver {r['verify_driver_mb']:6.0f} MB actors {r['verify_actor_mb']:5.0f} MB store "
              f"{r['verify_store_mb']:5.0f} MB", flush=True)
    lo, hi = rows[sizes[0]], rows[sizes[-1]]
    print(f"code: {code}")
    for stage in ("report", "verify"):
        print(f"RESULT driver_memory_{stage}_ratio {hi[f'{stage}_driver_mb'] / lo[f'{stage}_driver_mb']:.3f}")
        print(f"RESULT driver_memory_{stage}_driver_mb_at_{sizes[-1]} {hi[f'{stage}_driver_mb']:.0f}")


if __name__ == "__main__":
    main()
