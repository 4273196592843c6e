"""Serve entry point: ``serve run serve/config.yaml`` (from the repository root) or ``serve deploy``.

``app_builder`` receives the ``args`` of the config's application: the fields of
:class:`maskcrypt.serving.requests.ServiceConfig` (``max_batch_size`` and
``batch_wait_timeout_s`` among them) plus the deployment's ``num_replicas``,
``num_cpus`` and ``num_gpus``.
"""

from __future__ import annotations

from typing import Any

from maskcrypt.serving.deployment import build_app
from maskcrypt.serving.requests import ServiceConfig


def app_builder(args: dict[str, Any]) -> Any:
    args = dict(args)
    deployment = {k: args.pop(k) for k in ("num_replicas", "num_cpus", "num_gpus") if k in args}
    return build_app(ServiceConfig.from_dict(args), **deployment)
