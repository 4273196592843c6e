"""Train O, E and R: ``python jobs/train.py`` or ``ray job submit --working-dir . -- python jobs/train.py``.

The same as ``maskcrypt train``: prepares the run if needed (its mask libraries), then
trains the three models on Ray Train into ``RUN/models/``. ``--help`` lists every flag.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

# Standard library only until the environment is checked: a Python without the project's packages
# gets one line naming them and the fix, not a traceback.
from maskcrypt.cli.environment import run_job  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_job("train", __file__))
