"""Load test of the recognition service: requests/s and latency percentiles, batched vs not, autoscaling.

    python benchmarks/serve_load.py --quick     # ~2 minutes; needs a run with targets (make run)
    python benchmarks/serve_load.py             # ~4 minutes

Serves ``--run`` (default ``runs/default``) on a local Ray with 2 CPUs and drives it
with closed-loop asyncio clients (aiohttp, one connection each) posting a 32 x 32 test
face as PNG to ``/v1/recognize`` (server-side masking with the best target):

* **batched** (``max_batch_size=16``) and **unbatched** (``max_batch_size=1``), one
  replica of 1 CPU, at concurrency 1, 8 and 32: requests/s, p50/p95/p99, errors;
* **bare**: E's forward on pre-masked tensors in this process on one thread (the
  replica's CPU), at batch 1 and 16, the same precision: the ceiling a replica could
  reach if HTTP, decoding and batching cost nothing;
* **where the time goes**: PNG decode + crop/resize, masking and a JSON answer per
  request, measured here, and the CPU seconds per request of Serve's proxy, the
  replica, the controller and the clients (``/proc``), under each load;
* **batch endpoint**: ``POST /v1/recognize/batch`` with 16 images per multipart request
  at concurrency 8: images/s (reported apart from req/s);
* **profile** (``--profile S``): py-spy samples Serve's proxy and the replica for S
  seconds under the batched load at concurrency 32 and prints where their time goes
  (the functions with the most samples, ours and Ray's);
* **autoscaling** (``--autoscale`` 1,2 replicas, ``--target-ongoing-requests`` 4, short
  delays): deployed as ``maskcrypt serve --autoscale`` deploys; the replica count sampled
  every second under concurrency 32, then idle.

``--throughput-optimized`` runs everything with Ray 2.60's throughput-optimized Serve
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: direct ingress to replicas, gRPC inside), for a
comparison with the default. Ends with ``RESULT`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskcrypt.runtime.ports import free_port


async def _drive(url: str, body: bytes, concurrency: int, seconds: float, content_type: str = "image/png") -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": content_type}) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    q = np.quantile(latencies, [0.5, 0.95, 0.99]) if latencies else [float("nan")] * 3
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "req_per_s": len(latencies) / elapsed, "p50_ms": 1000 * q[0], "p95_ms": 1000 * q[1], "p99_ms": 1000 * q[2]}


def drive(url: str, body: bytes, concurrency: int, seconds: float, content_type: str = "image/png") -> dict:
    return asyncio.run(_drive(url, body, concurrency, seconds, content_type))


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    """A multipart body with one ``image`` field per PNG, and its content type."""
    boundary = "maskcryptbench"
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
              "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def probe_face(run: Path) -> tuple[Any, Any, bytes]:
    """The run's targets, its test split, and the first test face as the PNG a client would post."""
    from PIL import Image

    from maskcrypt.data import load
    from maskcrypt.serving.requests import load_targets

    targets = load_targets(run)  # refuses a run without targets, naming why
    size = targets.masks.shape[1]
    test = load(json.loads((run / "run.json").read_text())["prepare"]["data"], default_split="test", size=size)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(test.images[0].transpose(1, 2, 0))).save(buf, format="PNG")
    return targets, test, buf.getvalue()


