"""Models and checkpoint IO, without Ray: shapes, masks at the extremes, round-trips, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from maskcrypt.config import TrainConfig, check_same_training
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.models import Inpainter, InpainterConfig, Recognizer, RecognizerConfig
from maskcrypt.models.checkpoint import MODEL_FILE, find_checkpoint, save_checkpoint
from maskcrypt.models.losses import VGG16Features, hole_psnr, inpaint_loss, load_vgg16_features
from maskcrypt.models.recognizer import count_parameters
from maskcrypt.models.weights import load_external_weights


def _images(n=4, c=3, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("arch", ["compact", "resnet18", "iresnet18"])
def test_recognizers_give_512d_embeddings_and_logits(arch):
    cfg = RecognizerConfig(arch=arch, num_classes=7, image_size=16, width=8)
    model = Recognizer(cfg).eval()
    x = _images()
    assert model.embed(x).shape == (4, 512)
    assert model(x).shape == (4, 7)


def test_resnet50_projects_2048_to_512_and_grey_input():
    model = Recognizer(RecognizerConfig(arch="resnet50", num_classes=3, channels=1, image_size=32)).eval()
    assert isinstance(model.project, torch.nn.Linear) and model.project.in_features == 2048
    assert model.embed(_images(2, 1, 32)).shape == (2, 512)


def test_arcface_margin_applies_only_with_labels():
    model = Recognizer(RecognizerConfig(num_classes=5, image_size=16, width=8, head="arcface")).eval()
    x, y = _images(3), torch.tensor([0, 1, 2])
    plain, margin = model(x), model(x, y)
    assert plain.abs().max() <= 64.0 + 1e-3
    assert torch.all(margin[torch.arange(3), y] < plain[torch.arange(3), y])  # true class penalized
    other = torch.ones_like(plain, dtype=torch.bool)
    other[torch.arange(3), y] = False
    torch.testing.assert_close(margin[other], plain[other])


def test_recognizer_rejects_wrong_input_and_config():
    model = Recognizer(RecognizerConfig(num_classes=3, image_size=16, width=8))
    with pytest.raises(MaskcryptError, match="expected N x 3 x H x W"):
        model(_images(2, 1))
    with pytest.raises(MaskcryptError, match="unknown architecture 'vgg'"):
        RecognizerConfig(arch="vgg")
    with pytest.raises(MaskcryptError, match="at least 2 classes"):
        RecognizerConfig(num_classes=1)


def test_rfr_net_handles_all_kept_and_almost_all_occluded_masks():
    net = Inpainter(InpainterConfig(width=8, iterations=2, image_size=32)).eval()
    x = _images(2, 3, 32).float() / 255
    all_kept = torch.ones(2, 1, 32, 32)
    almost_none = torch.zeros(2, 1, 32, 32)
    almost_none[:, :, 0, 0] = 1
    for m in (all_kept, almost_none):
        with torch.no_grad():
            out = net(x, m)
        assert out.shape == x.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # inpaint() keeps known pixels exactly and fills the hole.
    m = torch.ones(2, 32, 32, dtype=torch.uint8)
    m[:, 8:24, 4:28] = 0
    filled = net.inpaint(_images(2, 3, 32), m)
    assert filled.dtype == torch.uint8
    assert torch.equal(filled[:, :, m[0] == 1], _images(2, 3, 32)[:, :, m[0] == 1])
    with pytest.raises(MaskcryptError, match="multiples of 16"):
        net(torch.zeros(1, 3, 20, 20), torch.ones(1, 1, 20, 20))


def test_published_rfr_net_size():
    n = count_parameters(Inpainter(InpainterConfig(width=64, iterations=6, image_size=256)))
    assert 30e6 < n < 33e6  # the paper's ~31M


def test_attention_scores_blend_across_iterations():
    """Knowledge-consistent attention: the second call mixes in the first call's scores."""
    net = Inpainter(InpainterConfig(width=4, iterations=1, image_size=16)).eval()
    att = net.rfr.att
    x = torch.randn(1, 32, 2, 2)
    m = torch.ones(1, 1, 2, 2)
    _, first = att(x, m, None)
    _, second = att(torch.randn(1, 32, 2, 2), m, first)
    _, alone = att(torch.randn(1, 32, 2, 2), m, None)
    assert not torch.allclose(second[0], alone[0])
    torch.testing.assert_close(second[0].sum(1), torch.ones(1, 2, 2))  # still a distribution over keys


