"""The photo front-end: the U-Net post-noise network, its pre-noise part, MAC counts, checkpoints."""

import pytest
import torch
from torch import nn

from dp_autoencoder.autoencoder import (Architecture, NoiseConfig, PixelDPAutoencoder, load_autoencoder, preset,
                                        save_autoencoder)
from dp_autoencoder.denoiser import UNetDenoiser
from dp_autoencoder.macs import autoencoder_macs, count_macs
from dp_autoencoder.sensitivity import conv_power_iteration

NOISE = NoiseConfig("gaussian", 0.1, 1.0, 0.05)


def tiny(placement="input", widths=(4, 8, 16), blocks=1, in_channels=3):
    torch.manual_seed(0)
    arch = Architecture(in_channels, (6,), (3,), (1,), placement, "unet", widths, blocks)
    return PixelDPAutoencoder(arch, NOISE)


@pytest.mark.parametrize("size", [(28, 28), (224, 224), (299, 299), (37, 53), (1, 1), (5, 2)])
@pytest.mark.parametrize("placement", ["input", "latent"])
def test_any_size_comes_back_at_its_size_in_the_unit_range(size, placement):
    model = tiny(placement).eval()
    for p in model.parameters():  # not the zero-initialised identity blocks: every path carries signal
        nn.init.normal_(p, std=0.3)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert len(model.feature_sizes(size)) == 3  # the image and two stride-2 levels


def test_presets_are_u_nets_with_the_documented_cost():
    for name, lo, hi in (("unet-cpu", 1.0e9, 1.6e9), ("unet-gpu", 10e9, 20e9)):
        model = PixelDPAutoencoder(preset(name, 3, "input"), NOISE)
        macs = autoencoder_macs(model, (224, 224))
        assert macs["pre_noise"] == 0 and lo < macs["per_draw"] < hi, (name, macs)
        assert model.arch.decoder == "unet" and model.pre_noise_conv is None and model.sensitivity((224, 224)) == 1.0


def test_mac_count_equals_a_hand_count_on_a_tiny_net():
    c, w0, w1, h = 3, 4, 8, 10
    net = UNetDenoiser(c, c, (w0, w1), blocks=1)
    hw0, hw1 = h * h, (h // 2) ** 2
    hand = (hw0 * c * 9 * w0          # stem 3x3, c -> w0 at full resolution
            + hw1 * w0 * 9 * w1       # down: stride-2 3x3, w0 -> w1, counted at its output
            + 2 * hw1 * w1 * 9 * w1   # the residual block at 1/2 (two 3x3 convs)
            + hw1 * w1 * 4 * w0       # up: 2x2 transposed conv, w1 -> w0, counted per input value
            + hw0 * w0 * 9 * c)       # head 3x3, w0 -> c
    assert count_macs(net, torch.zeros(1, c, h, h)) == hand
    lin = nn.Linear(7, 5)
    assert count_macs(lin, torch.zeros(3, 7)) == 3 * 7 * 5


def test_latent_pre_noise_is_conv_relu_with_a_proven_delta():
    model = tiny("latent")
    size = (16, 16)
    with torch.no_grad():
        model.encoder[0].weight.mul_(7.0)  # far above 1 before the constraint
    assert model.sensitivity(size) > 1.5
    delta = model.constrain_(size)
    assert delta <= 1.0 + 1e-6 and abs(model.sensitivity(size) - delta) < 1e-9
    conv = model.encoder[0]
    lower = conv_power_iteration(conv.weight.detach().double(), conv.stride, conv.padding, size, iters=300)
    assert lower <= delta * (1 + 1e-6) and lower > 0.9 * delta  # sound and close
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.rand(64, 3, *size, generator=g), torch.rand(64, 3, *size, generator=g)
    with torch.no_grad():
        ratio = (model.pre_noise(x) - model.pre_noise(x2)).flatten(1).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= delta


def test_u_net_architecture_is_checked():
    with pytest.raises(ValueError, match="stride-1"):
        Architecture(3, (6,), (3,), (2,), "latent", "unet", (4, 8), 1)
    with pytest.raises(ValueError, match="widths"):
        Architecture(3, (6,), (3,), (1,), "latent", "unet", (), 1)
    with pytest.raises(ValueError, match="decoder"):
        Architecture(3, (6,), (3,), (1,), "latent", "transformer", (4,), 1)


@pytest.mark.parametrize("placement", ["input", "latent"])
def test_checkpoint_round_trip(tmp_path, placement):
    model = tiny(placement)
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    model.constrain_((16, 16))
    save_autoencoder(model, tmp_path / "ae", (16, 16))
    loaded, config = load_autoencoder(tmp_path / "ae")
    assert config["architecture"]["decoder"] == "unet" and loaded.arch == model.arch
    x = torch.rand(2, 3, 19, 23)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, g1), loaded(x, g2))


def test_old_configs_without_decoder_fields_still_mean_the_mirror_decoder():
    arch = Architecture.from_dict({"in_channels": 1, "channels": [8], "kernels": [4], "strides": [2]})
    assert arch.decoder == "mirror" and arch.widths == () and arch.levels == 0
