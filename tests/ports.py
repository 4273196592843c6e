"""The tests' import of :func:`maskcrypt.ports.free_port` (scripts run from ``tests/`` import it as ``ports``)."""

from maskcrypt.ports import free_port

__all__ = ["free_port"]
