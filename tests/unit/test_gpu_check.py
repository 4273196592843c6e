"""The GPU check before a stage asks Ray for GPUs: refused where none can ever come, accepted where they can."""

from __future__ import annotations

import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.runtime.cluster import AUTOSCALING_GPUS, check_gpus, judge_gpu_request

CPU_ONLY = {"CPU": 8.0, "memory": 1e10}


def test_a_cpu_only_cluster_without_gpu_node_types_is_refused_with_the_flag_and_the_override():
    with pytest.raises(MaskcryptError) as e:
        judge_gpu_request("--eval-gpus", 1, 1, CPU_ONLY, None, {})
    assert str(e.value).startswith("--eval-gpus 1: the Ray cluster has 0 GPU(s) and no autoscaler")
    assert f"{AUTOSCALING_GPUS}=1" in str(e.value)
    # Only "1" is the override: a "0" (or any other value) leaves the check on.
    with pytest.raises(MaskcryptError):
        judge_gpu_request("--eval-gpus", 1, 1, CPU_ONLY, None, {AUTOSCALING_GPUS: "0"})


def test_node_types_without_gpus_are_refused_too():
    with pytest.raises(MaskcryptError, match="node types hold at most 0"):
        judge_gpu_request("--gpus-per-worker", 1, 2, CPU_ONLY, 0.0, {})


def test_the_override_accepts_on_a_cluster_whose_gpu_nodes_start_on_demand():
    judge_gpu_request("--gpus-per-worker", 1, 4, CPU_ONLY, None, {AUTOSCALING_GPUS: "1"})
    judge_gpu_request("--eval-gpus", 1, 1, CPU_ONLY, 0.0, {AUTOSCALING_GPUS: "1"})  # explicit: wins over Ray


def test_gpu_node_types_the_autoscaler_advertises_are_accepted_before_any_gpu_node_starts():
    judge_gpu_request("--gpus-per-worker", 1, 4, CPU_ONLY, 16.0, {})
    judge_gpu_request("--eval-gpus", 0.25, 1, CPU_ONLY, 1.0, {})


def test_more_gpus_than_can_ever_exist_are_refused():
    with pytest.raises(MaskcryptError) as e:
        judge_gpu_request("--gpus-per-worker", 1, 8, CPU_ONLY, 4.0, {})
    assert str(e.value) == ("--gpus-per-worker 1 x 8 needs 8 GPUs; the cluster has 0 and can grow to 4: expected at "
                            "most 4 in all")
    with pytest.raises(MaskcryptError, match="node types hold at most 4"):
        judge_gpu_request("--eval-gpus", 8, 1, CPU_ONLY, 4.0, {})


def test_a_fixed_cluster_is_judged_by_the_gpus_it_has():
    judge_gpu_request("--gpus-per-worker", 1, 2, {**CPU_ONLY, "GPU": 2.0}, None, {})
    with pytest.raises(MaskcryptError, match="needs 3 GPUs; the cluster has 2: expected at most 2 in all"):
        judge_gpu_request("--gpus-per-worker", 1, 3, {**CPU_ONLY, "GPU": 2.0}, None, {})
    # Nodes joined by hand count even where the advertised node types hold fewer.
    judge_gpu_request("--gpus-per-worker", 1, 2, {**CPU_ONLY, "GPU": 2.0}, 1.0, {})
    judge_gpu_request("--eval-gpus", 0, 1, CPU_ONLY, None, {})  # no GPU asked, nothing refused


@pytest.fixture
def ray_reads(monkeypatch):
    """check_gpus's reads of Ray, replaced: ``set(cluster, most)``; ``most`` an exception class makes the read fail."""
    import ray
    from ray._private.state import state

    monkeypatch.delenv(AUTOSCALING_GPUS, raising=False)

    def set_(cluster: dict, most: object) -> None:
        def max_resources():
            if isinstance(most, type):
                raise most("no GCS connection")
            return most

        monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
        monkeypatch.setattr(state, "get_max_resources_from_cluster_config", max_resources)

    return set_


def test_check_gpus_refuses_on_a_cpu_only_cluster_with_no_gpu_node_type(ray_reads):
    ray_reads(CPU_ONLY, None)  # no autoscaler publishes node types (Ray 2.60's ray up and KubeRay)
    with pytest.raises(MaskcryptError, match="--gpus-per-worker 1: the Ray cluster has 0 GPU"):
        check_gpus("--gpus-per-worker", 1, 2)
    ray_reads(CPU_ONLY, {"CPU": 64, "memory": 10**12, "GPU": 0})  # node types, none with a GPU
    with pytest.raises(MaskcryptError, match="node types hold at most 0"):
        check_gpus("--eval-gpus", 1)
    ray_reads(CPU_ONLY, RuntimeError)  # the accessor fails: unknown, judged as no autoscaler
    with pytest.raises(MaskcryptError, match="no autoscaler tells Ray"):
        check_gpus("--eval-gpus", 1)


def test_check_gpus_accepts_with_the_override_or_an_advertised_gpu_node_type(ray_reads, monkeypatch):
    ray_reads(CPU_ONLY, {"CPU": 128, "GPU": 16})
    check_gpus("--gpus-per-worker", 1, 4)
    with pytest.raises(MaskcryptError, match="needs 32 GPUs; the cluster has 0 and can grow to 16"):
        check_gpus("--gpus-per-worker", 2, 16)
    ray_reads(CPU_ONLY, None)
    monkeypatch.setenv(AUTOSCALING_GPUS, "1")
    check_gpus("--gpus-per-worker", 1, 4)
    check_gpus("--gpus (per replica)", 1)


def test_check_gpus_asks_ray_nothing_for_a_cpu_stage(monkeypatch):
    import ray

    def fail():
        raise AssertionError("a CPU stage read the cluster")

    monkeypatch.setattr(ray, "cluster_resources", fail)
    check_gpus("--eval-gpus", 0)
