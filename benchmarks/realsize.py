"""The whole method at real size, stage by stage, with each stage's wall time and memory peaks.

    python benchmarks/realsize.py --config configs/faces25k.yaml [--log runs/faces25k.log]

Runs ``maskcrypt run``'s pipeline (the same code) one stage at a time (prepare, train,
determine) on an embedded local Ray, each inside a :class:`maskcrypt.runtime.monitor.PeakRSS`
sampler: wall seconds, the driver's peak RSS, the evaluation actors' peak RSS and the
object stores' peak use. Every stage resumes what the run directory already holds, so
an interrupted measurement is relaunched with the same command (a resumed stage's
figures say so: compare only uninterrupted ones). The stages' own lines (epochs,
rates, tables) go to the log; the per-stage table ends it, with ``RESULT realsize_*``
lines. The images/s per stage are in the stages' own lines (training's per epoch, the
race's and the attackers' per round).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a RunConfig YAML (configs/faces25k.yaml)")
    ap.add_argument("--log", default="", help="also append every line to this file")
    ap.add_argument("--stages", default="prepare,train,determine")
    args = ap.parse_args()

    from maskcrypt.config.runconfig import RunConfig
    from maskcrypt.pipeline import run_pipeline
    from maskcrypt.runtime.cluster import init_ray
    from maskcrypt.runtime.monitor import PeakRSS

    log_file = open(args.log, "a") if args.log else None  # noqa: SIM115 (open for the whole run)

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        if log_file:
            log_file.write(stamped + "\n")
            log_file.flush()

    base = RunConfig.from_yaml(args.config)
    init_ray()
    rows = []
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        config = base.with_values({"until": stage})
        t0 = time.perf_counter()
        with PeakRSS(object_store=True, interval=1.0) as peak:
            run_pipeline(config, start=stage, log=log)
        rows.append((stage, time.perf_counter() - t0, peak.driver_mb, peak.actor_mb, peak.object_store_mb))
        log(f"stage {stage}: {rows[-1][1]:.1f}s, driver peak {peak.driver_mb:.0f} MB, actors {peak.actor_mb:.0f} MB, "
            f"object store {peak.object_store_mb or 0:.0f} MB")
    log("| stage | wall s | driver peak MB | actor peak MB | object store peak MB |")
    log("|---|---|---|---|---|")
    for stage, wall, drv, act, store in rows:
        log(f"| {stage} | {wall:.1f} | {drv:.0f} | {act:.0f} | {store or 0:.0f} |")
    for stage, wall, drv, _, store in rows:
        log(f"RESULT realsize_{stage}_seconds {wall:.1f}")
        log(f"RESULT realsize_{stage}_driver_mb {drv:.0f}")
        log(f"RESULT realsize_{stage}_object_store_mb {store or 0:.0f}")


if __name__ == "__main__":
    main()
