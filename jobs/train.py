"""Train O, E and R: ``python jobs/train.py`` or ``ray job submit --working-dir . -- python jobs/train.py``.

Defaults are the embedded ones (synthetic faces, run ``runs/default/``). The run's
``masks_train/`` pool must exist (``python jobs/select.py`` or ``maskcrypt masks
generate --out RUN/masks_train``), or pass ``--masks``. Calls plain ``ray.init()``, so
it joins the cluster under ``ray job submit`` and starts a local Ray otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from maskcrypt.cli import add_train_arguments, train_from_args  # noqa: E402
from maskcrypt.errors import exit_status  # noqa: E402

DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "default"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(DEFAULT_RUN), help="run directory (default runs/default/)")
    add_train_arguments(p)
    args = p.parse_args(argv)

    def body() -> None:
        train_from_args(args, args.run)

    return exit_status(body)


if __name__ == "__main__":
    raise SystemExit(main())