def profile(seconds: float, out: Path) -> dict[str, list[tuple[str, float]]]:
    """py-spy samples of Serve's proxy and the replica for ``seconds``: the top functions by own samples."""
    import collections
    import os
    import subprocess

    pids = {}
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmd = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            for name, marker in (("proxy", "ProxyActor"), ("replica", "ServeReplica")):
                if marker in cmd:
                    pids[name] = pid_dir.name
    spy = Path(sys.executable).with_name("py-spy")
    procs = {name: subprocess.Popen([str(spy), "record", "--pid", pid, "--duration", str(int(seconds)), "--format",
                                     "raw", "--rate", "200", "--nonblocking", "--output", str(out / f"{name}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in pids.items() if os.access(spy, os.X_OK)}
    for proc in procs.values():
        proc.wait()
    tops = {}
    for name in procs:
        counts: collections.Counter[str] = collections.Counter()
        total = 0
        for line in (out / f"{name}.txt").read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            total += int(n)
            # Attribute each sample to its innermost frame of interest: ours, else the innermost.
            ours = [f for f in frames if "maskcrypt" in f]
            counts[(ours[-1] if ours else frames[-1]).split(" (")[0][:80]] += int(n)
        tops[name] = [(f, 100 * c / max(total, 1)) for f, c in counts.most_common(12)]
    return tops


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by Serve's proxy, the replicas, the controller and this process (the clients)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    out = {"proxy": 0.0, "replica": 0.0, "controller": 0.0, "client": 0.0}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
            fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(pid_dir.name) == os.getpid():
            out["client"] += used
        elif "ProxyActor" in cmd:
            out["proxy"] += used
        elif "ServeReplica" in cmd:
            out["replica"] += used
        elif "ServeController" in cmd:
            out["controller"] += used
    return out


def bare_rates(run: Path, image: np.ndarray, mask: np.ndarray, precision: str) -> dict[str, float]:
    """E's forward through the service's Predictor on one thread at batch 1 and 16, pre-masked, median of 3."""
    import torch

    from maskcrypt.masks import overlay
    from maskcrypt.models.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.from_checkpoint(run / "models" / "encrypted", precision=precision, chunk=16)
    masked = overlay(torch.from_numpy(image[None]), torch.from_numpy(mask))
    out = {}
    for batch in (1, 16):
        x = predictor.to_device(masked.repeat(batch, 1, 1, 1))
        rates = []
        for rep in range(4):
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < 1.0:
                predictor.outputs(x)
                n += batch
            if rep:  # the first pass warms up
                rates.append(n / (time.perf_counter() - t))
        out[f"batch{batch}"] = statistics.median(rates)
    return out


def stage_costs(body: bytes, size: int, mask: np.ndarray) -> dict[str, float]:
    """Per-request costs inside a replica, in ms: decode + crop/resize, masking, a JSON answer."""
    from maskcrypt.serving.requests import ServiceConfig, decode_upload

    cfg = ServiceConfig()
    timings: dict[str, list[float]] = {"decode_ms": [], "mask_ms": [], "json_ms": []}
    for _ in range(300):
        t = time.perf_counter()
        img = decode_upload(body, (size, size), 3, cfg)
        timings["decode_ms"].append(time.perf_counter() - t)
        t = time.perf_counter()
        masked = img * mask[None]
        timings["mask_ms"].append(time.perf_counter() - t)
        t = time.perf_counter()
        json.dumps({"label": 1, "top_k": [{"label": i, "score": 0.1} for i in range(5)], "masked": masked.shape})
        timings["json_ms"].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in timings.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(Path(__file__).resolve().parents[1] / "runs" / "default"))
    p.add_argument("--quick", action="store_true", help="shorter measurements")
    p.add_argument("--seconds", type=float, default=0.0, help="per concurrency level (default 10, quick 5)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--batch-wait", type=float, default=0.002, help="batch_wait_timeout_s of the batched runs")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)")
    p.add_argument("--profile", type=float, default=0.0, metavar="S", help="py-spy the proxy and the replica for S s")
    p.add_argument("--autoscale", default="1,2", metavar="MIN,MAX", help="replicas of the autoscaling measurement")
    p.add_argument("--target-ongoing-requests", type=float, default=4.0, metavar="N",
                   help="of the autoscaling measurement (default 4: concurrency 32 then asks for every replica)")
    args = p.parse_args()
    from maskcrypt.serving.scaling import replica_options

    # maskcrypt serve's flags to Serve's config, checked before anything is measured.
    scaling = replica_options(None, args.autoscale, args.target_ongoing_requests)["autoscaling_config"]
    if args.throughput_optimized:
        import os

        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # read by Serve's processes, started below
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    run = Path(args.run).resolve()

    import ray
    from ray import serve

    from maskcrypt.serving.deployment import build_app
    from maskcrypt.serving.requests import ServiceConfig

    targets, test, body = probe_face(run)
    size = targets.masks.shape[1]

    bare = bare_rates(run, test.images[0], targets.masks[0], args.precision)
    costs = stage_costs(body, size, targets.masks[0])
    print(f"bare E forward, one thread: {bare['batch1']:.0f} img/s at batch 1, {bare['batch16']:.0f} at batch 16")
    print("per request in a replica: " + ", ".join(f"{k[:-3]} {v:.3f} ms" for k, v in costs.items())
          + f", forward at batch 1 {1000 / bare['batch1']:.2f} ms")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()  # below the ephemeral range: no outgoing connection takes it before Serve binds it
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1/recognize"
    config = ServiceConfig(run=str(run), precision=args.precision)
    results: dict[str, list[dict]] = {}
    for name, batch in (("batched", 16), ("unbatched", 1)):
        serve.run(build_app(config, max_batch_size=batch, batch_wait_timeout_s=args.batch_wait), name="load",
                  route_prefix="/")
        drive(url, body, 8, 2.0)  # warm-up
        results[name] = []
        for c in (1, 8, 32):
            before = cpu_seconds()
            r = drive(url, body, c, seconds)
            after = cpu_seconds()
            r["cpu_per_request_ms"] = {k: 1000 * (after[k] - before[k]) / max(r["requests"], 1) for k in after}
            results[name].append(r)
            print(f"{name:>9} c={c:<3} {r['req_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f}  p95 {r['p95_ms']:6.1f}  "
                  f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  CPU ms/request: "
                  + " ".join(f"{k} {v:.2f}" for k, v in r["cpu_per_request_ms"].items()))
        if name == "batched":
            batch_url = url.replace("/v1/recognize", "/v1/recognize/batch")
            body16, kind = multipart([body] * 16)
            rb = drive(batch_url, body16, 8, seconds, kind)
            results["batch_endpoint"] = [{**rb, "images_per_s": 16 * rb["req_per_s"]}]
            print(f"batch endpoint c=8, 16 images per request: {16 * rb['req_per_s']:.1f} images/s, p99 "
                  f"{rb['p99_ms']:.1f} ms, errors {rb['errors']}")
            if args.profile:
                import tempfile

                with tempfile.TemporaryDirectory() as tmp:
                    loader = threading.Thread(target=drive, args=(url, body, 32, args.profile + 4))
                    loader.start()
                    time.sleep(2)
                    tops = profile(args.profile, Path(tmp))
                    loader.join()
                for proc, rows in tops.items():
                    print(f"where the {proc}'s samples go (innermost maskcrypt frame, else innermost frame):")
                    for frame, pct in rows:
                        print(f"  {pct:5.1f}%  {frame}")
        serve.delete("load")

    # Serve's delays shortened so that a run of seconds sees a scale-up and a scale-down.
    scaling.update(upscale_delay_s=2, downscale_delay_s=8, metrics_interval_s=1, look_back_period_s=2)
    serve.run(build_app(config, max_batch_size=16, batch_wait_timeout_s=args.batch_wait, autoscaling_config=scaling),
              name="load", route_prefix="/")
    timeline: list[tuple[float, int]] = []
    done = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not done.is_set():
            dep = serve.status().applications["load"].deployments["RecognitionService"]
            timeline.append((time.perf_counter() - t0, int(dep.replica_states.get("RUNNING", 0))))
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    busy = drive(url, body, 32, 4 * seconds)
    time.sleep(3 * seconds)  # idle: scale back down
    done.set()
    sampler.join()
    serve.shutdown()
    ray.shutdown()
    print(f"autoscaling {args.autoscale} under concurrency 32 for "
          f"{4 * seconds:.0f} s, then idle: {busy['req_per_s']:.1f} req/s, p99 {busy['p99_ms']:.1f} ms, errors "
          f"{busy['errors']}")
    print("replicas over time: " + " ".join(f"{t:.0f}s:{n}" for t, n in timeline))

    by = {name: {r["concurrency"]: r for r in rows} for name, rows in results.items() if name != "batch_endpoint"}
    for c in (1, 8, 32):
        b, u = by["batched"][c], by["unbatched"][c]
        print(f"RESULT c={c} batched {b['req_per_s']:.1f} req/s (p99 {b['p99_ms']:.1f} ms), unbatched "
              f"{u['req_per_s']:.1f} req/s (p99 {u['p99_ms']:.1f} ms), batched/unbatched "
              f"{b['req_per_s'] / u['req_per_s']:.2f}x, batched/bare-batch16 {b['req_per_s'] / bare['batch16']:.2f}")
    print(f"RESULT autoscaling max replicas {max(n for _, n in timeline)}, final {timeline[-1][1]}")
    print(f"RESULT batch_endpoint_images_per_s {results['batch_endpoint'][0]['images_per_s']:.1f}")
    print(f"RESULT c32_batched_vs_bare_batch16 {by['batched'][32]['req_per_s'] / bare['batch16']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
