"""CarcinoNet: shapes, input normalisation, encoder features, and local encoder weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from monai_disc.networks.carcinonet import IMAGENET_MEAN, IMAGENET_STD, CarcinoNet, carcinonet_toy

torch.set_num_threads(1)


@pytest.mark.parametrize("size", [64, 128])
def test_toy_logits_have_input_size_and_four_classes(size):
    net = carcinonet_toy().eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size) * 2 - 1)
    assert out.shape == (2, 4, size, size)
    assert torch.isfinite(out).all()


def test_size_not_multiple_of_stride_is_padded_and_cropped():
    net = carcinonet_toy().eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 50, 70))
    assert out.shape == (1, 4, 50, 70)


def test_resnet50_config_runs_on_64px():
    net = CarcinoNet(num_classes=4, encoder="resnet50").eval()
    assert net.num_features == 2048
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert out.shape == (1, 4, 64, 64)


def test_normalize_maps_package_range_to_imagenet_statistics():
    net = carcinonet_toy()
    # a tile whose [0, 1] value equals the ImageNet mean per channel must normalise to 0
    mean01 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    x = mean01 * 2 - 1
    assert torch.allclose(net.normalize(x), torch.zeros(1, 3, 1, 1), atol=1e-6)
    # white (+1) maps to (1 - mean) / std
    white = net.normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white, expected, atol=1e-6)
    # the statistics are constants, not weights a checkpoint would carry
    assert not any(k in net.state_dict() for k in ("mean", "std"))


def test_encode_returns_pooled_deepest_features():
    net = carcinonet_toy().eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        feats = net.encode(x)
        deepest = net.encoder(net.normalize(x))[-1]
    assert feats.shape == (3, net.num_features) == (3, 256)
    assert torch.allclose(feats, deepest.mean(dim=(-2, -1)))


def test_torchvision_resnet50_state_dict_loads_into_encoder(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    path = tmp_path / "rn50_tv.pth"
    torch.save(tv.state_dict(), path)
    net = CarcinoNet(encoder="resnet50", pretrained_weights=str(path))
    assert torch.equal(net.encoder.conv1.weight, tv.conv1.weight)
    assert torch.equal(net.encoder.layer4[2].bn3.running_var, tv.layer4[2].bn3.running_var)


def test_ddp_prefixed_nested_checkpoint_loads(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    net = CarcinoNet(encoder="resnet18", pretrained_weights=path)
    assert torch.equal(net.encoder.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)


def test_wrong_weight_file_error_names_the_file(tmp_path):
    wrong = tmp_path / "resnet18_for_rn50.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="resnet18_for_rn50.pth.*shape mismatches"):
        CarcinoNet(encoder="resnet50", pretrained_weights=wrong)

    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        CarcinoNet(encoder="resnet18", pretrained_weights=garbage)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        CarcinoNet(encoder="resnet18", pretrained_weights=tmp_path / "missing.pth")


def test_toy_network_learns_a_colour_rule():
    """Twenty steps on tiles whose label is their colour must beat the 1/4 chance accuracy clearly."""
    torch.manual_seed(0)
    net = carcinonet_toy()
    colours = torch.tensor([[-0.8, -0.8, -0.8], [0.8, -0.8, -0.8], [-0.8, 0.8, -0.8], [-0.8, -0.8, 0.8]])
    labels = torch.zeros(8, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = torch.arange(8).remainder(3).add(1).view(8, 1, 1)
    x = colours[labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(8, 3, 32, 32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), labels)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == labels).float().mean().item()
    assert acc > 0.9
