"""Public weights in: insightface IR-ResNet and torchvision ResNet state dicts load into Recognizer, key for key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.models import Recognizer, RecognizerConfig
from maskcrypt.models.weights import config_for_weights, detect_layout, load_external_weights, read_state_dict


# -- an independent reference of insightface's arcface_torch IR-ResNet (names and shapes of its backbone.pth) ------
class _RefUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn2, self.prelu = nn.BatchNorm2d(cout), nn.PReLU(cout)
        self.conv2, self.bn3 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.downsample = None

    def forward(self, x):
        y = self.bn1(x)
        y = self.prelu(self.bn2(self.conv1(y)))
        y = self.bn3(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return y + shortcut


class _RefIR(nn.Module):
    def __init__(self, units=(2, 2, 2, 2)):
        super().__init__()
        self.conv1, self.bn1, self.prelu = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        widths, cin = (64, 128, 256, 512), 64
        for stage, (w, n) in enumerate(zip(widths, units), start=1):
            mods = []
            for j in range(n):
                mods.append(_RefUnit(cin, w, 2 if j == 0 else 1))
                cin = w
            self.add_module(f"layer{stage}", nn.Sequential(*mods))
        self.bn2, self.dropout = nn.BatchNorm2d(512), nn.Dropout(0.0)
        self.fc, self.features = nn.Linear(512 * 49, 512), nn.BatchNorm1d(512)

    def forward(self, x):  # x: float, already (x/255 - 0.5)/0.5
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        x = self.bn2(x).reshape(x.shape[0], -1)
        return self.features(self.fc(self.dropout(x)))


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and PReLU slopes, so a wrong key or order cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        elif isinstance(m, nn.PReLU):
            m.weight.data.copy_(torch.rand(m.num_parameters, generator=g) * 0.5)


def _faces(n=3, size=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_insightface_backbone_loads_key_for_key_and_gives_its_embeddings(tmp_path):
    torch.manual_seed(0)
    ref = _RefIR()
    _randomize_bn(ref, 1)
    ref.eval()
    state = ref.state_dict()
    # The key names of arcface_torch's backbone.pth.
    for key in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.bias", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "layer4.1.conv2.weight",
                "bn2.weight", "fc.weight", "fc.bias", "features.weight", "features.running_var"):
        assert key in state, key
    assert tuple(state["fc.weight"].shape) == (512, 512 * 7 * 7)
    torch.save(state, tmp_path / "backbone.pth")

    model = Recognizer.from_weights(tmp_path / "backbone.pth")
    assert model.config.arch == "iresnet18" and model.config.layout == "insightface"
    assert model.config.image_size == 112 and model.config.mean == (0.5, 0.5, 0.5)
    own = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert set(own) == set(state)  # key for key
    x = _faces()
    with torch.no_grad():
        expected = ref((x.float() / 255 - 0.5) / 0.5)
        got = model.embed(x)
    assert (got - expected).abs().max().item() < 1e-4
    assert model(x).shape == (3, 2)  # a (new) classifier on top

    # The same weights through --init-original's loader, into a model built from config_for_weights.
    cfg = config_for_weights(read_state_dict(tmp_path / "backbone.pth", "w"),
                             RecognizerConfig(num_classes=5, image_size=112), "w", arch_given=False)
    target = Recognizer(cfg).eval()
    info = load_external_weights(target, tmp_path / "backbone.pth", "--init-original")
    assert info["layout"] == "insightface" and not info["skipped"]
    with torch.no_grad():
        assert (target.embed(x) - expected).abs().max().item() < 1e-4


def test_insightface_layout_needs_112_px_and_matching_shapes(tmp_path):
    torch.save(_RefIR().state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(MaskcryptError, match=r"--size 96: insightface IR-ResNet weights need 112 x 112"):
        Recognizer.from_weights(tmp_path / "backbone.pth", image_size=96)
    with pytest.raises(MaskcryptError, match=r"holds insightface iresnet18 weights, but the architecture is "
                                             r"'iresnet50'"):
        Recognizer.from_weights(tmp_path / "backbone.pth", arch="iresnet50")
    # One tensor of another shape: the message names the first differing key and both shapes.
    state = _RefIR().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(MaskcryptError, match=r"key layer2\.0\.conv1\.weight has shape \(128, 64, 5, 5\) in the "
                                             r"weights, \(128, 64, 3, 3\) in the model"):
        Recognizer.from_weights(tmp_path / "bad.pth")
    state = _RefIR().state_dict()
    del state["layer3.1.bn2.running_var"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(MaskcryptError, match=r"key layer3\.1\.bn2\.running_var \(shape \(256,\)\) is missing"):
        Recognizer.from_weights(tmp_path / "short.pth")
    # Built as maskcrypt's pooled IR-ResNet, insightface weights are refused by name.
    pooled = Recognizer(RecognizerConfig(arch="iresnet18", image_size=112))
    with pytest.raises(MaskcryptError, match="need the insightface layout"):
        load_external_weights(pooled, tmp_path / "backbone.pth", "--init-original")


def test_iresnet100_blocks_and_unknown_layouts(tmp_path):
    big = Recognizer(RecognizerConfig(arch="iresnet100", layout="insightface", image_size=112))
    state = {k.removeprefix("backbone."): v for k, v in big.state_dict().items() if k.startswith("backbone.")}
    assert detect_layout(state) == "insightface"
    assert config_for_weights(state, RecognizerConfig(image_size=112), "w", arch_given=False).arch == "iresnet100"
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(MaskcryptError, match="not a known layout"):
        Recognizer.from_weights(tmp_path / "other.pt")
    torch.save({"weight": "not a tensor"}, tmp_path / "junk.pt")
    with pytest.raises(MaskcryptError, match="expected a state dict"):
        Recognizer.from_weights(tmp_path / "junk.pt")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_imagenet_resnet_loads_and_skips_the_classifier(tmp_path, arch):
    import torchvision

    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(weights=None)
    _randomize_bn(tv, 2)
    tv.eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = Recognizer.from_weights(tmp_path / "tv.pth", num_classes=4)
    assert model.config.arch == arch and model.config.mean == (0.485, 0.456, 0.406)
    x = _faces(2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = nn.Sequential(*list(tv.children())[:-1])((x.float() / 255 - mean) / std).flatten(1)
        emb = model.embed(x)
    if arch == "resnet18":  # the pooled features, up to the fresh BatchNorm's constant scale
        assert (F.normalize(emb) - F.normalize(feats)).abs().max().item() < 1e-4
    else:  # 2048 -> 512 through a new projection: loaded body, untrained neck
        assert emb.shape == (2, 512)
        torch.testing.assert_close(model.backbone[7][0].conv3.weight, tv.layer4[0].conv3.weight)
        return

    info = load_external_weights(Recognizer(model.config), tmp_path / "tv.pth", "--init-original")
    assert info["skipped"] == ["fc.weight", "fc.bias"] and not info["reinitialized"]
    # Below 96 px our stem is a 3x3 stride-1 conv: ImageNet's 7x7 conv1 is re-initialized, the rest loads.
    small = Recognizer(RecognizerConfig(arch=arch, image_size=32))
    info = load_external_weights(small, tmp_path / "tv.pth", "--init-original")
    assert info["reinitialized"] == ["backbone.0.weight"]
    torch.testing.assert_close(small.backbone[4][0].conv1.weight, tv.layer1[0].conv1.weight)
    with pytest.raises(MaskcryptError, match=r"torchvision key conv1\.weight has no place in the model"):
        load_external_weights(Recognizer(RecognizerConfig(arch="iresnet18", image_size=32)), tmp_path / "tv.pth",
                              "--init-original")


def test_maskcrypt_weights_need_their_arch_and_keep_their_classifier(tmp_path):
    donor = Recognizer(RecognizerConfig(num_classes=6, image_size=16, width=8)).eval()
    torch.save(donor.state_dict(), tmp_path / "model.pt")
    with pytest.raises(MaskcryptError, match="do not name their architecture"):
        Recognizer.from_weights(tmp_path / "model.pt")
    model = Recognizer.from_weights(tmp_path / "model.pt", arch="compact", image_size=16, width=8)
    x = _faces(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), donor(x))


def test_training_builds_each_role_from_its_initial_weights(tmp_path):
    """What train_run hands each role's workers: the config the weights need, loaded as the worker loads them."""
    import argparse

    from maskcrypt.cli.flags import RUN_FLAGS, add_flags, build_config
    from maskcrypt.train.driver import _weights_config

    torch.save(_RefIR().state_dict(), tmp_path / "backbone.pth")
    parser = argparse.ArgumentParser()
    add_flags(parser, RUN_FLAGS)
    config = build_config(parser.parse_args(["--init-encrypted", str(tmp_path / "backbone.pth"), "--size", "112"]),
                          RUN_FLAGS)
    assert config.sources.init_encrypted.endswith("backbone.pth") and config.sources.init_original == ""
    rec = RecognizerConfig(num_classes=3, image_size=112)
    lines: list[str] = []
    cfg = _weights_config(rec, config.sources.init_encrypted, "--init-encrypted", "compact", lines.append)
    assert cfg["layout"] == "insightface" and cfg["arch"] == "iresnet18" and "insightface iresnet18" in lines[0]
    assert _weights_config(rec, "", "--init-original", "compact", lines.append) == rec.to_dict()
    assert "layout" not in rec.to_dict()  # configs (and job hashes) from before layouts existed stay equal
    model = Recognizer(RecognizerConfig.from_dict(cfg))
    load_external_weights(model, tmp_path / "backbone.pth", "--init-encrypted")
    with pytest.raises(MaskcryptError, match=r"--init-encrypted .*backbone\.pth: holds insightface iresnet18 "
                                             r"weights, but the architecture is 'resnet18'"):
        _weights_config(RecognizerConfig(arch="resnet18", image_size=112), str(tmp_path / "backbone.pth"),
                        "--init-encrypted", "resnet18", lines.append)
    with pytest.raises(MaskcryptError, match="--size 32: insightface IR-ResNet weights need 112"):
        _weights_config(RecognizerConfig(image_size=32), str(tmp_path / "backbone.pth"), "--init-original",
                        "compact", lines.append)