def test_inpaint_losses_and_psnr():
    target = torch.rand(2, 3, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 0
    total, terms = inpaint_loss(target, target, mask)
    assert set(terms) == {"valid", "hole", "tv"} and terms["valid"] == terms["hole"] == 0.0
    assert float(total) == pytest.approx(0.1 * terms["tv"])  # only smoothness of the (random) target is left
    vgg = VGG16Features(__import__("torchvision").models.vgg16(weights=None).features)
    total, terms = inpaint_loss(torch.rand(2, 3, 16, 16), target, mask, vgg=vgg)
    assert {"perceptual", "style"} <= set(terms) and float(total) > 0
    assert float(hole_psnr(target, target, mask).min()) > 90
    noisy = (target + 0.1 * (1 - mask)).clamp(0, 1)
    assert 15 < float(hole_psnr(noisy, target, mask).mean()) < 25


def test_vgg_weights_file_errors(tmp_path):
    with pytest.raises(MaskcryptError, match="file not found"):
        load_vgg16_features(tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MaskcryptError, match="not a readable torch state dict"):
        load_vgg16_features(tmp_path / "bad.pth")


def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = RecognizerConfig(num_classes=4, image_size=16, width=8)
    model = Recognizer(cfg)
    model.train()
    model(_images(8))  # move BatchNorm statistics off their defaults
    model.eval()
    folder = tmp_path / "original"
    meta = {"kind": "recognizer", "model_config": cfg.to_dict(), "epoch": 1, "epochs": 1}
    save_checkpoint(folder / "checkpoint_epoch_0001", model, meta)
    loaded = Recognizer.from_checkpoint(folder)
    x = _images(5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.embed(x), model.embed(x), rtol=0, atol=0)
    assert loaded.checkpoint_meta["epoch"] == 1
    # An inpainter round-trips too.
    inp = Inpainter(InpainterConfig(width=4, iterations=1, image_size=16)).eval()
    save_checkpoint(tmp_path / "inp" / "checkpoint_epoch_0001", inp,
                    {"kind": "inpainter", "model_config": inp.config.to_dict(), "epoch": 1})
    back = Inpainter.from_checkpoint(tmp_path / "inp")
    m = torch.ones(2, 16, 16, dtype=torch.uint8)
    m[:, 4:10] = 0
    assert torch.equal(back.inpaint(_images(2), m), inp.inpaint(_images(2), m))


def test_newest_complete_checkpoint_wins_and_bad_folders_fail(tmp_path):
    cfg = RecognizerConfig(num_classes=4, image_size=16, width=8)
    folder = tmp_path / "encrypted"
    for epoch in (1, 2, 3):
        save_checkpoint(folder / f"checkpoint_epoch_{epoch:04d}", Recognizer(cfg),
                        {"kind": "recognizer", "model_config": cfg.to_dict(), "epoch": epoch})
    # Epoch 3's copy was cut short: its model.pt no longer matches meta.json.
    (folder / "checkpoint_epoch_0003" / MODEL_FILE).write_bytes(b"truncated")
    path, meta = find_checkpoint(folder)
    assert path.name == "checkpoint_epoch_0002" and meta["epoch"] == 2
    with pytest.raises(MaskcryptError, match="does not match"):
        find_checkpoint(folder / "checkpoint_epoch_0003")
    with pytest.raises(MaskcryptError, match="holds a 'recognizer' model, expected 'inpainter'"):
        Inpainter.from_checkpoint(folder)
    with pytest.raises(MaskcryptError, match="does not exist"):
        Recognizer.from_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskcryptError, match="no complete checkpoint"):
        Recognizer.from_checkpoint(tmp_path / "empty")


def test_external_weights_load_and_wrong_architecture_fails(tmp_path):
    donor = Recognizer(RecognizerConfig(num_classes=10, image_size=16, width=8))
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items()}}, tmp_path / "w.pt")
    target = Recognizer(RecognizerConfig(num_classes=4, image_size=16, width=8))
    info = load_external_weights(target, tmp_path / "w.pt", "--init-original")
    assert info["skipped"] == ["classifier.weight", "classifier.bias"]  # other class count: head not loaded
    torch.testing.assert_close(target.backbone.stem[0].weight, donor.backbone.stem[0].weight)
    wider = Recognizer(RecognizerConfig(num_classes=4, image_size=16, width=16))
    with pytest.raises(MaskcryptError, match="does not fit the configured architecture"):
        load_external_weights(wider, tmp_path / "w.pt", "--init-original")
    with pytest.raises(MaskcryptError, match="file not found"):
        load_external_weights(wider, tmp_path / "nope.pt", "--init-original")


def test_train_config_hash_and_pair_rule():
    a, b = TrainConfig(), TrainConfig(epochs=3)
    assert a.sha256() == TrainConfig().sha256() != b.sha256()
    same = {"train_config_sha256": a.sha256(), "train_config": a.to_dict()}
    check_same_training(same, dict(same))
    with pytest.raises(MaskcryptError, match=r"different hyperparameters.*epochs"):
        check_same_training(same, {"train_config_sha256": b.sha256(), "train_config": b.to_dict()})
    with pytest.raises(MaskcryptError, match="--optimizer"):
        TrainConfig(optimizer="lion")
    json.dumps(a.to_dict())
