"""The networks: exact architecture, output shapes, initialisation schemes."""

import pytest
import torch

from alexpipe.model import AlexNet, AlexNetCIFAR, build_model


def test_alexnet_cifar_parameter_count_and_shape():
    m = AlexNetCIFAR()
    assert sum(p.numel() for p in m.parameters()) == 23_272_266
    assert m(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert m.features(torch.randn(1, 3, 32, 32)).shape == (1, 256, 2, 2)
    lrn = [mod for mod in m.features if isinstance(mod, torch.nn.LocalResponseNorm)]
    assert len(lrn) == 1 and (lrn[0].size, lrn[0].alpha, lrn[0].beta, lrn[0].k) == (5, 1e-4, 0.75, 2.0)


def test_alexnet_imagenet_shape_and_classes():
    m = AlexNet(num_classes=37).eval()
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 37)
    assert m.features(torch.randn(1, 3, 224, 224)).shape == (1, 256, 6, 6)
    assert [m.conv1.kernel_size, m.conv1.stride] == [(11, 11), (4, 4)]
    assert build_model("alexnet", num_classes=5).fc3.out_features == 5


@pytest.mark.parametrize("shape", [(4, 64, 17, 17), (2, 5, 3, 3), (2, 2, 4, 4)])
def test_local_response_norm_equals_torch(shape):
    from alexpipe.model.alexnet import LocalResponseNorm

    torch.manual_seed(0)
    x = (torch.randn(shape) * 30).requires_grad_()
    ours, ref = LocalResponseNorm(5, 1e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    g1, = torch.autograd.grad(ours(x).square().sum(), x)
    g2, = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    m = AlexNetCIFAR().eval()
    x = torch.randn(8, 3, 32, 32)
    ref = m(x)
    out = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_paper_init():
    torch.manual_seed(0)
    m = build_model("alexnet_cifar", init="paper")
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "fc3"):
        w = getattr(m, name).weight
        assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.01, rel=0.05)
    for name, bias in [("conv1", 0), ("conv2", 1), ("conv3", 0), ("conv4", 1), ("conv5", 1),
                       ("fc1", 1), ("fc2", 1), ("fc3", 0)]:
        assert torch.all(getattr(m, name).bias == bias), name


def test_kaiming_init():
    torch.manual_seed(0)
    m = build_model("alexnet_cifar", init="kaiming")
    for name, fan_in, gain in [("conv1", 27, 2.0), ("conv3", 192 * 9, 2.0), ("fc1", 1024, 2.0), ("fc3", 4096, 1.0)]:
        layer = getattr(m, name)
        assert layer.weight.std().item() == pytest.approx((gain / fan_in) ** 0.5, rel=0.1), name
        assert torch.all(layer.bias == 0)


def test_default_init_is_pytorch_default_and_seeded():
    """PyTorch's default: every weight uniform within kaiming-uniform(a=sqrt(5))'s bound 1/sqrt(fan_in), filling
    it (not a narrower init); the same seed gives the same network, another seed another."""
    torch.manual_seed(1)
    a = build_model()
    for name, fan_in in [("conv1", 27), ("conv2", 64 * 9), ("fc1", 1024), ("fc3", 4096)]:
        w, bound = getattr(a, name).weight, 1 / fan_in ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound, name
        assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.1), name  # uniform's std
    torch.manual_seed(1)
    b = build_model()
    torch.manual_seed(2)
    c = build_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(ValueError, match="unknown init"):
        build_model(init="xavier")
