"""Ray Train on the shared local Ray, 2 workers: the tiny run, resumption, the rules around it."""

from __future__ import annotations

import pytest
from conftest import TINY_SIZE

from maskcrypt.config import Resources
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.train.placement import training_slots


def test_models_train_side_by_side_as_far_as_the_cluster_holds_their_worker_groups():
    two_cpus = {"CPU": 2.0}
    assert training_slots(Resources(), two_cpus, streams=False) == 2  # the default: O|E beside R, a core each
    assert training_slots(Resources(workers=2), two_cpus, streams=False) == 1  # one DDP group fills the machine
    assert training_slots(Resources(), two_cpus, streams=True) == 1  # Ray Data keeps a CPU for decoding
    assert training_slots(Resources(workers=4, cpus_per_worker=2), {"CPU": 64.0}, streams=True) == 7
    gpus = Resources(workers=2, gpus_per_worker=1)
    assert training_slots(gpus, {"CPU": 64.0, "GPU": 4.0}, streams=False) == 2  # GPUs bound it, not CPUs
    assert training_slots(gpus, {"CPU": 64.0, "GPU": 1.0}, streams=False) == 1  # never below one


def test_auto_sharding_replicates_by_decoded_size_per_worker_not_by_the_source_kind():
    """Both sides of ``Resources.replicate_max_mb``: a folder that fits replicates, a large rendered set streams."""
    from maskcrypt.data import source_split
    from maskcrypt.train.placement import decoded_mb, sharding

    rendered = source_split("synthetic:identities=6,per_identity=16", size=TINY_SIZE)  # 96 x 3 x 16 x 16 bytes
    assert decoded_mb(rendered) == pytest.approx(96 * 3 * 16 * 16 / 1e6)
    assert sharding(Resources(), rendered) == "replicate"
    assert sharding(Resources(replicate_max_mb=0.01), rendered) == "stream"  # a huge synthetic set is not copied
    files = SourceSplitStub(paths=["a.jpg"] * 10)
    assert sharding(Resources(replicate_max_mb=1.0), files) == "replicate"  # a small folder: reproducible
    assert sharding(Resources(replicate_max_mb=0.0), files) == "stream"
    assert sharding(Resources(sharding="stream"), rendered) == "stream"  # an explicit choice wins
    with pytest.raises(MaskcryptError, match="shuffle_buffer"):
        Resources(shuffle_buffer=0)
    with pytest.raises(MaskcryptError, match="held-out-limit"):
        Resources(held_out_limit=0)


class SourceSplitStub:
    """What sharding reads of a split: its length, channels and size."""

    def __init__(self, paths: list[str]):
        self.paths, self.channels, self.size = paths, 3, (112, 112)

    def __len__(self) -> int:
        return len(self.paths)



def test_an_epoch_fed_from_tensors_kept_on_the_device_equals_one_fed_from_host_arrays():
    """The GPU path of the in-memory feed (images and the mask pool held as torch tensors, batches gathered and
    flipped there) trains on the same rows, flips and masks as the numpy path: the same loss to the last bit.

    Run on the CPU with CPU tensors standing in for device memory; ``resident`` and ``device_pool`` make exactly
    these tensors on a GPU.
    """
    import dataclasses

    import numpy as np
    import torch

    from maskcrypt.config import TrainConfig
    from maskcrypt.models.recognizer import RecognizerConfig
    from maskcrypt.train.feed import array_batches, pass_seed
    from maskcrypt.train.loop import RecognizerSteps, train_epoch

    rng = np.random.default_rng(3)
    n, size = 48, 16
    data = {"image": rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
            "label": rng.integers(0, 4, n), "item": np.arange(n)}
    pool = (rng.random((5, size, size)) > 0.4).astype(np.uint8)
    tc = dataclasses.asdict(TrainConfig(epochs=1, batch_size=8, precision="fp32", augment="flip"))
    model_config = dataclasses.asdict(RecognizerConfig(num_classes=4, image_size=size, width=8))

    def epoch(on_device: bool) -> tuple[float, list[np.ndarray]]:
        torch.manual_seed(0)
        cfg = {"train_config": tc, "role": "encrypted", "k": 2, "model_config": model_config,
               "mask_mode": "random", "masks": pool}
        fed: list[np.ndarray] = []

        class Steps(RecognizerSteps):
            def device_pool(self):
                return torch.from_numpy(pool) if on_device else pool

            def loss(self, net, images, labels, masks, aug):
                out = super().loss(net, images, labels, masks, aug)
                fed.append(np.asarray(images).copy())  # after the flips: what the model saw
                return out

        steps = Steps(cfg, torch.device("cpu"), False)
        arrays = {**data, "image": torch.from_numpy(data["image"])} if on_device else data
        per_pass = n // 8
        steps.schedule(per_pass * steps.passes)
        stats = train_epoch(steps, steps.model, 1, per_pass,
                            lambda pass_, read: array_batches(arrays, pass_seed(tc["seed"], 1, pass_), 8, per_pass,
                                                              read=read))
        return stats.loss_sum, fed

    host_loss, host_fed = epoch(False)
    dev_loss, dev_fed = epoch(True)
    assert len(host_fed) == len(dev_fed) == 12
    assert all(np.array_equal(a, b) for a, b in zip(host_fed, dev_fed, strict=True))
    originals = {img.tobytes() for img in data["image"]}
    flipped = {img[..., ::-1].tobytes() for img in data["image"]}
    seen = [img.tobytes() for batch in host_fed for img in batch]
    assert all(s in originals or s in flipped for s in seen)
    assert any(s in flipped and s not in originals for s in seen)  # the flips happened on both paths
    assert dev_loss == host_loss


def test_a_training_set_stays_on_the_host_past_its_share_of_free_gpu_memory_and_on_a_cpu():
    """``resident``'s limit, crossed with small numbers (a real GPU's free memory is what it is compared with)."""
    import numpy as np
    import torch

    from maskcrypt.train.feed import RESIDENT_SHARE, fits_on_device, resident

    free = 1_000
    assert fits_on_device(int(RESIDENT_SHARE * free), free) and not fits_on_device(int(RESIDENT_SHARE * free) + 1, free)
    assert fits_on_device(100, 1_000, share=0.1) and not fits_on_device(101, 1_000, share=0.1)
    data = {"image": np.zeros((2, 3, 4, 4), np.uint8), "label": np.zeros(2, np.int64)}
    assert resident(data, torch.device("cpu")) is data  # a CPU worker keeps the numpy arrays
