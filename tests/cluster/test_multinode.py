"""Multi-node simulation: evaluation and 2-worker training spread over nodes give one node's results.

``multinode.py`` runs in its own process with clusters of its own (``ray.cluster_utils``,
every port free-chosen) and shuts them down itself; the shared test Ray is not touched.
The multi-node cluster has a head with no CPU and three 1-CPU worker nodes, so the two
Ray Train workers (1 CPU each) and the two evaluation actors (1 CPU each) can only run
on different nodes, and a node is left for Ray Data's decode tasks. E trains on
replicated in-memory data (bitwise equal to one node's training); O trains on a folder of
JPEG files through the streaming split, each worker reading its own half. Every result
row carries the node that computed it: all come from the worker nodes (usually both; on
a loaded machine one actor may finish every block before the other has started, so that
is not asserted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_worker_nodes_give_the_results_of_one(tmp_path):
    script = Path(__file__).parents[1] / "multinode.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["multi_nodes"] == 4 and got["multi_node_cpus"] == [0, 1.0, 1.0, 1.0] and got["single_nodes"] == 1
    assert got["multi_rows_on_worker_nodes"] and got["multi_actor_nodes"] in (1, 2)
    assert got["masks"] == 24 and got["counts_equal"] and got["score_diff"] < 1e-5
    assert got["weight_diff"] < 1e-6  # E trained by 2 DDP workers on 2 nodes = on 1 node (replicated data)
    shard = got["shard"]  # O trained from JPEG files through the streaming split: each worker read its half
    assert shard["sharding"] == "stream" and shard["rows_read"] == shard["train_images"] // 2
