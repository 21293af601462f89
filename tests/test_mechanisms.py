import math

import pytest

from dp_autoencoder.mechanisms import CalibrationError, calibrate, gaussian_sigma, laplace_scale


def test_gaussian_closed_form_and_paper_constant():
    # Paper's code: eps = 1, delta = 0.05 -> sigma = sqrt(2 ln 25) * Delta * L = 2.5373 * Delta * L.
    assert gaussian_sigma(1.0, 1.0, 0.05, 1.0) == pytest.approx(2.5373, abs=1e-4)
    assert gaussian_sigma(0.3, 0.5, 1e-5, 2.0) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) * 2 * 0.3 / 0.5)
    assert calibrate("gaussian", 0.1, 1.0, 0.05, 1.0) == pytest.approx(0.25373, abs=1e-5)


def test_laplace_closed_form():
    assert laplace_scale(0.1, 0.5, 3.0) == pytest.approx(0.6)
    assert calibrate("laplace", 1.0, 1.0, 0.0, 1.0) == 1.0


@pytest.mark.parametrize("kwargs, words", [
    (dict(L=0.1, eps=1.5, delta=0.05), "eps"),
    (dict(L=0.0, eps=1.0, delta=0.05), "L must"),
    (dict(L=-1.0, eps=1.0, delta=0.05), "L must"),
    (dict(L=0.1, eps=1.0, delta=0.0), "delta"),
    (dict(L=0.1, eps=1.0, delta=1.0), "delta"),
    (dict(L=float("nan"), eps=1.0, delta=0.05), "L must"),
    (dict(L=0.1, eps=0.0, delta=0.05), "eps must"),
])
def test_gaussian_refuses_impossible_settings(kwargs, words):
    with pytest.raises(CalibrationError, match=words):
        gaussian_sigma(**kwargs)


def test_refusals_for_laplace_and_unknown_noise():
    with pytest.raises(CalibrationError, match="delta = 0"):
        calibrate("laplace", 0.1, 1.0, 0.05, 1.0)
    with pytest.raises(CalibrationError, match="unknown noise"):
        calibrate("cauchy", 0.1, 1.0, 0.05, 1.0)
    assert laplace_scale(0.1, eps=3.0) == pytest.approx(0.1 / 3)  # eps > 1 is fine for Laplace
