"""The main job: ``python jobs/select.py`` locally, ``ray job submit -- python jobs/select.py`` on a cluster.

The whole method on a run directory (default ``runs/default/``, the embedded synthetic
data): prepare -> train -> determine, each stage resuming what is complete. The same
as ``maskcrypt run``; ``--help`` lists every flag, ``--config run.yaml`` reads them
from a file. Calls plain ``ray.init()``: the cluster under ``ray job submit``, an
embedded local Ray otherwise.
"""

import sys
from pathlib import Path

# This file shares its name with the stdlib module ``select``: replace its own folder on
# the import path by the repository root, or ``import select`` (via socket) finds it.
sys.path[0] = str(Path(__file__).resolve().parents[1])

# Standard library only until the environment is checked: a Python without the project's packages
# gets one line naming them and the fix, not a traceback.
from maskcrypt.cli.environment import run_job  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_job("run", __file__))
