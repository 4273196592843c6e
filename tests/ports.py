"""The tests' import of :func:`maskcrypt.runtime.ports.free_port` (scripts in ``tests/`` import it as ``ports``)."""

from maskcrypt.runtime.ports import free_port

__all__ = ["free_port"]
