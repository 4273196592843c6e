"""Serve entry point: ``serve run serve/config.yaml`` (from the repository root) or ``serve deploy``.

``app_builder`` receives the ``args`` of the config's application; they are the fields
of :class:`maskcrypt.serving.ServiceConfig` plus ``max_batch_size``,
``batch_wait_timeout_s``, ``num_replicas`` and ``num_cpus``.
"""

from __future__ import annotations

from typing import Any

from maskcrypt.serving import ServiceConfig, build_app


def app_builder(args: dict[str, Any]) -> Any:
    args = dict(args)
    names = ("max_batch_size", "batch_wait_timeout_s", "num_replicas", "num_cpus")
    batching = {k: args.pop(k) for k in names if k in args}
    return build_app(ServiceConfig.from_dict(args), **batching)
