"""What training prints while it runs: one line per finished epoch per model, from the checkpoints.

The driver polls each model's checkpoint folder (the workers write them), so the lines
come from what was saved, and a relaunch that resumes prints only the epochs it trains."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskcrypt.models.checkpoint import list_checkpoints


class EpochPrinter:
    """One line per finished epoch, read from the checkpoints Ray Train writes: the driver's view of training.

    The workers' own output stays in the Ray logs (see :func:`maskcrypt.runtime.cluster.init_ray`);
    a background thread watches ``RUN/models/<role>/`` and logs loss, the held-out
    figure, images/s and the time left for every new complete checkpoint.
    """

    def __init__(self, folder: Path, role: str, log: Callable[[str], None], interval: float = 1.0):
        self.folder, self.role, self.log, self.interval = folder, role, log, interval
        # Epochs already on disk (a resumed training) are not this run's news.
        self.seen: set[int] = {int(meta.get("epoch", 0)) for _, meta in list_checkpoints(folder)}
        self.before = len(self.seen)
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EpochPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        for _, meta in list_checkpoints(self.folder):
            epoch = int(meta.get("epoch", 0))
            if epoch in self.seen:
                continue
            self.seen.add(epoch)
            self.log(format_epoch(self.role, meta, time.perf_counter() - self.started, len(self.seen) - self.before))


def format_epoch(role: str, meta: dict[str, Any], elapsed: float, done_here: int) -> str:
    """``original  epoch  3/12  loss 1.234  held-out 45.6%  1,234 img/s  ETA 1m20s``."""
    m, epoch, epochs = meta.get("metrics", {}), int(meta["epoch"]), int(meta["epochs"])
    figure = (f"held-out {m['test_accuracy']:6.1%}  " if "test_accuracy" in m
              else f"hole PSNR {m['hole_psnr']:5.2f} dB (mean fill {m.get('mean_fill_psnr', 0):5.2f})  "
              if "hole_psnr" in m else "")
    left = elapsed / max(done_here, 1) * (epochs - epoch)
    return (f"{role:>10}  epoch {epoch:>3}/{epochs}  loss {m.get('loss', float('nan')):.4f}  {figure}"
            f"{m.get('images_per_s', 0):,.0f} img/s  ETA {int(left // 60)}m{int(left % 60):02d}s")
