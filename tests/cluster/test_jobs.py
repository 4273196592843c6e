"""``ray job submit`` against a real ``ray start --head`` node of the test's own.

The head runs in its own process group with its own ports (every one: the defaults of
the agents would collide with the shared test Ray's) and temp dir, and the
teardown stops exactly that group: the shared test Ray and any other Ray on the
machine are left alone (never ``ray stop``, which would end them too).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ports import free_port

from maskcrypt.models import Inpainter, Recognizer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _stop_cluster(proc: subprocess.Popen, temp: Path) -> None:
    """SIGTERM the head's process group, then SIGKILL anything still running from its temp dir."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if str(temp).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_dir.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    gcs, dash = free_port(), free_port()
    # The head's own token, as docs/cluster.md has users create one: nothing from ~/.ray or another cluster.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    log = open(temp / "head.log", "w")  # noqa: SIM115 - lives as long as the head node
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
         f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
         f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--metrics-export-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # the dashboard answers (401 without a token): it is up
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"ray start --head exited: {(temp / 'head.log').read_text()[-2000:]}")
                if time.time() > deadline:
                    pytest.fail("the head node's dashboard did not come up in 120 s")
                time.sleep(1)
        yield address, env
    finally:
        _stop_cluster(proc, temp)
        log.close()


def test_select_job_runs_the_whole_method_under_ray_job_submit(head_node, tmp_path):
    """prepare -> train -> determine, submitted as docs/cluster.md shows, on the test's own head node."""
    import json

    address, env = head_node
    run = tmp_path / "run"
    thresholds = tmp_path / "loose.json"  # the tiny models pass every rule: the whole path runs
    thresholds.write_text(json.dumps({"t_gap": 0.0, "t_drop": 0.0, "top_k": 2, "attack_top": 2}))
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
           "python", "jobs/select.py", "--run", str(run), "--data",
           "synthetic:identities=6,per_identity=16,test_fraction=0.2",
           "--size", "16", "--mask-count", "12", "--train-mask-count", "12", "--epochs", "4", "--lr", "0.05",
           "--label-smoothing", "0",
           "--warmup-epochs", "0.5", "--batch-size", "16",
           "--width", "8", "--inpaint-width", "4", "--iterations", "1", "--inpaint-epochs", "1",
           "--inpaint-batch-size", "16", "--repeats", "1", "--eval-actors", "1", "--attack-epochs", "1",
           "--thresholds", str(thresholds)]
    for _attempt in range(20):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        # Resubmit only when no job was created: the head's job agent may still be starting ("No available
        # agent"), or its dashboard dropped the connection (seen on a loaded 2-core machine).
        if r.returncode == 0 or "submitted successfully" in r.stdout + r.stderr:
            break
        time.sleep(3)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "succeeded" in r.stdout + r.stderr
    # Quiet by default: our lines (one per epoch and model, per stage), not Ray's per-report or progress output.
    out = r.stdout + r.stderr
    assert "TrainingReport(" not in out and "Traceback" not in out and "Running Dataset" not in out
    # Ray's false alarms: every actor pool's "constructor arguments in the object store" error and Ray Data's
    # "will hang" warning when a stage starts while the last one's tasks are ending (maskcrypt.runtime.cluster).
    assert "constructor arguments in the object store" not in out and "will hang" not in out, out[-3000:]
    assert out.count("epoch   4/4") == 2 and len(out.splitlines()) < 150, out[-3000:]
    for role in ("original", "encrypted"):
        assert Recognizer.from_checkpoint(run / "models" / role).checkpoint_meta["epoch"] == 4
    assert Inpainter.from_checkpoint(run / "models" / "inpainter").checkpoint_meta["role"] == "inpainter"
    result = json.loads((run / "targets.json").read_text())
    for artifact in ("table1", "per_mask", "candidates", "table2", "table2_confirmation", "attacks"):
        assert (run / "results" / f"{artifact}.parquet").exists(), (artifact, r.stdout[-3000:])
    assert result["thresholds"]["t_gap"] == 0.0 and (run / "report.md").exists() and result["target_buckets"]
    assert json.loads((run / "run.json").read_text())["stages"]["determine"]["targets"] == [
        t["mask_id"] for t in result["targets"]]
    # A client with another token, or with none (and an empty home: no ~/.ray/auth_token to fall back on), is
    # refused: the token docs/cluster.md tells users to pass is what lets a client in.
    other = tmp_path / "other_token"
    other.write_text(secrets.token_hex(32))
    home = tmp_path / "home"
    home.mkdir()
    for client in ({**env, "RAY_AUTH_TOKEN_PATH": str(other)},
                   {**{k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")},
                    "HOME": str(home)}):
        r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], capture_output=True,
                           text=True, env=client, timeout=120)
        assert r.returncode != 0, r.stdout[-2000:]
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_capacity_job_reports_throughput_memory_and_a_projection(tmp_path):
    """Tiny sizes of jobs/capacity.py, as a user runs it (its own local Ray)."""
    import json

    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "capacity.py"), "--count", "60", "--size", "16",
                        "--images", "20", "--repeats", "1", "--eval-actors", "1", "--out", str(tmp_path / "cap"),
                        "--project-devices", "1,8"], capture_output=True, text=True, timeout=600, cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "cap" / "capacity.json").read_text())
    assert report["masks"] == 60 and report["library_bytes_per_mask"] > 0 and report["precision"] in ("bf16", "fp32")
    assert report["sampled"]["forward_passes"] == 7 * 1 * 20 and report["masks_per_s_read"] > 0
    assert report["bare_forward_per_s"] > 0 and report["vs_bare_forward"] > 0
    assert report["adaptive"]["full_forward_passes"] == 60 * 20
    assert 0 < report["adaptive"]["forward_passes"] <= 60 * 20
    rows = report["projection"]["rows"]
    assert [row["devices"] for row in rows] == [1, 8] and rows[0]["full_seconds"] == pytest.approx(
        8 * rows[1]["full_seconds"], rel=0.01)
    assert "masked images/s per evaluation device" in r.stdout


def test_capacity_read_stage_alone_needs_no_ray_and_bad_stages_are_named(tmp_path):
    """A CPU machine measures a library's generation and read-back without the race."""
    from maskcrypt.capacity import CapacityConfig, measure
    from maskcrypt.core.errors import MaskcryptError

    lines: list[str] = []
    report = measure(tmp_path, CapacityConfig(count=40, size=16, stages=("read",)), log=lines.append)
    assert report["masks"] == 40 and report["masks_per_s_read"] > 0 and report["read_unpacked_mb_per_s"] > 0
    assert "projection" not in report and "sampled" not in report and report["peak_actor_mb"] is None
    assert any(line.startswith("library read back: 40 masks") for line in lines)
    with pytest.raises(MaskcryptError, match="--stages: expected distinct names from read, table1, race, got "
                                             "read,inpaint"):
        CapacityConfig(stages=("read", "inpaint"))
    with pytest.raises(MaskcryptError, match="--first"):
        CapacityConfig(first=-1)
