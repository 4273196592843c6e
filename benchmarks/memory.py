"""Memory of the evaluator as the mask library grows: it must stay flat (within 1.2x).

    python benchmarks/memory.py --quick     # 1k and 10k masks, ~1 minute
    python benchmarks/memory.py             # 1k, 10k and 100k masks, ~8 minutes

For each library size the masks are generated at 32 x 32, then a fresh process (so
peaks are its own, and hold nothing of the generation) starts a local Ray and streams
every mask against 4 test images through ``evaluate_masks`` (2 actors, the embedded
default recognizer, untrained). A sampler thread reads, every 0.2 s, the driver's RSS
and the RSS of every evaluation actor (``ray::MapWorker`` processes) from ``/proc``
(Linux), and every second the bytes in use in the object store (what ``ray memory
--stats-only`` shows; an internal Ray API, reported as unavailable if it refuses).
Reported: the peaks, and their ratios to the smallest library's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(library: str) -> dict[str, float]:
    """One library, in this process: peak driver and actor RSS in MB while every mask is evaluated."""
    import ray

    from maskcrypt.config import EvalSettings
    from maskcrypt.data import load
    from maskcrypt.evaluation.crossproduct import evaluate_masks
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.runtime.monitor import PeakRSS

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cross_product import SPEC, make_checkpoint

    test = load(SPEC + "#limit=4", default_split="test")
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root, test.class_names).parent
        lib = MaskLibrary.open(library)
        n_masks = len(lib)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        with PeakRSS(object_store=True) as peak:
            counts = evaluate_masks(lib, ts, {"E": ckpt}, settings=EvalSettings(actors=2, masks_per_batch=64))
        seconds = time.perf_counter() - t0
        ray.shutdown()
    assert len(counts) == n_masks
    return {"driver_mb": peak.driver_mb, "actor_mb": peak.actor_mb, "store_mb": peak.object_store_mb,
            "seconds": seconds, "masks_per_s": n_masks / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1k and 10k masks only")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: measure one library
    args = p.parse_args()
    if args.one:
        print("MEASURED " + json.dumps(measure(args.one)))
        return
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into

    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    rows = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            # Generated here, so the measured process holds nothing but the evaluation.
            generate_into(MaskLibrary.create(f"{tmp}/masks", 32, 32), n, seed=0)
            out = subprocess.run([sys.executable, __file__, "--one", f"{tmp}/masks"], capture_output=True,
                                 text=True, check=True).stdout
        rows[n] = json.loads(next(line for line in out.splitlines() if line.startswith("MEASURED "))[9:])
        r = rows[n]
        store = "n/a" if r["store_mb"] is None else f"{r['store_mb']:.2f} MB"
        print(f"{n:>7,} masks x 4 images: driver peak {r['driver_mb']:.0f} MB, actor peak {r['actor_mb']:.0f} MB, "
              f"object store peak {store}, {r['seconds']:.1f} s ({r['masks_per_s']:,.0f} masks/s)")
    top = rows[sizes[-1]]
    for key in ("driver_mb", "actor_mb", "store_mb"):
        # Against 1k, and against 10k: the object store holds the pipeline's in-flight blocks, a queue a 1k
        # run ends before filling; flat from 10k on is the claim that matters there.
        for small in sizes[:-1]:
            if rows[small][key] and top[key] is not None:
                print(f"RESULT memory_{key[:-3]}_ratio_{sizes[-1] // 1000}k_vs_{small // 1000}k "
                      f"{top[key] / rows[small][key]:.3f}")
    print(f"RESULT memory_masks_per_s_{sizes[-1] // 1000}k {top['masks_per_s']:.0f}")


if __name__ == "__main__":
    main()
