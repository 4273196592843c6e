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


def init_ray(**kwargs: Any) -> None:
    """Connect to the cluster (``RAY_ADDRESS``, or the one this job was submitted to) or start a local one.

    For entry points only. Plain ``ray.init()`` so the same command runs under
    ``ray job submit`` and on a laptop.
    """
    import ray

    if not ray.is_initialized():
        ray.init(**kwargs)


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
