"""Multi-node simulation, run as its own process by ``test_multinode.py`` (the cluster tier: clusters of their own).

Trains E with 2 Ray Train workers and evaluates every mask with a 2-actor pool, first on
a ``ray.cluster_utils.Cluster`` of a CPU-less head and two 1-CPU worker nodes (so the
two workers, and the two actors, must sit on different nodes), then on one 2-CPU node,
and prints one JSON line comparing the two. Every port of every node is chosen free, so
other Ray instances on the machine are left alone; each cluster is shut down by this
process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from ports import free_port

DATA = "synthetic:identities=6,per_identity=16,test_fraction=0.2"
SIZE = 16


def _ports() -> dict[str, int]:
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}


def work(run: Path, stream: bool) -> dict:
    """Prepare, train E on 2 workers, evaluate every mask on 2 actors; the weights and the counts.

    With ``stream``, also train O for an epoch on an image folder (JPEG files) through the streaming split:
    the two workers (on two nodes) each read a shard, decoded by Ray Data tasks.
    """
    import ray
    import torch

    from maskcrypt.config import EvalSettings, ModelSettings, PrepareConfig, Resources, TrainConfig, TrainSources
    from maskcrypt.data import load
    from maskcrypt.evaluation.crossproduct import evaluate_masks
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.prepare import prepare
    from maskcrypt.train.driver import train_run

    quiet = lambda *_: None  # noqa: E731
    prepare(run, PrepareConfig(data=DATA, size=SIZE, mask_count=24, train_mask_count=12), log=quiet)
    train_run(run, DATA, SIZE, models=ModelSettings(width=8),
              # default precision
              train_config=TrainConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5,
                                       label_smoothing=0.0),
              resources=Resources(workers=2, cpus_per_worker=1), sources=TrainSources(models="encrypted"), log=quiet)
    final = sorted((run / "models" / "encrypted").glob("checkpoint_*/model.pt"))[-1]
    weights = torch.load(final, weights_only=True)
    test = load(DATA, default_split="test", size=SIZE)
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
    counts = evaluate_masks(MaskLibrary.open(str(run / "masks")), ts, {"E": run / "models" / "encrypted"},
                            settings=EvalSettings(actors=2, cpus_per_actor=1, masks_per_block=4, masks_per_batch=4,
                                                  precision="fp32", timing=True))
    nodes = [n for n in ray.nodes() if n["Alive"]]
    with_cpu = {n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) > 0}
    shard = {}
    if stream:
        from maskcrypt.data import source_split
        from maskcrypt.data.folder import write_imagefolder

        write_imagefolder(source_split(f"{DATA}#split=all", size=SIZE), run / "faces")
        spec = f"imagefolder:{run / 'faces'}#size={SIZE}"
        meta = train_run(run / "streamed", spec, SIZE, models=ModelSettings(width=8),
                         train_config=TrainConfig(epochs=1, batch_size=16, lr=0.05, warmup_epochs=0.5,
                                                  label_smoothing=0.0),
                         resources=Resources(workers=2, cpus_per_worker=1, sharding="stream"),
                         sources=TrainSources(models="original", masks=str(run / "masks_train")), log=quiet)
        m = meta["original"]["metrics"]
        shard = {"rows_read": m["rows_read"], "sharding": m["sharding"],
                 "train_images": len(source_split(spec, default_split="train", size=SIZE))}
    return {"weights": weights, "counts": counts, "nodes": len(nodes), "shard": shard,
            "node_cpus": sorted(n["Resources"].get("CPU", 0) for n in nodes),
            "actor_nodes": counts["node"].nunique(), "rows_on_cpu_nodes": bool(counts["node"].isin(with_cpu).all())}


def on_cluster(run: Path, head_cpus: int, workers: int, stream: bool = False) -> dict:
    """``work`` on a fresh ``Cluster`` of one head and ``workers`` 1-CPU nodes, shut down after."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False, **_ports()})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1, **_ports())
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            return work(run, stream)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


def main(root: Path) -> int:
    # Three 1-CPU nodes: two for the Ray Train workers (1 CPU each: one per node), one left to Ray Data's tasks.
    multi = on_cluster(root / "multi", head_cpus=0, workers=3, stream=True)
    single = on_cluster(root / "single", head_cpus=2, workers=0)
    keys = ["mask_id", "bucket", "n", "correct_E", "score_E"]
    a = multi["counts"][keys].sort_values("mask_id").reset_index(drop=True)
    b = single["counts"][keys].sort_values("mask_id").reset_index(drop=True)
    diff = max(float((multi["weights"][k].double() - single["weights"][k].double()).abs().max())
               for k in multi["weights"])
    print(json.dumps({
        "multi_nodes": multi["nodes"], "multi_node_cpus": multi["node_cpus"], "single_nodes": single["nodes"],
        "multi_actor_nodes": int(multi["actor_nodes"]),
        "multi_rows_on_worker_nodes": multi["rows_on_cpu_nodes"], "masks": len(a),
        "counts_equal": bool(a[keys[:4]].equals(b[keys[:4]])),
        "score_diff": float(np.abs(a["score_E"] - b["score_E"]).max()), "weight_diff": diff, "shard": multi["shard"],
    }))
    return 0


if __name__ == "__main__":
    os.environ["RAY_AUTH_MODE"] = "token"  # read when ray is imported: the nodes' GCS asks for the token
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(Path(sys.argv[1])))
