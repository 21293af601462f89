"""Noise calibration for the PixelDP noise layer (Lecuyer et al. 2019, section III-B).

The noise layer adds noise to z = g(x), where g has proven sensitivity ``Delta``
(``||g(x) - g(x')|| <= Delta * ||x - x'||`` in the matching norm).  For a
construction attack bound ``L`` the noise makes the map (eps, delta)-DP with
respect to input changes of norm <= L:

* Gaussian, L2 (Dwork & Roth, Thm A.1, valid for eps <= 1):
  ``sigma = sqrt(2 ln(1.25 / delta)) * Delta_2 * L / eps``
* Laplace, L1 (delta = 0): ``b = Delta_1 * L / eps``
"""

from __future__ import annotations

import math

NOISE_KINDS = ("gaussian", "laplace")
NORM_OF_NOISE = {"gaussian": "l2", "laplace": "l1"}


class CalibrationError(ValueError):
    """An impossible (L, eps, delta, Delta) setting."""


def _check_common(L: float, eps: float, sensitivity: float) -> None:
    for name, value in (("L", L), ("eps", eps), ("sensitivity", sensitivity)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CalibrationError(f"{name} must be a finite number > 0, got {value!r}")


def gaussian_sigma(L: float, eps: float = 1.0, delta: float = 0.05, sensitivity: float = 1.0) -> float:
    """Standard deviation of the Gaussian mechanism for an L2 attack of size ``L``."""
    _check_common(L, eps, sensitivity)
    if eps > 1:
        raise CalibrationError(
            f"eps = {eps} is not allowed for the Gaussian mechanism: its calibration "
            "sqrt(2 ln(1.25/delta)) * Delta * L / eps is only proven for eps <= 1"
        )
    if not (0 < delta < 1):
        raise CalibrationError(f"delta must be in (0, 1) for the Gaussian mechanism, got {delta!r}")
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity * L / eps


def laplace_scale(L: float, eps: float = 1.0, sensitivity: float = 1.0) -> float:
    """Scale ``b`` of the Laplace mechanism for an L1 attack of size ``L`` (delta = 0)."""
    _check_common(L, eps, sensitivity)
    return sensitivity * L / eps


def calibrate(noise: str, L: float, eps: float, delta: float, sensitivity: float) -> float:
    """Noise scale (sigma or b) for the given mechanism."""
    if noise == "gaussian":
        return gaussian_sigma(L, eps, delta, sensitivity)
    if noise == "laplace":
        if delta != 0:
            raise CalibrationError(f"the Laplace mechanism has delta = 0, got delta = {delta!r}")
        return laplace_scale(L, eps, sensitivity)
    raise CalibrationError(f"unknown noise {noise!r}; expected one of {', '.join(NOISE_KINDS)}")
