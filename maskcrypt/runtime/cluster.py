"""The Ray cluster as the stages see it: is Ray up, are the GPUs a stage asks for there.

Only entry points (the ``maskcrypt`` command, ``jobs/*.py``) start Ray, with
:func:`init_ray`; library stages call :func:`require_ray` so a missing ``ray.init()``
is one clear sentence, not Ray silently starting a second local cluster inside a
library call.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError

#: "1" on clusters whose GPU nodes start on demand: GPU requests are then not refused up front. The shipped
#: cluster.yaml and deploy/k8s/rayjob-select.yaml set it on the head, whose environment the job drivers inherit.
AUTOSCALING_GPUS = "MASKCRYPT_AUTOSCALING_GPUS"


#: Set to 1 for Ray's own progress bars, INFO logs and every worker's output on the driver (debugging).
VERBOSE = "MASKCRYPT_VERBOSE"


def init_ray(**kwargs: Any) -> None:
    """Connect to the cluster (``RAY_ADDRESS``, or the one this job was submitted to) or start a local one.

    For entry points only. Plain ``ray.init()`` so the same command runs under
    ``ray job submit`` and on a laptop. Quiet by default: the stages print one line per
    epoch and per stage themselves, so the workers' own output (Ray Train's per-report
    lines, Ray Data's progress blocks) stays in the Ray logs (``/tmp/ray/session_latest/logs``
    or the dashboard), and only warnings reach the terminal; worker errors still surface
    as exceptions. ``MASKCRYPT_VERBOSE=1`` shows everything.
    """
    import ray

    verbose = bool(os.environ.get(VERBOSE))
    # Ray Train's controller polls its workers every 2 s by default, so each training waits seconds for its own
    # end; polling every 0.5 s costs nothing measurable. Read by the controllers, which copy this environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not ray.is_initialized():
        if not verbose:
            kwargs = {"log_to_driver": False, "logging_level": logging.WARNING, **kwargs}
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DefaultAuthNotice())
        ray.init(**kwargs)
    if not verbose:
        quiet_ray_data()
        spend_restart_notice()


class _DefaultAuthNotice:
    """Drops Ray's notice that a new local cluster turned token authentication on by default.

    That is Ray 2.60's normal state (docs/cluster.md), not a problem; the opposite
    warning (authentication *disabled*) still reaches the terminal.
    """

    def filter(self, record: Any) -> bool:
        return not str(record.getMessage()).startswith("Token authentication is enabled")


def spend_restart_notice() -> None:
    """Spend the core worker's once-per-process error about actors restarted from object-store arguments.

    Ray Data hands every actor pool its map function as an object reference and makes
    the actors restartable, so the first pool of every driver logs, at error level,
    that a restart could fail if that reference were lost (ray-project/ray#53727). The
    operator holds the reference for the pool's whole life, so it is not lost and the
    line is a false alarm. Ray logs it once per process: creating one restartable actor
    with a reference argument here, while the driver's stderr goes to Ray's log folder,
    spends that once. The actor asks for a resource no node has, so no process starts,
    and it is killed at once.
    """
    import ray

    @ray.remote(num_cpus=0, resources={"maskcrypt_never_scheduled": 1}, max_restarts=1)
    class _Spend:
        def __init__(self, _arg: Any) -> None:
            pass

    ref = ray.put(0)
    with _stderr_to_ray_logs():
        actor = _Spend.remote(ref)
    ray.kill(actor)


@contextmanager
def _stderr_to_ray_logs() -> Iterator[None]:
    """File descriptor 2 goes to ``<session>/logs/maskcrypt-driver-stderr.log`` inside the block."""
    import ray

    try:
        node = ray._private.worker._global_node  # no public accessor for the session's log folder
        target = str(Path(node.get_logs_dir_path()) / "maskcrypt-driver-stderr.log")
    except Exception:  # a driver without a local node: drop the lines
        target = os.devnull
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(target, "ab") as file:
            os.dup2(file.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_ray_data() -> None:
    """No progress blocks or execution banners from Ray Data on the driver: the drivers log their own progress."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Data warns once that the bars are off: we turned them off on purpose, so spend its "once" here.
    log_once("ray_data_progress_manager_disabled")
    log_once("ray_data_progress_manager_global")


def wait_for_free_cpu(timeout_s: float = 5.0) -> None:
    """Before a Ray Data stage starts: wait a moment for a CPU that a finished stage is about to release.

    Ray Data warns that a dataset "will hang" when no CPU is free the instant it
    starts. Between our stages that instant is transient (the metadata tasks that
    ``from_pandas`` launches while building the dataset, or the previous stage's last
    tasks and actors, are still ending), so the warning would be a false alarm: call
    this after building the dataset, before running it. Returns at once when a CPU is free
    or the cluster has none yet (a CPU-less head before its workers start); after
    ``timeout_s`` Ray's warning is left to speak.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    while (ray.cluster_resources().get("CPU", 0) and not ray.available_resources().get("CPU", 0)
           and time.monotonic() < deadline):
        time.sleep(0.1)


def require_ray(what: str) -> None:
    """Refuse to run a Ray stage when no entry point started Ray."""
    import ray

    if not ray.is_initialized():
        raise MaskcryptError(f"{what}: Ray is not running in this process; call ray.init() first (the maskcrypt "
                             "command and jobs/*.py do)")


def check_gpus(flag: str, per_unit: float, units: int = 1) -> None:
    """Refuse a GPU request the cluster cannot meet now and will not meet later (see :func:`judge_gpu_request`).

    Ray would otherwise wait forever for workers or actors no node can host. Reads Ray
    only for a GPU request: a CPU stage asks the GCS nothing.
    """
    import ray

    if per_unit <= 0:
        return
    judge_gpu_request(flag, per_unit, units, ray.cluster_resources(), autoscaled_gpu_limit(), os.environ)


def autoscaled_gpu_limit() -> float | None:
    """The most GPUs the autoscaler's node types can ever hold, or None where no autoscaler publishes them.

    An autoscaler may report its node types (resources and max count of each group) to
    the GCS; Ray Train's own check before it waits for a placement group reads them with
    this same accessor. Ray 2.60's open-source autoscaler (``ray up`` and KubeRay alike)
    does not report them, so on those clusters this is None and only
    ``MASKCRYPT_AUTOSCALING_GPUS`` can say that GPU nodes will start.
    """
    from ray._private.state import state

    try:
        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # a private accessor, and no GCS connection on a Ray Client driver: unknown, not zero
        return None
    return None if limits is None else float(limits.get("GPU", 0))


def judge_gpu_request(flag: str, per_unit: float, units: int, cluster: Mapping[str, float], most: float | None,
                      environ: Mapping[str, str]) -> None:
    """Refuse ``units`` x ``per_unit`` GPUs that no node has now and none can bring (pure: Ray read by the caller).

    ``cluster`` is what ``ray.cluster_resources()`` says now; ``most`` is the GPUs the
    autoscaler's node types can ever hold (None: no autoscaler publishes node types, so
    what the cluster has now is all it will have). ``MASKCRYPT_AUTOSCALING_GPUS=1`` in
    ``environ`` is the explicit override for clusters that add GPU nodes on demand without
    telling Ray: the request is then left to Ray and the autoscaler.
    """
    if environ.get(AUTOSCALING_GPUS) == "1":
        return
    have = cluster.get("GPU", 0.0)
    ceiling = have if most is None else max(have, most)
    if per_unit > ceiling:
        later = ("and no autoscaler tells Ray it can add any" if most is None
                 else f"and its autoscaler's node types hold at most {most:g}")
        raise MaskcryptError(f"{flag} {per_unit:g}: the Ray cluster has {have:g} GPU(s) {later}; use 0 on CPU "
                             f"machines (on a cluster that adds GPU nodes on demand set {AUTOSCALING_GPUS}=1)")
    if units * per_unit > ceiling:
        bound = f"the cluster has {have:g}" + ("" if most is None else f" and can grow to {most:g}")
        raise MaskcryptError(f"{flag} {per_unit:g} x {units} needs {units * per_unit:g} GPUs; {bound}: expected "
                             f"at most {ceiling:g} in all")
