"""Serve entry point: ``serve run serve/config.yaml`` (from the repository root) or ``serve deploy``.

``app_builder`` receives the ``args`` of the config's application: the fields of
:class:`maskcrypt.serving.requests.ServiceConfig` (``max_batch_size`` and
``batch_wait_timeout_s`` among them) plus the deployment's ``num_replicas``,
``num_cpus`` and ``num_gpus``. The run to serve can come from ``MASKCRYPT_RUN``
instead of ``args.run``, so one config file serves any run without being edited.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from maskcrypt.serving.deployment import build_app
from maskcrypt.serving.requests import ServiceConfig

#: When set (and not empty), the run directory to serve; it wins over the config's ``args.run``. Read where Serve
#: builds the application: the shell of ``serve run`` when that starts its own Ray, else the cluster's processes
#: (the pods' env on KubeRay, or the application's ``runtime_env.env_vars``).
RUN_ENV = "MASKCRYPT_RUN"

#: ``args`` keys that are the deployment's options, not the service's settings.
DEPLOYMENT_KEYS = ("num_replicas", "num_cpus", "num_gpus")


def split_args(args: Mapping[str, Any],
               environ: Mapping[str, str] = os.environ) -> tuple[ServiceConfig, dict[str, Any]]:
    """The service's settings and ``build_app``'s deployment options from the application's ``args``."""
    service = dict(args)
    deployment = {k: service.pop(k) for k in DEPLOYMENT_KEYS if k in service}
    if environ.get(RUN_ENV):
        service["run"] = environ[RUN_ENV]
    return ServiceConfig.from_dict(service), deployment


def app_builder(args: dict[str, Any]) -> Any:
    config, deployment = split_args(args)
    return build_app(config, **deployment)
