"""Capacity measurement for large mask libraries: the figures a user needs to size a cluster.

    python jobs/capacity.py --quick                         # 2,000 masks at 32 px, a few minutes here
    python jobs/capacity.py --run runs/default --stages race  # the run's library, E and test split, as it races
    ray job submit --working-dir . -- python jobs/capacity.py --count 100000 --size 112 \\
        --arch iresnet50 --eval-gpus 1 --eval-actors 8 --out /mnt/maskcrypt/capacity

The same as ``maskcrypt capacity`` (:mod:`maskcrypt.capacity`).
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

# Standard library only until the environment is checked: a Python without the project's packages
# gets one line naming them and the fix, not a traceback.
from maskcrypt.cli.environment import run_job  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_job("capacity", __file__))
