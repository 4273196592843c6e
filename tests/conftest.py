"""Shared fixtures: one local Ray for the whole session, small data written in real formats."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it (starting one costs seconds).

    It is started by this process and shut down at the end; other Ray clusters on the
    machine are left alone.
    """
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    yield ray
    if started:
        ray.shutdown()
