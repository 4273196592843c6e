"""Where and how training runs: sharded or replicated input, CPUs per worker, how many models side by side.

Pure functions of the resources and the cluster's size, so each decision is tested
without starting Ray."""

from __future__ import annotations

import numpy as np

from maskcrypt.config import Resources
from maskcrypt.data.stream import SourceSplit


def decoded_mb(split: SourceSplit) -> float:
    """MB the split's decoded pixels take (uint8 C x H x W per image): what a replicating rank holds."""
    return len(split) * split.channels * split.size[0] * split.size[1] / 1e6


def sharding(resources: Resources, train: SourceSplit) -> str:
    """``stream`` or ``replicate`` (see the module docstring); ``auto`` picks by the decoded size per worker.

    Not by the source's kind: a synthetic, idx or npz source of millions of images would be
    copied whole into every rank, and a small image folder gains reproducibility by replicating.
    """
    if resources.sharding != "auto":
        return resources.sharding
    return "replicate" if decoded_mb(train) <= resources.replicate_max_mb else "stream"


def worker_cpus(resources: Resources, mode: str, cluster_cpus: float) -> float:
    """CPUs per Ray Train worker: as asked, but leaving Ray Data one CPU when the data streams from files.

    On a small machine the workers would otherwise take every CPU and Ray Data's decode
    tasks would never be scheduled (a known Ray behaviour): training would stall.
    """
    asked = resources.cpus_per_worker
    if mode != "stream" or resources.workers * asked < cluster_cpus:
        return asked
    return max(0.25, (cluster_cpus - 1) / resources.workers)


def held_out_order(n: int, limit: int, seed: int) -> np.ndarray:
    """Which held-out images the per-epoch figures use: all of them, or a seeded sample of ``limit`` in order.

    Not the first ``limit``: file sources list identity by identity, and the first 2,000
    images of a large test split would be a handful of identities.
    """
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x7A1]).choice(n, limit, replace=False))


def training_slots(resources: Resources, cluster: dict[str, float], streams: bool) -> int:
    """How many models can train at once: how many worker groups of ``resources`` the cluster holds side by side.

    O, E and R do not depend on each other, so on a cluster with room for several worker
    groups they train concurrently (each its own ``TorchTrainer``), and the start-up and
    end of one training no longer leave the machine idle. On the 2-core default
    machine the training stage took 617 s this way against 767 s one model at a time on
    2 DDP workers each (2026-11-30, an earlier default; the git history of
    docs/benchmarks.md). When the data streams from files, one CPU stays free for Ray
    Data's decode tasks.
    """
    need_cpu = resources.workers * resources.cpus_per_worker
    slots = int((cluster.get("CPU", 0.0) - (1.0 if streams else 0.0)) // need_cpu)
    if resources.gpus_per_worker:
        slots = min(slots, int(cluster.get("GPU", 0.0) // (resources.workers * resources.gpus_per_worker)))
    return max(1, slots)
