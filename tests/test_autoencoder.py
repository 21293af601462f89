import pytest
import torch

from dp_autoencoder.autoencoder import NoiseConfig, PixelDPAutoencoder, preset
from dp_autoencoder.sensitivity import conv_power_iteration


def make(arch="small", channels=1, kind="gaussian", placement="latent", L=0.1):
    delta = 0.05 if kind == "gaussian" else 0.0
    return PixelDPAutoencoder(preset(arch, channels, placement), NoiseConfig(kind, L, 1.0, delta))


@pytest.mark.parametrize("arch, channels, size", [("small", 1, 28), ("small", 3, 32), ("imagenet", 3, 224),
                                                   ("imagenet", 3, 299), ("imagenet", 1, 57)])
def test_output_shape_and_range(arch, channels, size):
    torch.manual_seed(0)
    ae = make(arch, channels)
    x = torch.rand(2, channels, size, size)
    y = ae(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert 0 <= y.min() and y.max() <= 1


def test_stages_compose_to_forward_with_the_same_generator():
    torch.manual_seed(0)
    ae = make()
    x = torch.rand(3, 1, 28, 28)
    z = ae.pre_noise(x)
    assert z.shape == (3, 32, 14, 14)
    noise = ae.sample_noise(z.shape, torch.Generator().manual_seed(7))
    staged = ae.post_noise(z + noise, (28, 28))
    assert torch.equal(staged, ae(x, torch.Generator().manual_seed(7)))


def test_input_placement_has_unit_sensitivity_and_noise_on_pixels():
    ae = make(placement="input")
    x = torch.rand(1, 1, 28, 28)
    assert torch.equal(ae.pre_noise(x), x)
    assert ae.sensitivity((28, 28)) == 1.0


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_noise_has_the_calibrated_scale(kind):
    ae = make(kind=kind, L=0.3)
    n = ae.sample_noise((200_000,), torch.Generator().manual_seed(1))
    b = ae.noise.scale
    if kind == "gaussian":
        assert b == pytest.approx(2.5373 * 0.3, abs=1e-4)
        assert n.std().item() == pytest.approx(b, rel=0.01)
    else:
        assert b == pytest.approx(0.3)
        assert n.abs().mean().item() == pytest.approx(b, rel=0.01)  # E|Laplace(0, b)| = b
        assert n.var().item() == pytest.approx(2 * b * b, rel=0.02)
    assert abs(n.mean().item()) < 0.01


def test_sensitivity_is_an_upper_bound_on_the_pre_noise_map():
    torch.manual_seed(3)
    ae = make()
    size = (28, 28)
    delta = ae.sensitivity(size)
    conv = ae.pre_noise_conv
    assert conv_power_iteration(conv.weight.detach(), conv.stride, conv.padding, size, iters=300) <= delta * (1 + 1e-6)
    x = torch.rand(64, 1, 28, 28)
    x2 = (x + 0.05 * torch.randn_like(x))
    ratio = (ae.pre_noise(x) - ae.pre_noise(x2)).flatten(1).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
    assert ratio.max().item() <= delta


def test_constrain_keeps_delta_at_most_target():
    torch.manual_seed(0)
    ae = make("imagenet", 3)
    with torch.no_grad():
        ae.pre_noise_conv.weight.mul_(10)
    assert ae.sensitivity((64, 64)) > 1
    after = ae.constrain_((64, 64))
    assert 0.999 <= after <= 1.0
    assert ae.sensitivity((64, 64)) <= 1.0


def test_wrong_channels_are_refused_with_a_message():
    ae = make(channels=3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        ae(torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        make("imagenet", 3)(torch.rand(1, 3, 4, 4))
