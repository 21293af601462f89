import pytest
import timm
import torch
from safetensors.torch import save_file

from dp_autoencoder.autoencoder import NoiseConfig, PixelDPAutoencoder, preset
from dp_autoencoder.checkpoint import CheckpointError
from dp_autoencoder.classifiers import load_classifier, save_classifier
from dp_autoencoder.pipeline import Classify, DefendedClassifier, Preprocessing, state_fingerprint

PREP = Preprocessing(input_size=(1, 20, 20), mean=(0.3,), std=(0.4,))


def tiny(num_classes=3, in_chans=1):
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes, in_chans=in_chans)


def test_checkpoint_folder_round_trip_and_freezing(tmp_path):
    model = tiny()
    save_classifier(model, tmp_path / "clf", "resnet10t", {"num_classes": 3, "in_chans": 1}, PREP, ["a", "b", "c"])
    clf = load_classifier(str(tmp_path / "clf"))
    assert clf.class_names == ["a", "b", "c"]
    assert not any(p.requires_grad for p in clf.parameters())
    clf.train()
    assert not clf.model.training
    x = torch.rand(2, 1, 20, 20)
    model.eval()
    assert torch.allclose(clf(x), model((x - 0.3) / 0.4))


def test_timm_name_with_local_safetensors_and_state_dict(tmp_path):
    model = tiny(1000, 3)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    for path in ("w.safetensors", "w.pth"):
        clf = load_classifier("resnet10t", weights=str(tmp_path / path))
        for k, v in model.state_dict().items():
            assert torch.equal(clf.model.state_dict()[k], v)
        assert clf.prep.input_size == tuple(timm.data.resolve_data_config(model=model)["input_size"])
        assert len(clf.class_names) == 1000
        assert clf.class_names[281].startswith("tabby")


def test_bad_classifier_sources(tmp_path):
    torch.manual_seed(0)
    other = timm.create_model("resnet10t", pretrained=False, channels=(32, 64, 128, 256))
    torch.save(other.state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError):
        load_classifier("resnet10t", weights=str(tmp_path / "narrow.pth"))
    with pytest.raises(CheckpointError, match="unknown classifier .no_such_model_xyz."):
        load_classifier("no_such_model_xyz")
    torch.save({"obj": object()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_classifier("resnet10t", weights=str(tmp_path / "evil.pth"))


def test_resize_and_normalize_follow_the_classifier():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.flatten(1)[:, :2]

    clf = Classify(Probe(), Preprocessing(input_size=(1, 8, 8), mean=(0.5,), std=(0.25,)))
    clf(torch.ones(1, 1, 28, 28))
    assert seen["x"].shape == (1, 1, 8, 8) and torch.allclose(seen["x"], torch.full_like(seen["x"], 2.0))


def test_stacking_refuses_channel_mismatch_and_keeps_weights_bit_identical():
    ae = PixelDPAutoencoder(preset("small", 3), NoiseConfig("gaussian", 0.1, 1.0, 0.05))
    clf = Classify(tiny(3, 1), PREP)
    with pytest.raises(ValueError, match="cannot stack"):
        DefendedClassifier(ae, clf)
    ae = PixelDPAutoencoder(preset("small", 1), NoiseConfig("gaussian", 0.1, 1.0, 0.05))
    stack = DefendedClassifier(ae, clf)
    before = state_fingerprint(clf)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    loss = stack(x, torch.Generator().manual_seed(0)).logsumexp(1).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    after = clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in clf.parameters())



def test_input_noise_baseline_adds_the_construction_noise_to_the_pixels():
    from dp_autoencoder.mechanisms import gaussian_sigma
    from dp_autoencoder.pipeline import InputNoiseClassifier

    clf = Classify(tiny(), PREP)
    noise = NoiseConfig("gaussian", 0.3, 1.0, 0.05, 1.0, gaussian_sigma(0.3))
    base = InputNoiseClassifier(clf, noise)
    x = torch.rand(2, 1, 20, 20)
    assert base.sensitivity((20, 20)) == 1.0 and torch.equal(base.pre_noise(x), x)
    draws = base.sample_noise((20000,), torch.Generator().manual_seed(0))
    assert draws.std().item() == pytest.approx(noise.scale, rel=0.03)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    noisy = x + base.sample_noise(x.shape, g1)
    with torch.no_grad():
        assert torch.equal(base(x, g2), clf(noisy))
