"""Threshold search: ``python jobs/tune.py`` or ``ray job submit --working-dir . -- python jobs/tune.py``.

The same as ``maskcrypt tune``: Ray Tune over the tables a determination wrote
(selection split only, no model run); writes ``RUN/tune/best_thresholds.json``, a file
``jobs/select.py --thresholds`` accepts, with the Pareto table and plot.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

# Standard library only until the environment is checked: a Python without the project's packages
# gets one line naming them and the fix, not a traceback.
from maskcrypt.cli.environment import run_job  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_job("tune", __file__))
