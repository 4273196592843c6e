"""Peak memory of a run's processes, sampled from ``/proc`` (Linux): the driver and Ray actors.

Used by the capacity job and the memory benchmark to show that memory stays flat as the
mask library grows. Elsewhere (no ``/proc``) the peaks stay 0 and say so.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType


def rss_mb(proc: Path) -> float:
    """Resident set size of ``/proc/<pid>`` in MB (0 when unreadable)."""
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRSS:
    """Context manager sampling, every ``interval`` s, this process's RSS and that of every process
    whose command line contains ``marker`` (Ray sets actor process titles, e.g. ``ray::MapWorker``)."""

    def __init__(self, marker: bytes = b"MapWorker", interval: float = 0.2):
        self.marker = marker
        self.interval = interval
        self.driver_mb = 0.0
        self.actor_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.driver_mb = max(self.driver_mb, rss_mb(Path("/proc/self")))
        proc_root = Path("/proc")
        if not proc_root.is_dir():
            return
        for proc in proc_root.iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if self.marker in (proc / "cmdline").read_bytes():
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
