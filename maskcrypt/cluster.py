"""The Ray cluster as the stages see it: is Ray up, are the GPUs a stage asks for there.

Only entry points (the ``maskcrypt`` command, ``jobs/*.py``) start Ray, with
:func:`init_ray`; library stages call :func:`require_ray` so a missing ``ray.init()``
is one clear sentence, not Ray silently starting a second local cluster inside a
library call.
"""

from __future__ import annotations

import os
from typing import Any

from maskcrypt.errors import MaskcryptError

#: Set on autoscaling clusters whose GPU nodes start on demand: GPU requests are then not refused up front.
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
    import logging

    import ray

    verbose = bool(os.environ.get(VERBOSE))
    # Ray Train's controller polls its workers every 2 s by default, so each training waits seconds for its own
    # end; polling every 0.5 s costs nothing measurable. Read by the controllers, which copy this environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not ray.is_initialized():
        if not verbose:
            kwargs = {"log_to_driver": False, "logging_level": logging.WARNING, **kwargs}
        ray.init(**kwargs)
    if not verbose:
        quiet_ray_data()


def quiet_ray_data() -> None:
    """No progress blocks or execution banners from Ray Data on the driver: the drivers log their own progress."""
    import logging

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


def require_ray(what: str) -> None:
    """Refuse to run a Ray stage when no entry point started Ray."""
    import ray

    if not ray.is_initialized():
        raise MaskcryptError(f"{what}: Ray is not running in this process; call ray.init() first (the maskcrypt "
                             "command and jobs/*.py do)")


def check_gpus(flag: str, per_unit: float, units: int = 1) -> None:
    """Refuse a GPU request the cluster cannot meet now and will not meet later.

    Ray would otherwise wait forever for workers or actors no node can host. On an
    autoscaling cluster whose GPU nodes start on demand, set
    ``MASKCRYPT_AUTOSCALING_GPUS=1`` to skip the check.
    """
    import ray

    if per_unit <= 0 or os.environ.get(AUTOSCALING_GPUS):
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have < per_unit:
        raise MaskcryptError(f"{flag} {per_unit:g}: the Ray cluster has {have:g} GPU(s) and none will appear; use 0 "
                             f"on CPU machines (on an autoscaling cluster that adds GPU nodes on demand set "
                             f"{AUTOSCALING_GPUS}=1)")
    if units * per_unit > have:
        raise MaskcryptError(f"{flag} {per_unit:g} x {units} needs {units * per_unit:g} GPUs; the cluster has {have:g}")
