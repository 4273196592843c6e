"""Shared fixtures: one local Ray for the whole session, small data written in real formats."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

# Ray 2.60 turns token authentication on. Left to itself, the first local ``ray.init()`` writes ~/.ray/auth_token and
# every later ``ray start --head`` (RAY_AUTH_MODE=token) reads it: a suite that passes only once a token is already
# in the home directory. The suite brings its own: a fresh token in a temporary folder, named by
# RAY_AUTH_TOKEN_PATH, which every Ray process and client the tests start inherits. Nothing under ~/.ray is read
# or written; tests/cluster/test_jobs.py gives its head node a token of its own on top.
_AUTH_DIR = Path(tempfile.mkdtemp(prefix="maskcrypt-test-auth-"))
(_AUTH_DIR / "auth_token").write_text(secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_AUTH_DIR / "auth_token")
os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_AUTH_DIR, ignore_errors=True)


# Ray Train's controller polls its workers every 2 s: a tiny training run then waits ~7 s for its own end.
# Polling faster changes nothing else; every Ray process the tests start (the shared session, and the clusters
# and head nodes of tests/cluster/test_jobs.py and tests/multinode.py, which copy this environment) inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it (starting one costs seconds).

    It is started by this process and shut down at the end; other Ray clusters on the
    machine are left alone.
    """
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = not ray.is_initialized()
    if started:
        # address="local": always a Ray of our own, even when another session's ``ray start --head`` runs here.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    yield ray
    if started:
        ray.shutdown()


#: The tiny trained run's settings: the same code as the defaults, a few seconds of compute.
TINY_DATA = "synthetic:identities=6,per_identity=16,test_fraction=0.2"
TINY_SIZE = 16
#: Held-out images the tiny run evaluates per epoch: fewer than its held-out split holds.
TINY_HELD_OUT_LIMIT = 8
#: The determined run's attacker ladder (photos per rung; the tiny data's train split holds fewer than 256).
TINY_LADDER = "12,36,all"


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory):
    """A run directory with masks and all three models trained tiny, built once per session.

    Later stages' tests (evaluation, selection, serving) reuse it.
    """
    from maskcrypt.config import InpaintTrainConfig, ModelSettings, PrepareConfig, Resources, TrainConfig
    from maskcrypt.prepare import prepare
    from maskcrypt.train.driver import train_run

    run = tmp_path_factory.mktemp("tiny") / "run"
    prepare(run, PrepareConfig(data=TINY_DATA, size=TINY_SIZE, mask_count=24, train_mask_count=12),
            log=lambda *_: None)
    metas = train_run(
        run, TINY_DATA, TINY_SIZE,
        models=ModelSettings(width=8, inpaint_width=4, inpaint_iterations=1),
        train_config=TrainConfig(epochs=4, batch_size=16, lr=0.05, warmup_epochs=0.5, label_smoothing=0.0),
        inpaint_config=InpaintTrainConfig(epochs=2, batch_size=16),
        # Below the held-out split's 18 images: every model evaluates a sample after each epoch (the size limit a
        # real data set crosses, here crossed by the fixture every later test builds on).
        resources=Resources(held_out_limit=TINY_HELD_OUT_LIMIT),
        log=lambda *_: None,
    )
    return run, metas


@pytest.fixture(scope="session")
def determined_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with a finished determination under loose thresholds (every rule passes).

    Default attackers (the family attacker trained on Ray Tune), report written. Built once; tests that
    write into a run (serving galleries, a re-determination) copy it.
    """
    import shutil

    from maskcrypt.config import AttackConfig, DetermineConfig, EvalSettings
    from maskcrypt.determine.stage import determine
    from maskcrypt.selection.rules import Thresholds

    src, _ = tiny_run
    run = tmp_path_factory.mktemp("determined") / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("per_mask.parts", "targets.json", "targets.parquet"))
    loose = Thresholds(t_gap=0.0, t_drop=0.0, t_enc=0.0, t_orig=1.0, top_k=2, attack_top=3)
    # The attacker ladder at the tiny data's size (its default 256 and 1,024 photos are above its 78): two rungs
    # trained, nested in all.
    result = determine(run, DetermineConfig(test_data=TINY_DATA, repeats=1), loose,
                       EvalSettings(precision="fp32", actors=1), redo=True, report=True, log=lambda *_: None,
                       attackers=AttackConfig(ladder=TINY_LADDER))
    assert result["targets"], result["reason"]
    return run, result
