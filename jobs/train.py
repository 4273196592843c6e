"""Train O, E and R: ``python jobs/train.py`` or ``ray job submit --working-dir . -- python jobs/train.py``.

The same as ``maskcrypt train``: prepares the run if needed (its mask libraries), then
trains the three models on Ray Train into ``RUN/models/``. ``--help`` lists every flag.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from maskcrypt.cli import job_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(job_main("train"))
