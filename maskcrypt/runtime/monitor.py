"""Peak memory of a run's processes, sampled from ``/proc`` (Linux): the driver and Ray actors,
and optionally the bytes held in Ray's object stores.

Used by the capacity job and the memory benchmark to show that memory stays flat as the
mask library grows. Elsewhere (no ``/proc``) the peaks stay 0 and say so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

#: Process titles Ray gives evaluation actors: Ray Data's pool workers and the adaptive race's actors.
ACTOR_MARKERS = (b"MapWorker", b"CrossProductScorer")


def rss_mb(proc: Path) -> float:
    """Resident set size of ``/proc/<pid>`` in MB (0 when unreadable)."""
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def object_store_probe() -> Callable[[], float] | None:
    """A function returning the MB in use in the object stores of every node of the connected Ray.

    Ray reports this (``ray memory --stats-only``) only through an internal API
    (``ray._private.internal_api``), so this returns None when that API is missing or
    refuses, rather than failing a benchmark over a figure.
    """
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)

        def used_mb() -> float:
            return get_memory_info_reply(state, timeout_seconds=10).store_stats.object_store_bytes_used / 2**20

        used_mb()
        return used_mb
    except Exception:  # an internal API: any failure means "not available"
        return None


class PeakRSS:
    """Context manager sampling, every ``interval`` s, this process's RSS and that of every process
    whose command line contains one of ``markers`` (Ray sets actor process titles, e.g.
    ``ray::MapWorker``); with ``object_store``, also the object stores' use every 5th sample
    (``object_store_mb`` stays None when Ray does not tell)."""

    def __init__(self, markers: tuple[bytes, ...] = ACTOR_MARKERS, interval: float = 0.2,
                 object_store: bool = False):
        self.markers = markers
        self.interval = interval
        self.driver_mb = 0.0
        self.actor_mb = 0.0
        self.object_store_mb: float | None = None
        self._store = object_store_probe() if object_store else None
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.driver_mb = max(self.driver_mb, rss_mb(Path("/proc/self")))
        if self._store is not None and self._samples % 5 == 0:
            try:
                self.object_store_mb = max(self.object_store_mb or 0.0, self._store())
            except Exception:  # see object_store_probe
                self._store = None
        self._samples += 1
        proc_root = Path("/proc")
        if not proc_root.is_dir():
            return
        for proc in proc_root.iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if any(m in cmdline for m in self.markers):
                    self.actor_mb = max(self.actor_mb, rss_mb(proc))
            except OSError:
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
