"""The photo recipes' training options: the stability objective's targets and temperature, and a run
started from another checkpoint's weights (--init-from, e.g. L = 0.3 from L = 0.1)."""

import math

import pytest
import torch
from torch.nn import functional as F

from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.train import TrainSettings, TrainingError, stability_loss, train

TINY = dict(data="dead-leaves", image_size=16, arch="small", num_images=48, val_images=8, batch_size=8)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Linear(12, 5)

    def forward(self, x):
        return self.w(x.flatten(1))


def test_soft_target_is_the_kl_divergence_up_to_a_constant():
    clf = Linear()
    x = torch.rand(6, 12)
    recon = (x + 0.3 * torch.randn(6, 12)).requires_grad_()
    soft = stability_loss(clf, recon, x)
    with torch.no_grad():
        p = clf(x).softmax(1)
    kl = F.kl_div(clf(recon).log_softmax(1), p, reduction="batchmean")
    entropy = -(p * p.log()).sum(1).mean()
    assert math.isclose(soft.item(), (kl + entropy).item(), rel_tol=1e-5)
    g_soft, = torch.autograd.grad(soft, recon)
    g_kl, = torch.autograd.grad(kl, recon)
    assert torch.allclose(g_soft, g_kl, atol=1e-6)


def test_temperature_and_hard_target_closed_forms():
    clf = Linear()
    x, recon = torch.rand(4, 12), torch.rand(4, 12)
    t = 3.0
    with torch.no_grad():
        clean, noisy = clf(x), clf(recon)
    expected = -((clean / t).softmax(1) * (noisy / t).log_softmax(1)).sum(1).mean() * t * t
    assert math.isclose(stability_loss(clf, recon, x, temperature=t).item(), expected.item(), rel_tol=1e-6)
    hard = F.cross_entropy(noisy, clean.argmax(1))
    assert math.isclose(stability_loss(clf, recon, x, target="hard").item(), hard.item(), rel_tol=1e-6)


def test_recipe_settings_are_checked():
    base = dict(data="x", out="y", epochs=2, stability_classifier="c", stability_weight=1.0)
    with pytest.raises(TrainingError, match="stability-target"):
        TrainSettings(**base, stability_target="kl").check()
    with pytest.raises(TrainingError, match="stability-temperature"):
        TrainSettings(**base, stability_temperature=0.0).check()
    with pytest.raises(TrainingError, match="soft target only"):
        TrainSettings(**base, stability_target="hard", stability_temperature=2.0).check()
    TrainSettings(**base, stability_target="hard").check()


def test_init_from_copies_the_weights_and_keeps_its_own_noise(tmp_path):
    first = train(TrainSettings(out=str(tmp_path / "a"), L=0.1, **TINY), progress=False, device="cpu")
    start = TrainSettings(out=str(tmp_path / "b"), L=0.3, init_from=str(first), lr=1e-12, **TINY)
    train(start, progress=False, device="cpu")
    a, _ = load_autoencoder(first)
    b, config = load_autoencoder(tmp_path / "b")
    assert config["noise"]["L"] == 0.3 and config["training"]["settings"]["init_from"] == str(first)
    _, first_config = load_autoencoder(first)
    assert config["training"]["init_from_weights_sha256"] == first_config["files"]["weights"]["sha256"]
    # One epoch at a learning rate of 1e-12 (and the projection, already satisfied) leaves the copied weights.
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    other = TrainSettings(out=str(tmp_path / "c"), arch="imagenet", init_from=str(first), **{
        k: v for k, v in TINY.items() if k != "arch"})
    with pytest.raises(TrainingError, match="architecture"):
        train(other, progress=False, device="cpu")
    assert not (tmp_path / "c" / "config.json").exists()


def test_dpae_train_takes_the_recipe_options(tmp_path):
    from dp_autoencoder.cli import main

    first = tmp_path / "a"
    tiny = ["--data", "dead-leaves", "--image-size", "16", "--arch", "small", "--num-images", "48",
            "--val-images", "8", "--batch-size", "8", "--quiet"]
    assert main(["train", *tiny, "--out", str(first)]) == 0
    assert main(["train", *tiny, "--L", "0.3", "--init-from", str(first), "--out", str(tmp_path / "b")]) == 0
    _, config = load_autoencoder(tmp_path / "b")
    settings = config["training"]["settings"]
    assert settings["init_from"] == str(first) and settings["stability_target"] == "soft"
    with pytest.raises(SystemExit) as refused:
        main(["train", *tiny, "--stability-target", "kl", "--out", str(tmp_path / "c")])
    assert refused.value.code == 2 and not (tmp_path / "c").exists()
