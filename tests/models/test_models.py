import pytest
import torch
from torch import nn

from models import ProjectionHead, SimCLRNet, SmallCNN, build_backbone


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnet_feature_dims(name, dim):
    backbone = build_backbone(name)
    assert backbone.feature_dim == dim
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_cifar_stem_keeps_resolution():
    standard, cifar = build_backbone("resnet18"), build_backbone("resnet18", cifar_stem=True)
    assert cifar.net.conv1.kernel_size == (3, 3) and cifar.net.conv1.stride == (1, 1)
    assert isinstance(cifar.net.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    stem_out = cifar.net.maxpool(cifar.net.relu(cifar.net.bn1(cifar.net.conv1(x))))
    assert stem_out.shape[-1] == 32
    assert standard.net.maxpool(standard.net.conv1(x)).shape[-1] == 8
    assert cifar(x).shape == (2, 512)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_small_cnn_any_small_size(size):
    net = SmallCNN(in_channels=3, width=16)
    assert net(torch.randn(3, 3, size, size)).shape == (3, net.feature_dim)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")  # type: ignore[arg-type]


def test_projection_head_is_the_papers():
    head = ProjectionHead(512)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert head.layers[0].in_features == 512 and head.layers[0].out_features == 2048
    assert head.layers[3].out_features == 128
    assert head.layers[0].bias is None and head.layers[3].bias is None
    final_norm = head.layers[4]
    assert not final_norm.bias.requires_grad and final_norm.weight.requires_grad
    assert head(torch.randn(4, 512)).shape == (4, 128)


def test_projection_head_v2_depth():
    head = ProjectionHead(64, hidden_dim=32, out_dim=16, num_layers=3)
    assert sum(isinstance(m, nn.Linear) for m in head.layers) == 3
    with pytest.raises(ValueError):
        ProjectionHead(64, num_layers=0)


def test_simclr_net_encode_and_project():
    net = SimCLRNet(SmallCNN(width=8), ProjectionHead(32, 16, 8))
    x = torch.randn(4, 3, 16, 16)
    assert net.encode(x).shape == (4, 32)
    assert net(x).shape == (4, 8)
