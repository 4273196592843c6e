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

