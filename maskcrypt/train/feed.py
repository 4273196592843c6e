"""How training batches reach a rank: the streamed shard, or the whole set kept in the worker (on a GPU, in its memory).

Also the seeded per-image choices every epoch shares (held-out masks by item number,
flips, the permutation of a pass), so the Ray Train workers, the attackers' in-memory
trainers and the tests draw the same batches from the same seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def augment_flip(x: Any, flip: bool, rng: np.random.Generator) -> Any:
    """Random horizontal flips of a freshly gathered batch (faces are left-right symmetric).

    ``x`` is a numpy batch or a torch tensor already on the device (a training set kept in
    GPU memory, :func:`resident`); the same draws flip the same images either way.
    """
    if flip:
        sel = rng.random(x.shape[0]) < 0.5
        if isinstance(x, np.ndarray):
            x[sel] = x[sel][..., ::-1]
        else:
            idx = take_index(np.flatnonzero(sel), x)
            x[idx] = x[idx].flip(-1)
    return x


def take_index(idx: np.ndarray, into: Any) -> Any:
    """``idx`` as an index into ``into``: itself for numpy, a tensor on ``into``'s device for torch."""
    if isinstance(into, np.ndarray):
        return idx
    import torch

    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(into.device)


def per_item_choice(seed: int, items: np.ndarray, n: int) -> np.ndarray:
    """A seeded choice in ``[0, n)`` for each item number, a pure function of (seed, item).

    Each item's choice depends on nothing else (not on how many items the split has, nor
    on which sample of it is evaluated): splitmix64 of the item number keyed by the seed.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(items, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n)).astype(np.int64)


def held_out_masks(cfg: dict[str, Any], items: np.ndarray) -> np.ndarray:
    """The held-out mask of each held-out image, by its item number in the whole split: the same every epoch.

    ``items`` are positions in the whole held-out split (``SourceSplit.dataset(order=...)``
    keeps them), so any sample of the split, of any size, sees each image under one mask.
    """
    pool = cfg["eval_masks"] if cfg.get("eval_masks") is not None else cfg["masks"]
    return pool[per_item_choice(int(cfg["train_config"]["seed"]) ^ 0xE7A1, items, len(pool))]


def rank_batches(cfg: dict[str, Any], rank: int, world: int, per_rank: int, steps: int, epoch: int,
                 pass_: int, read: dict[str, int] | None = None, device: Any = None) -> Iterator[dict[str, Any]]:
    """This rank's ``steps`` batches of one pass over the training data, shuffled per (epoch, pass), seeded.

    ``stream``: the rank's shard of Ray Train's streaming split, through a seeded local
    shuffle buffer. ``replicate``: the whole data, read once from the dataset into this
    worker (it fits: that is what the mode is for; on a GPU into device memory), then one
    seeded permutation per (epoch, pass) shared by every rank, of which each global batch's
    slice ``rank`` is this rank's. ``read["rows"]`` counts the rows this rank read.
    """
    import ray.train

    seed = pass_seed(cfg["train_config"]["seed"], epoch, pass_)
    if cfg["sharding"] == "replicate":
        yield from array_batches(replica(cfg["meta"]["job_sha256"], device), seed, per_rank, steps, rank, world,
                                 read)
        return
    shard = ray.train.get_dataset_shard("train")
    batches = shard.iter_batches(batch_size=per_rank, batch_format="numpy",
                                 local_shuffle_buffer_size=int(cfg["shuffle_buffer"]),
                                 local_shuffle_seed=seed)
    taken = 0
    for batch in batches:  # read to the end either way: a split stream must be drained
        if read is not None:  # every row, the short last batch's too (it is not trained on)
            read["rows"] = read.get("rows", 0) + len(batch["label"])
        if taken < steps and len(batch["label"]) == per_rank:
            taken += 1
            yield batch


def pass_seed(seed: int, epoch: int, pass_: int) -> int:
    """The shuffling seed of one pass over the data: every rank (and every in-memory trainer) derives the same."""
    return int(np.random.default_rng([seed, 0x5F1, epoch, pass_]).integers(2**31))


def array_batches(data: dict[str, Any], seed: int, per_rank: int, steps: int, rank: int = 0,
                  world: int = 1, read: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """``steps`` batches of in-memory arrays: one seeded permutation shared by every rank, this rank's slice of each.

    A value may be a torch tensor on the device (:func:`resident`): its batches are then
    gathered there, the same rows as from the numpy array.
    """
    perm = np.random.default_rng(seed).permutation(len(data["label"]))
    if read is not None:
        read["rows"] = read.get("rows", 0) + len(perm)
    for step in range(steps):
        at = (step * world + rank) * per_rank
        idx = np.sort(perm[at:at + per_rank])  # sorted: contiguous reads; the batch is a set
        yield {k: v[take_index(idx, v)] for k, v in data.items()}


#: Of free GPU memory, the most a training set kept on the device may take (the model, its activations and the
#: evaluation actors sharing the GPU need the rest).
RESIDENT_SHARE = 0.25


def fits_on_device(nbytes: int, free_bytes: int, share: float = RESIDENT_SHARE) -> bool:
    """Whether a training set of ``nbytes`` may live in a GPU with ``free_bytes`` free (at most ``share`` of it)."""
    return nbytes <= share * free_bytes


def resident(data: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
    """An in-memory training set with its images in GPU memory, where the device is a GPU with room for them.

    Why: on a GPU a step of a small model takes milliseconds, and gathering a batch on the
    host and copying it over each step (pageable memory: a synchronous copy) left the GPU
    mostly idle. Kept on the device, a batch is one gather there. Labels and item numbers
    stay on the host (the loss moves the labels; they are tiny). On a CPU, or when the
    images would take more than :data:`RESIDENT_SHARE` of the free GPU memory, the data
    is returned as it is.
    """
    if device.type != "cuda":
        return data
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    if not fits_on_device(data["image"].nbytes, free):
        return data
    return {**data, "image": torch.from_numpy(np.ascontiguousarray(data["image"])).to(device)}


_REPLICA: dict[tuple[str, str], dict[str, Any]] = {}


def replica(job: str, device: Any) -> dict[str, Any]:
    """The whole training dataset of ``job`` in this worker, read once (in the dataset's fixed order).

    Kept for every later epoch (and pass) of the job: an epoch then starts no new Ray Data
    stream and waits for no shuffle buffer. On a GPU the images live on the device
    (:func:`resident`).
    """
    import ray.train

    key = (job, str(device))
    if key not in _REPLICA:
        _REPLICA.clear()
        parts = list(ray.train.get_dataset_shard("train").iter_batches(batch_size=4096, batch_format="numpy"))
        _REPLICA[key] = resident({k: np.concatenate([p[k] for p in parts]) for k in ("image", "label", "item")},
                                 device)
    return _REPLICA[key]
