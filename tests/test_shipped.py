"""The shipped Fashion-MNIST models: verified at load, calibrated as their names say, and useful."""

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
