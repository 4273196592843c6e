"""``maskcrypt serve``: mask-then-recognize over HTTP on Ray Serve."""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a run on this machine's (or RAY_ADDRESS's) Ray until interrupted."""
    from maskcrypt.serving.scaling import replica_options

    scaling = replica_options(args.replicas, args.autoscale, args.target_ongoing_requests)  # refused before Ray
    from ray import serve

    from maskcrypt.serving.deployment import build_app
    from maskcrypt.serving.requests import ServiceConfig

    config = ServiceConfig(run=args.run, allow_candidates=args.allow_candidates,
                           api_key=os.environ.get("MASKCRYPT_API_KEY", ""), precision=args.precision,
                           scoring=args.scoring, share_masks=args.share_masks, min_score=args.min_score)

    def _stop(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown, however many signals follow
        raise KeyboardInterrupt  # SIGTERM (kill, systemd, a container stop) shuts down like Ctrl-C

    import ray

    from maskcrypt.runtime.cluster import init_ray

    init_ray()  # before our handler: ray.init installs its own for SIGTERM
    # Checked before anything starts (the run's targets, the GPUs asked for): a refusal stops nothing.
    app = build_app(config, max_batch_size=args.max_batch_size, num_gpus=args.gpus, **scaling)
    signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="maskcrypt", route_prefix="/")
        print(f"serving {config.run} on http://{args.host}:{args.port} (Ctrl-C or SIGTERM stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve.shutdown()
        ray.shutdown()
    return 0


def add_parser(sub: Any) -> None:
    """The ``serve`` command(s) on the top-level subparsers."""
    sv = sub.add_parser("serve", help="serve mask-then-recognize over HTTP on Ray Serve")
    sv.add_argument("run", nargs="?", default="runs/default", help="a run with target masks (default runs/default)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--allow-candidates", action="store_true", help="serve the best candidates when no target")
    sv.add_argument("--replicas", type=int, default=None, help="a fixed number of replicas (default 1)")
    sv.add_argument("--autoscale", metavar="MIN,MAX", default=None,
                    help="let Serve scale between MIN and MAX replicas by load instead of --replicas (MIN 0: none "
                         "when idle, the next request waits for one to start)")
    sv.add_argument("--target-ongoing-requests", type=float, default=None, metavar="N",
                    help="with --autoscale: requests in flight per replica that Serve scales to keep (default 8)")
    sv.add_argument("--max-batch-size", type=int, default=0, help="images per forward (default: 16 on CPU, 128 "
                    "with --gpus)")
    sv.add_argument("--gpus", type=float, default=0.0, help="GPUs per replica (a cluster without them is refused)")
    sv.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    sv.add_argument("--scoring", default="auto", choices=("auto", "closed", "open"),
                    help="closed: E's classes; open: an enrolled gallery (/v1/enroll); auto: as the run was scored")
    sv.add_argument("--share-masks", action="store_true", help="let clients fetch mask pixels (/v1/masks?pixels=true)")
    sv.add_argument("--min-score", type=float, default=-1.0,
                    help="open set: answer identity null below this cosine (default -1: always the best match)")
    sv.set_defaults(func=cmd_serve)
