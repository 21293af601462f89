"""Certificates from vote counts: PixelDP (Lecuyer et al. 2019) and randomized smoothing
(Cohen et al. 2019 for Gaussian/L2, Teng et al. 2020 for Laplace/L1), on the same noise.

Symbols: sigma (Gaussian std) or b (Laplace scale) in the noise layer's space; sensitivity
Delta, the proven operator norm of the pre-noise map (L2 for Gaussian, L1 for Laplace), so an
input change of norm r moves the noise layer's input by at most Delta * r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from .stats import binomial_test_pvalue, clopper_pearson_lower, simultaneous_clopper_pearson

ABSTAIN = -1
NO_RADIUS = -1.0
# delta' values searched for the PixelDP robustness size: log-spaced small ones and a linear range.
DEFAULT_DELTA_GRID = np.unique(np.concatenate([np.geomspace(1e-6, 0.3, 200), np.linspace(0.001, 0.3, 300)]))


def _check_scale(scale: float, sensitivity: float, noise: str) -> None:
    if noise not in ("gaussian", "laplace"):
        raise ValueError(f"noise must be 'gaussian' or 'laplace', got {noise!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the noise scale must be > 0, got {scale!r}")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise ValueError(f"the sensitivity must be > 0, got {sensitivity!r}")


def _check_level(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


# --- PixelDP ----------------------------------------------------------------------------
def pixeldp_condition(p_lower, p_upper, eps, delta):
    """Prop. 1/2: p_lower > e^{2 eps} p_upper + (1 + e^eps) delta means the prediction cannot change."""
    return np.asarray(p_lower) > np.exp(2 * np.asarray(eps)) * np.asarray(p_upper) + (1 + np.exp(eps)) * np.asarray(delta)


def pixeldp_max_eps(p_lower, p_upper, delta):
    """Supremum of the eps' for which the Prop. 2 condition holds, in closed form (0 when none).

    With t = e^eps the condition reads p_upper t^2 + delta t + (delta - p_lower) < 0, a quadratic
    that is increasing for t > 0; it holds exactly for t below its positive root
    t* = (-delta + sqrt(delta^2 - 4 p_upper (delta - p_lower))) / (2 p_upper)
    (t* = (p_lower - delta) / delta when p_upper = 0).  eps' = ln t* when t* > 1, else no eps' > 0.
    """
    pl, pu, d = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (p_lower, p_upper, delta)))
    with np.errstate(divide="ignore", invalid="ignore"):
        root = (-d + np.sqrt(d * d - 4 * pu * (d - pl))) / (2 * pu)
        linear = (pl - d) / d
        t = np.where(pu > 0, root, linear)
        eps = np.where(t > 1, np.log(np.where(t > 1, t, 1.0)), 0.0)
    return eps if eps.ndim else float(eps)


@dataclass(frozen=True)
class PixelDPSize:
    size: float  # largest certified attack size L' (0 when none)
    eps: float  # the (eps', delta') that achieved it
    delta: float


def pixeldp_size_gaussian(p_lower: float, p_upper: float, sigma: float, sensitivity: float,
                          delta_grid=None, max_eps: float = 1.0) -> PixelDPSize:
    """Robustness size with Gaussian noise fixed at construction: the largest
    L' = sigma eps' / (Delta sqrt(2 ln(1.25/delta'))) over delta' in the grid, with eps' the largest
    eps <= max_eps (the Gaussian mechanism is proven for eps <= 1) for which Prop. 2 holds."""
    _check_scale(sigma, sensitivity, "gaussian")
    grid = DEFAULT_DELTA_GRID if delta_grid is None else np.asarray(delta_grid, dtype=float)
    eps = np.minimum(pixeldp_max_eps(p_lower, p_upper, grid), max_eps)
    sizes = sigma * eps / (sensitivity * np.sqrt(2 * np.log(1.25 / grid)))
    best = int(np.argmax(sizes))
    if sizes[best] <= 0:
        return PixelDPSize(0.0, 0.0, 0.0)
    return PixelDPSize(float(sizes[best]), float(eps[best]), float(grid[best]))


def pixeldp_size_laplace(p_lower: float, p_upper: float, b: float, sensitivity: float) -> PixelDPSize:
    """Laplace noise (delta = 0): eps' = Delta_1 L' / b and Prop. 2 reads p_lower > e^{2 eps'} p_upper,
    so L' = b ln(p_lower / p_upper) / (2 Delta_1), 0 when p_lower <= p_upper."""
    _check_scale(b, sensitivity, "laplace")
    if p_upper <= 0:
        raise ValueError("p_upper must be > 0 (a confidence bound from finite draws never reaches 0)")
    if p_lower <= p_upper:
        return PixelDPSize(0.0, 0.0, 0.0)
    eps = math.log(p_lower / p_upper) / 2
    return PixelDPSize(b * eps / sensitivity, eps, 0.0)


@dataclass(frozen=True)
class PixelDPCertificate:
    predict: int
    size: float
    certified_at_construction: bool  # Prop. 2 at the construction's own (eps, delta)
    p_lower: float
    p_upper: float


def pixeldp_certify(counts, eta: float, noise: str, scale: float, sensitivity: float, eps: float,
                    delta: float) -> PixelDPCertificate:
    """Prop. 2 on argmax votes: simultaneous Clopper-Pearson intervals at 1 - eta over the K classes
    (Bonferroni), p_lower for the top class, p_upper the largest upper bound among the others."""
    _check_level(eta, "eta")
    _check_scale(scale, sensitivity, noise)
    counts = np.asarray(counts)
    lower, upper = simultaneous_clopper_pearson(counts, 1 - eta)
    return _pixeldp_from_bounds(int(np.argmax(counts)), lower, upper, noise, scale, sensitivity, eps, delta)


def _pixeldp_from_bounds(k, lower, upper, noise, scale, sensitivity, eps, delta) -> PixelDPCertificate:
    p_lower = float(lower[k])
    p_upper = float(np.max(np.delete(upper, k))) if len(upper) > 1 else 0.0
    if noise == "gaussian":
        size = pixeldp_size_gaussian(p_lower, p_upper, scale, sensitivity).size
    else:
        size = pixeldp_size_laplace(p_lower, max(p_upper, 1e-300), scale, sensitivity).size
    return PixelDPCertificate(k, size, bool(pixeldp_condition(p_lower, p_upper, eps, delta)), p_lower, p_upper)


def pixeldp_certify_from_scores(mean_scores, var_scores, n: int, eta: float, noise: str, scale: float,
                                sensitivity: float, eps: float, delta: float,
                                method: str = "bernstein") -> PixelDPCertificate:
    """Prop. 2 on mean softmax scores in [0, 1]: Hoeffding or empirical-Bernstein intervals,
    each one-sided bound at (1 - eta) / (2K) so that all 2K bounds hold together."""
    from .stats import (empirical_bernstein_lower, empirical_bernstein_upper, hoeffding_lower,
                        hoeffding_upper)

    _check_level(eta, "eta")
    _check_scale(scale, sensitivity, noise)
    mean = np.clip(np.asarray(mean_scores, dtype=float), 0, 1)
    level = (1 - eta) / (2 * len(mean))
    if method == "hoeffding":
        lower, upper = hoeffding_lower(mean, n, level), hoeffding_upper(mean, n, level)
    elif method == "bernstein":
        var = np.asarray(var_scores, dtype=float)
        lower, upper = empirical_bernstein_lower(mean, var, n, level), empirical_bernstein_upper(mean, var, n, level)
    else:
        raise ValueError(f"method must be 'hoeffding' or 'bernstein', got {method!r}")
    return _pixeldp_from_bounds(int(np.argmax(mean)), np.asarray(lower), np.asarray(upper), noise, scale,
                                sensitivity, eps, delta)


# --- randomized smoothing ----------------------------------------------------------------
def smoothing_radius_gaussian(p_a_lower: float, sigma: float, sensitivity: float) -> float:
    """Cohen et al. Thm 1 in the noise layer's space, divided by Delta: sigma Phi^-1(p_A) / Delta."""
    _check_scale(sigma, sensitivity, "gaussian")
    if p_a_lower <= 0.5:
        return NO_RADIUS
    return float(sigma * norm.ppf(p_a_lower) / sensitivity)


def smoothing_radius_laplace(p_a_lower: float, b: float, sensitivity: float) -> float:
    """Teng et al. (ICLR 2020), L1 with Laplace(b) noise: -b ln(2 (1 - p_A)) / Delta_1."""
    _check_scale(b, sensitivity, "laplace")
    if p_a_lower <= 0.5:
        return NO_RADIUS
    return float(-b * math.log(2 * (1 - p_a_lower)) / sensitivity)


@dataclass(frozen=True)
class SmoothedCertificate:
    predict: int
    radius: float
    p_a_lower: float


def smoothed_certify(selection_counts, estimation_counts, alpha: float, noise: str, scale: float,
                     sensitivity: float) -> SmoothedCertificate:
    """Cohen's CERTIFY: the class from the selection draws, a one-sided (1 - alpha) Clopper-Pearson
    lower bound p_A from the fresh estimation draws; abstain when p_A <= 1/2."""
    _check_level(alpha, "alpha")
    _check_scale(scale, sensitivity, noise)
    c_a = int(np.argmax(selection_counts))
    counts = np.asarray(estimation_counts)
    p_a = float(clopper_pearson_lower(int(counts[c_a]), int(counts.sum()), alpha))
    if p_a <= 0.5:
        return SmoothedCertificate(ABSTAIN, NO_RADIUS, p_a)
    radius_fn = smoothing_radius_gaussian if noise == "gaussian" else smoothing_radius_laplace
    return SmoothedCertificate(c_a, radius_fn(p_a, scale, sensitivity), p_a)


def smoothed_predict(counts, alpha: float) -> int:
    """Cohen's PREDICT: the top class unless a binomial test cannot tell it from the runner-up
    at level alpha (then abstain, -1)."""
    _check_level(alpha, "alpha")
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    n_a = int(counts[order[0]])
    n_b = int(counts[order[1]]) if len(counts) > 1 else 0
    return int(order[0]) if binomial_test_pvalue(n_a, n_b) <= alpha else ABSTAIN
