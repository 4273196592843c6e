"""Is this Python the project's environment? Asked by the job shims before anything heavy is imported.

Under ``ray job submit`` a job runs with the Python of the Ray head it was sent to: a
head started outside the project's ``.venv`` runs ``jobs/select.py`` with the system
Python, which fails deep inside an import (``No module named 'PIL'``). The shims call
:func:`run_job`, which checks every package first and answers with one line that
names the missing ones and the fix. Standard library only: importing ``maskcrypt``
runs nothing but :mod:`maskcrypt.core.errors`, so this works where numpy is missing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

#: Import name -> the distribution in pyproject.toml that provides it (the jobs' runtime dependencies).
REQUIRED = {
    "numpy": "numpy",
    "PIL": "pillow",
    "pyarrow": "pyarrow",
    "pandas": "pandas",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
    "torch": "torch",
    "torchvision": "torchvision",
    "ray": "ray",
    "cv2": "opencv-python-headless",  # the default attackers telea+O and ns+O
    "scipy": "scipy",  # the adaptive race's exact hypergeometric bounds
}


def missing_packages() -> list[str]:
    """Distributions this Python cannot import, found without importing them (``find_spec``)."""
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def environment_error(script: str, missing: list[str]) -> str:
    """The one line a job prints when its Python lacks packages: what is missing, where, and the fix."""
    return (f"error: {script}: {sys.executable} cannot import {', '.join(missing)}: run it with the project's "
            "environment (`make setup`, then `.venv/bin/python " + script + "` or `source .venv/bin/activate`; "
            "for `ray job submit`, start the Ray head from the activated .venv, see docs/cluster.md)")


def run_job(command: str, script: str) -> int:
    """``jobs/<x>.py`` (``script``: its ``__file__``): check the environment, then run ``maskcrypt <command>``."""
    missing = missing_packages()
    if missing:
        print(environment_error(f"jobs/{os.path.basename(script)}", missing), file=sys.stderr)
        return 2
    from maskcrypt.cli.main import job_main

    return job_main(command)
