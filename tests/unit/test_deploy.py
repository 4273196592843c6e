"""The cluster configs: cluster.yaml against the schema inside the ray package, the KubeRay job manifest."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


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
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    # The entrypoint is our job with flags it accepts: they build a run configuration.
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("jobs/select.py")
    from maskcrypt.cli.flags import RUN_FLAGS, build_config
    from maskcrypt.cli.main import build_parser

    config = build_config(build_parser().parse_args(["run", *argv[2:]]), RUN_FLAGS)
    assert config.evaluation.gpus_per_actor == 1 and config.resources.gpus_per_worker == 1
    assert config.determine.test_data.startswith("lfw:")


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
    from maskcrypt.serving.requests import ServiceConfig

    service_args = {k: v for k, v in app["args"].items()
                    if k not in ("max_batch_size", "batch_wait_timeout_s", "num_replicas", "num_cpus")}
    assert ServiceConfig.from_dict(service_args).scoring == "open"
    assert not app["args"].get("api_key")  # the key comes from a Secret through MASKCRYPT_API_KEY
    env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "MASKCRYPT_API_KEY" and "secretKeyRef" in e["valueFrom"] for e in env)
    assert "COPY --chown=ray:users serve ./serve" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_serve_config_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
