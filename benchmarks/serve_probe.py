"""Serve a run as ``maskcrypt serve`` does, check one answer, then drive it: req/s where the replica runs.

    python benchmarks/serve_probe.py RUN [--gpus 1] [--concurrency 32] [--seconds 10]
    python benchmarks/serve_probe.py RUN --gpus 1 --replicas 1,2,4   # replicas sharing one node's GPU

A short check for a machine where ``benchmarks/serve_load.py`` (2-CPU sizing, py-spy,
autoscaling) is too much: starts a local Ray, deploys the run's service with
``--gpus`` per replica (the config path ``maskcrypt serve --gpus`` takes), posts one
test face and prints the answer and the replica's device, then drives ``/v1/recognize``
(one PNG per request) and ``/v1/recognize/batch`` (16 per request) with closed-loop
clients. ``--replicas 1,2,4`` then redeploys with each count of replicas sharing the
node's ``--gpus`` evenly (and its CPUs) and drives one image per request again: images/s
per node against replicas, the question of how many replicas one GPU node should run.
Ends with ``RESULT`` lines. ``benchmarks/gpu_session.sh`` runs it on the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--gpus", type=float, default=0.0, help="GPUs per replica")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--replicas", default="", help="comma list of replica counts sharing the node, e.g. 1,2,4")
    args = ap.parse_args()
    try:
        sweep = [int(r) for r in args.replicas.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--replicas: expected a comma list of counts, got {args.replicas!r}")
    if any(r < 1 for r in sweep):
        ap.error(f"--replicas: counts must be >= 1, got {args.replicas!r}")

    import ray
    from ray import serve
    from serve_load import drive, multipart, probe_face

    from maskcrypt.runtime.cluster import init_ray
    from maskcrypt.serving.deployment import build_app
    from maskcrypt.serving.requests import ServiceConfig

    run = args.run.resolve()
    targets, test, body = probe_face(run)

    init_ray(include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    t0 = time.perf_counter()
    serve.run(build_app(ServiceConfig(run=str(run)), num_gpus=args.gpus), name="probe", route_prefix="/")
    print(f"deployed in {time.perf_counter() - t0:.1f}s, {args.gpus:g} GPU per replica, {len(targets.ids)} masks")
    url = f"http://127.0.0.1:{args.port}"
    health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=30).read())
    req = urllib.request.Request(f"{url}/v1/recognize", data=body, headers={"Content-Type": "image/png"})
    answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
    print("healthz:", json.dumps(health)[:400])
    print("answer:", json.dumps({k: answer[k] for k in answer if k != "top_k"}), "true label", int(test.labels[0]))
    drive(f"{url}/v1/recognize", body, args.concurrency, 3.0)  # warm-up
    single = drive(f"{url}/v1/recognize", body, args.concurrency, args.seconds)
    batch_body, ctype = multipart([body] * 16)
    batched = drive(f"{url}/v1/recognize/batch", batch_body, max(1, args.concurrency // 4), args.seconds, ctype)
    print(f"one image per request, concurrency {args.concurrency}: {single['req_per_s']:.0f} req/s, "
          f"p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms, errors {single['errors']}")
    print(f"16 images per request, concurrency {max(1, args.concurrency // 4)}: "
          f"{16 * batched['req_per_s']:.0f} images/s, p50 {batched['p50_ms']:.1f} ms, errors {batched['errors']}")
    print(f"RESULT serve_probe_req_per_s {single['req_per_s']:.1f}")
    print(f"RESULT serve_probe_batch_images_per_s {16 * batched['req_per_s']:.1f}")
    errors = single["errors"] + batched["errors"]
    cpus = ray.cluster_resources().get("CPU", 1.0)
    for r in sweep:  # replicas sharing the node: its GPUs split evenly, a CPU each while the proxy keeps one
        serve.delete("probe")
        app = build_app(ServiceConfig(run=str(run)), num_replicas=r, num_gpus=args.gpus / r,
                        num_cpus=max(0.25, min(1.0, (cpus - 1) / r)))
        serve.run(app, name="probe", route_prefix="/")
        drive(f"{url}/v1/recognize", body, args.concurrency, 3.0)  # warm-up
        got = drive(f"{url}/v1/recognize", body, args.concurrency, args.seconds)
        errors += got["errors"]
        print(f"{r} replica(s) x {args.gpus / r:g} GPU, one image per request, concurrency {args.concurrency}: "
              f"{got['req_per_s']:.0f} images/s per node, p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms, "
              f"errors {got['errors']}")
        print(f"RESULT serve_probe_replicas_{r}_images_per_s {got['req_per_s']:.1f}")
    print(f"RESULT serve_probe_errors {errors}")
    serve.shutdown()
    ray.shutdown()
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
