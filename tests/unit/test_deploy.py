"""The cluster configs: cluster.yaml against the schema inside the ray package, the KubeRay job manifest.

Both start their GPU workers from zero: the commands they are documented with must pass the GPU
check (``maskcrypt.runtime.cluster``) as a job driver on their head sees it when the job starts.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from maskcrypt.core.errors import MaskcryptError

ROOT = Path(__file__).resolve().parents[2]


def _gpu_stages_pass(argv: list[str], environ: dict[str, str], most: float | None = None) -> None:
    """``jobs/select.py ARGV``'s GPU stages pass the check with no GPU node up yet, thanks to ``environ`` or ``most``.

    The requests are the stages' own: training's ``--gpus-per-worker`` x ``--workers``,
    evaluation's ``--eval-gpus`` per actor; ``most`` is what an autoscaler publishing its
    node types would tell Ray.
    """
    from maskcrypt.cli.flags import RUN_FLAGS, build_config
    from maskcrypt.cli.main import build_parser
    from maskcrypt.runtime.cluster import judge_gpu_request

    config = build_config(build_parser().parse_args(["run", *argv]), RUN_FLAGS)
    stages = [("--gpus-per-worker", config.resources.gpus_per_worker, config.resources.workers),
              ("--eval-gpus", config.evaluation.gpus_per_actor, 1)]
    for flag, per_unit, units in stages:
        assert per_unit == 1, f"{flag}: the documented command keeps this stage on CPUs"
        judge_gpu_request(flag, per_unit, units, {"CPU": 0.0}, most, environ)
        with pytest.raises(MaskcryptError):  # without them the stage would be refused: they are what passes it
            judge_gpu_request(flag, per_unit, units, {"CPU": 0.0}, None, {})


def _select_args(command: str) -> list[str]:
    """The arguments after ``jobs/select.py`` in a shell command line."""
    words = shlex.split(command)
    at = next(i for i, w in enumerate(words) if w.endswith("jobs/select.py"))
    return words[at + 1:]


def test_cluster_yaml_is_valid_for_the_installed_ray_and_keeps_our_policies():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # fills the AWS defaults, then checks ray-schema.json
    nodes = raw["available_node_types"]
    assert nodes[raw["head_node_type"]]["resources"] == {"CPU": 0}  # no work on the head
    gpu = [n for n in nodes.values() if "g5" in n["node_config"]["InstanceType"]]
    assert gpu and all(n["min_workers"] == 0 for n in gpu)  # GPU nodes scale from zero
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard`, not public
    # The head's Ray starts with the GPU check's override, and the job drivers inherit its environment.
    start = shlex.split(next(c for c in raw["head_start_ray_commands"] if "ray start --head" in c))
    head_env = dict(w.split("=", 1) for w in start[:start.index("ray")])
    docs = (ROOT / "docs" / "cluster.md").read_text()
    aws = docs.split("\n## AWS", 1)[1].split("\n## ", 1)[0]
    shell = "".join(block.split("```", 1)[0] for block in aws.split("```sh")[1:]).replace("\\\n", " ")
    documented = [line for line in shell.splitlines() if "jobs/select.py" in line]
    assert documented
    for command in documented:
        _gpu_stages_pass(_select_args(command), head_env)
    for cmds in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    setup = " ".join(raw["setup_commands"])
    assert "torch==2.14.1" in setup and "ray[default,train,tune,data,serve]==2.60.0" in setup
    assert "mount -t nfs4" in setup and "/mnt/maskcrypt" in setup  # every node sees the same run directories
    assert "ray_auth_token" in (ROOT / ".gitignore").read_text()


def test_rayjob_manifest_is_well_formed_and_its_entrypoint_parses():
    doc = yaml.safe_load((ROOT / "deploy" / "k8s" / "rayjob-select.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    most_gpus = 0
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
        most_gpus += group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    assert cluster["enableInTreeAutoscaling"] and min(g["minReplicas"] for g in cluster["workerGroupSpecs"]) == 0
    # The entrypoint is our job with flags it accepts: they build a run configuration.
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("jobs/select.py")
    from maskcrypt.cli.flags import RUN_FLAGS, build_config
    from maskcrypt.cli.main import build_parser

    config = build_config(build_parser().parse_args(["run", *argv[2:]]), RUN_FLAGS)
    assert config.evaluation.gpus_per_actor == 1 and config.resources.gpus_per_worker == 1
    assert config.determine.test_data.startswith("lfw:")
    # Its GPU stages pass the check by the head's environment (which the driver inherits), and fit what
    # the GPU group can ever hold, as the check would see it from an autoscaler that published it.
    head_env = {e["name"]: e["value"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
    _gpu_stages_pass(argv[2:], head_env)
    _gpu_stages_pass(argv[2:], {}, most=most_gpus)


def test_rayservice_manifest_is_well_formed_and_serves_our_app():
    doc = yaml.safe_load((ROOT / "deploy" / "k8s" / "rayservice-serve.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService" and doc["metadata"]["name"]
    spec = doc["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and "rayStartParams" in cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # serveConfigV2 is a Serve config: our builder accepts its args, the autoscaling keys are Serve's.
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    app = serve_config["applications"][0]
    assert app["import_path"] == "serve.app:app_builder"
    config, _ = _serve_app().split_args(app["args"], environ={})  # the args app_builder reads
    assert config.scoring == "open" and config.run.startswith("/data/")
    assert not app["args"].get("api_key")  # the key comes from a Secret through MASKCRYPT_API_KEY
    env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "MASKCRYPT_API_KEY" and "secretKeyRef" in e["valueFrom"] for e in env)
    assert "COPY --chown=ray:users serve ./serve" in (ROOT / "deploy" / "Dockerfile").read_text()


def _serve_app() -> ModuleType:
    """serve/app.py as Serve imports it (``serve.app``), loaded from its file: ``serve`` is not a package here."""
    spec = importlib.util.spec_from_file_location("serve_app", ROOT / "serve" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_config_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from maskcrypt.serving.scaling import DEFAULT_TARGET_ONGOING_REQUESTS

    raw = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(raw)
    app = raw["applications"][0]
    scaling = app["deployments"][0]["autoscaling_config"]
    assert scaling["target_ongoing_requests"] == DEFAULT_TARGET_ONGOING_REQUESTS  # maskcrypt serve --autoscale's
    # The run: the config's args.run, unless MASKCRYPT_RUN names another (an empty one is no name).
    split_args = _serve_app().split_args
    for environ, run in (({}, "runs/default"), ({"MASKCRYPT_RUN": ""}, "runs/default"),
                         ({"MASKCRYPT_RUN": "/data/runs/lfw"}, "/data/runs/lfw")):
        config, deployment = split_args(app["args"], environ=environ)
        assert (config.run, config.max_batch_size, deployment) == (run, 16, {})
    config, deployment = split_args({"run": "r", "num_gpus": 1, "num_cpus": 2}, environ={})
    assert (config.run, deployment) == ("r", {"num_gpus": 1, "num_cpus": 2})
