"""Certificates from noisy vote counts (pure math: numbers in, numbers out).

Symbols: sigma is the Gaussian noise std and b the Laplace scale, both in the noise layer's space;
``sensitivity`` is Delta, the proven operator norm of the pre-noise map g (L2 -> L2 for Gaussian
noise, L1 -> L1 for Laplace noise), so an input change of norm r moves g(x) by at most Delta * r.

PixelDP (Lecuyer et al., IEEE S&P 2019).  Prop. 1: if the expected scores A(x) of an
(eps, delta)-PixelDP model satisfy ``E[A_k] > e^{2 eps} max_{i != k} E[A_i] + (1 + e^eps) delta``,
no attack of size <= L changes the prediction k.  Prop. 2: the same with a lower bound on E[A_k] and
upper bounds on the others that hold together with probability >= eta.

Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019; Laplace/L1: Teng, Lee, Yuan, ICLR 2020):
if the smoothed classifier's top class has probability >= p_A > 1/2, the prediction is constant
within L2 radius sigma Phi^{-1}(p_A) (Gaussian) or L1 radius -b ln(2 (1 - p_A)) (Laplace) in the
noise space; dividing by Delta gives the radius in input space.

Abstention is marked by ``predict = ABSTAIN = -1`` and ``radius = NO_RADIUS = -1.0`` (the format of
Cohen et al.'s files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm as _norm

from .stats import (
    binomial_test_pvalue,
    clopper_pearson_lower,
    empirical_bernstein_lower,
    empirical_bernstein_upper,
    hoeffding_lower,
    hoeffding_upper,
    simultaneous_clopper_pearson,
)

__all__ = [
    "ABSTAIN",
    "NO_RADIUS",
    "NOISE_KINDS",
    "DEFAULT_DELTA_GRID",
    "PixelDPSize",
    "PixelDPCertificate",
    "SmoothedCertificate",
    "pixeldp_condition",
    "pixeldp_max_eps",
    "pixeldp_size_gaussian",
    "pixeldp_size_laplace",
    "smoothing_radius_gaussian",
    "smoothing_radius_laplace",
    "smoothed_certify",
    "smoothed_predict",
    "pixeldp_certify",
    "pixeldp_certify_from_scores",
]

ABSTAIN = -1
NO_RADIUS = -1.0
NOISE_KINDS = ("gaussian", "laplace")
PIXELDP_METHODS = ("clopper-pearson", "hoeffding", "bernstein")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PixelDPSize:
    """Robustness size L' and the (eps', delta') that achieve it; all 0.0 when nothing certifies.

    Arrays when the probability inputs are arrays.
    """

    size: float
    eps: float
    delta: float


@dataclass(frozen=True)
class SmoothedCertificate:
    """Cohen et al.'s CERTIFY output: class (-1 = abstain), radius in input space (-1.0 = abstain), p_A."""

    predict: int
    radius: float
    p_a_lower: float


@dataclass(frozen=True)
class PixelDPCertificate:
    """PixelDP Prop. 2 output for one input.

    ``size``: robustness size L' (0.0 when nothing certifies), achieved at (``size_eps``,
    ``size_delta``); ``certified_at_construction``: Prop. 2 holds at the construction (eps, delta),
    i.e. the prediction is certified against attacks of size <= L; ``p_lower``/``p_upper``: the
    eta-confidence bounds on E[A_k] and max_{i != k} E[A_i].
    """

    predict: int
    size: float
    certified_at_construction: bool
    p_lower: float
    p_upper: float
    size_eps: float
    size_delta: float


# --------------------------------------------------------------------------- validation


def _out(x):
    x = np.asarray(x)
    if x.ndim:
        return x
    return bool(x) if x.dtype == bool else float(x)


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _level(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}") from None
    if not (0 < v < 1):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return v


def _noise(noise) -> str:
    if noise not in NOISE_KINDS:
        raise ValueError(f"unknown noise {noise!r}; expected one of {', '.join(NOISE_KINDS)}")
    return noise


def _probs(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"{name} must lie in [0, 1], got {name}={x!r}")
    return a


def _delta(x, name: str = "delta", upper_open: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    ok = (a >= 0) & (a < 1)
    if upper_open:
        ok &= a > 0
    if not np.all(ok):
        interval = "(0, 1)" if upper_open else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {name}={x!r}")
    return a


def _counts(counts) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size < 1:
        raise ValueError(f"counts must be a 1-d vector of class counts, got shape {c.shape}")
    if not np.all(np.isfinite(c) & (c >= 0) & (c == np.floor(c))):
        raise ValueError(f"counts must be non-negative integers, got {counts!r}")
    if c.sum() < 1:
        raise ValueError("counts must contain at least one vote")
    return c


def _argmax_lowest(x: np.ndarray) -> int:
    """argmax with ties broken towards the lowest class id (np.argmax already does this)."""
    return int(np.argmax(x))


# --------------------------------------------------------------------------- PixelDP


def pixeldp_condition(p_lower, p_upper, eps, delta):
    """PixelDP Prop. 1/2: ``p_lower > e^{2 eps} p_upper + (1 + e^eps) delta`` (strict; vectorized)."""
    pl = _probs(p_lower, "p_lower")
    pu = _probs(p_upper, "p_upper")
    e = np.asarray(eps, dtype=float)
    if not np.all(e >= 0):
        raise ValueError(f"eps must be >= 0, got eps={eps!r}")
    d = _delta(delta)
    return _out(pl > np.exp(2 * e) * pu + (1 + np.exp(e)) * d)


def pixeldp_max_eps(p_lower, p_upper, delta):
    """Sup of the eps >= 0 for which :func:`pixeldp_condition` holds, in closed form (vectorized).

    With t = e^eps the condition reads q(t) = p_upper t^2 + delta t + (delta - p_lower) < 0.  q is
    increasing on t > 0 (q'(t) = 2 p_upper t + delta > 0), so {t >= 1 : q(t) < 0} = [1, t*) with t*
    the positive root, t* = (-delta + sqrt(delta^2 + 4 p_upper (p_lower - delta))) / (2 p_upper),
    computed in the cancellation-free form 2 (p_lower - delta) / (delta + sqrt(...)), which also covers
    p_upper = 0 (t* = (p_lower - delta) / delta) and is +inf when p_upper = delta = 0 < p_lower.
    Returns ln t*: the condition holds exactly for 0 <= eps < ln t*.  Returns 0.0 (no certificate)
    when t* <= 1, i.e. when the condition fails already at eps = 0.
    """
    pl = _probs(p_lower, "p_lower")
    pu = _probs(p_upper, "p_upper")
    d = _delta(delta)
    pl, pu, d = np.broadcast_arrays(pl, pu, d)
    ok = pl > d  # needed for a positive root
    disc = np.where(ok, d * d + 4 * pu * (pl - d), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(ok, 2 * (pl - d) / (d + np.sqrt(disc)), 0.0)
        eps = np.where(ok & (t > 1), np.log(np.where(t > 1, t, 2.0)), 0.0)
    return _out(eps)


# delta' grid in (0, 0.3]: 200 log-spaced points 1e-5..0.3, 100 linear 0.003..0.3, and 0.05 (the paper's delta).
DEFAULT_DELTA_GRID = np.unique(np.concatenate([np.logspace(-5, np.log10(0.3), 200), np.linspace(0.003, 0.3, 100), [0.05]]))
DEFAULT_DELTA_GRID.setflags(write=False)


def pixeldp_size_gaussian(p_lower, p_upper, sigma, sensitivity, delta_grid=None, max_eps=1.0) -> PixelDPSize:
    """Robustness size L' of one input under Gaussian noise fixed at construction, with its (eps', delta').

    The noise sigma is (eps', delta')-DP for L2 changes of size L' = sigma eps' / (Delta sqrt(2 ln(1.25/delta')))
    for every eps' <= 1 (Gaussian mechanism), so Prop. 2 at (eps', delta') certifies size L'.  We take
    the largest L' over the delta' grid with eps' = min(pixeldp_max_eps(p_lower, p_upper, delta'), max_eps)
    (a sup when eps' < max_eps: the condition is strict); default grid ``DEFAULT_DELTA_GRID``.
    size = eps = delta = 0.0 when nothing certifies.  p_lower/p_upper may be arrays (the grid is
    broadcast on a trailing axis).
    """
    sigma = _positive(sigma, "sigma")
    sensitivity = _positive(sensitivity, "sensitivity")
    max_eps = _positive(max_eps, "max_eps")
    if max_eps > 1:
        raise ValueError(f"max_eps must be <= 1 (the Gaussian mechanism's calibration needs eps <= 1), got {max_eps!r}")
    grid = DEFAULT_DELTA_GRID if delta_grid is None else np.asarray(delta_grid, dtype=float).ravel()
    if grid.size == 0:
        raise ValueError("delta_grid must not be empty")
    _delta(grid, "delta_grid", upper_open=True)
    pl = _probs(p_lower, "p_lower")
    pu = _probs(p_upper, "p_upper")
    pl, pu = np.broadcast_arrays(pl, pu)
    eps = np.minimum(pixeldp_max_eps(pl[..., None], pu[..., None], grid), max_eps)
    sizes = sigma * eps / (sensitivity * np.sqrt(2 * np.log(1.25 / grid)))
    best = np.argmax(sizes, axis=-1)
    size = np.take_along_axis(sizes, best[..., None], axis=-1)[..., 0]
    best_eps = np.take_along_axis(np.asarray(eps), best[..., None], axis=-1)[..., 0]
    certified = size > 0
    return PixelDPSize(
        size=_out(np.where(certified, size, 0.0)),
        eps=_out(np.where(certified, best_eps, 0.0)),
        delta=_out(np.where(certified, grid[best], 0.0)),
    )


def pixeldp_size_laplace(p_lower, p_upper, b, sensitivity) -> PixelDPSize:
    """Robustness size under Laplace noise (delta = 0): ``L' = b ln(p_lower / p_upper) / (2 Delta)``, 0 if p_lower <= p_upper.

    Laplace(b) is (eps', 0)-DP for L1 changes of size L' = b eps' / Delta, for every eps'; Prop. 2 with
    delta = 0 holds iff eps' < ln(p_lower / p_upper) / 2.  p_upper must be > 0 (a finite-sample upper
    bound always is), otherwise the size would be infinite.  Returns ``PixelDPSize(L', eps', 0.0)``.
    """
    b = _positive(b, "b")
    sensitivity = _positive(sensitivity, "sensitivity")
    pl = _probs(p_lower, "p_lower")
    pu = _probs(p_upper, "p_upper")
    if not np.all(pu > 0):
        raise ValueError(f"p_upper must be > 0 (the Laplace size would be infinite), got p_upper={p_upper!r}")
    pl, pu = np.broadcast_arrays(pl, pu)
    eps = np.where(pl > pu, 0.5 * np.log(np.where(pl > pu, pl, 1.0) / pu), 0.0)
    return PixelDPSize(size=_out(b * eps / sensitivity), eps=_out(eps), delta=_out(np.zeros_like(eps)))


# --------------------------------------------------------------------------- randomized smoothing


def smoothing_radius_gaussian(p_a_lower, sigma, sensitivity):
    """Cohen et al. Thm 1: L2 radius ``sigma Phi^{-1}(p_A) / Delta`` if p_A > 1/2, else -1.0 (abstain)."""
    sigma = _positive(sigma, "sigma")
    sensitivity = _positive(sensitivity, "sensitivity")
    p = _probs(p_a_lower, "p_a_lower")
    r = np.where(p > 0.5, sigma * _norm.ppf(np.where(p > 0.5, p, 0.75)) / sensitivity, NO_RADIUS)
    return _out(r)


def smoothing_radius_laplace(p_a_lower, b, sensitivity):
    """Teng et al. (ICLR 2020): L1 radius ``-b ln(2 (1 - p_A)) / Delta`` if p_A > 1/2, else -1.0 (abstain)."""
    b = _positive(b, "b")
    sensitivity = _positive(sensitivity, "sensitivity")
    p = _probs(p_a_lower, "p_a_lower")
    with np.errstate(divide="ignore"):
        r = np.where(p > 0.5, -b * np.log(2 * (1 - np.where(p > 0.5, p, 0.75))) / sensitivity, NO_RADIUS)
    return _out(r)


def _smoothing_radius(noise: str, p, scale, sensitivity):
    if noise == "gaussian":
        return smoothing_radius_gaussian(p, scale, sensitivity)
    return smoothing_radius_laplace(p, scale, sensitivity)


def smoothed_certify(selection_counts, estimation_counts, alpha, noise, scale, sensitivity) -> SmoothedCertificate:
    """Cohen et al.'s CERTIFY from two independent vote vectors (n0 selection draws, n estimation draws).

    c_A = argmax of the selection counts (ties -> lowest id); p_A = one-sided (1 - alpha) Clopper-Pearson
    lower bound on P(c_A) from the estimation counts; abstain if p_A <= 1/2, else the radius for
    ``noise`` ("gaussian": L2, ``scale`` = sigma; "laplace": L1, ``scale`` = b).  Valid with
    probability >= 1 - alpha because c_A is chosen from votes independent of the estimation votes.
    """
    alpha = _level(alpha, "alpha")
    noise = _noise(noise)
    scale = _positive(scale, "scale")
    sensitivity = _positive(sensitivity, "sensitivity")
    sel = _counts(selection_counts)
    est = _counts(estimation_counts)
    if sel.shape != est.shape:
        raise ValueError(f"selection and estimation counts must have the same length, got {sel.size} and {est.size}")
    c_a = _argmax_lowest(sel)
    p_a = clopper_pearson_lower(est[c_a], est.sum(), alpha)
    if p_a <= 0.5:
        return SmoothedCertificate(predict=ABSTAIN, radius=NO_RADIUS, p_a_lower=p_a)
    return SmoothedCertificate(predict=c_a, radius=_smoothing_radius(noise, p_a, scale, sensitivity), p_a_lower=p_a)


def smoothed_predict(counts, alpha) -> int:
    """Cohen et al.'s PREDICT: the top class, or -1 if the two-sided binomial test between the top two
    counts has p-value > alpha.  Returns a wrong (non-top) class with probability <= alpha."""
    alpha = _level(alpha, "alpha")
    c = _counts(counts)
    order = np.argsort(-c, kind="stable")  # ties -> lowest id first
    n_a = c[order[0]]
    n_b = c[order[1]] if c.size > 1 else 0.0
    if binomial_test_pvalue(n_a, n_b) > alpha:
        return ABSTAIN
    return int(order[0])


# --------------------------------------------------------------------------- PixelDP certify


def _pixeldp_result(k, lower, upper, noise, scale, sensitivity, eps, delta) -> PixelDPCertificate:
    p_lower = float(lower[k])
    p_upper = float(np.max(np.delete(upper, k)))
    if noise == "gaussian":
        d = pixeldp_size_gaussian(p_lower, p_upper, scale, sensitivity)
    else:
        d = pixeldp_size_laplace(p_lower, p_upper, scale, sensitivity)
    return PixelDPCertificate(
        predict=int(k),
        size=float(d.size),
        certified_at_construction=bool(pixeldp_condition(p_lower, p_upper, eps, delta)),
        p_lower=p_lower,
        p_upper=p_upper,
        size_eps=float(d.eps),
        size_delta=float(d.delta),
    )


def _check_pixeldp_args(eta, noise, scale, sensitivity, eps, delta):
    eta = _level(eta, "eta")
    noise = _noise(noise)
    scale = _positive(scale, "scale")
    sensitivity = _positive(sensitivity, "sensitivity")
    eps = _positive(eps, "eps")
    delta = float(_delta(delta))
    return eta, noise, scale, sensitivity, eps, delta


def _mean_bounds(method, means, variances, n, alpha_side):
    if method == "hoeffding":
        return hoeffding_lower(means, n, alpha_side), hoeffding_upper(means, n, alpha_side)
    return (
        empirical_bernstein_lower(means, variances, n, alpha_side),
        empirical_bernstein_upper(means, variances, n, alpha_side),
    )


def pixeldp_certify(
    counts, eta, noise, scale, sensitivity, eps, delta, method="clopper-pearson"
) -> PixelDPCertificate:
    """PixelDP Prop. 2 from the argmax vote counts of n noise draws (K = len(counts) >= 2 classes).

    k = argmax counts (ties -> lowest id); bounds at alpha = 1 - eta, Bonferroni over the K classes
    so that all hold together with probability >= eta whatever k is: ``"clopper-pearson"`` (default,
    :func:`~dp_autoencoder.stats.simultaneous_clopper_pearson`), or ``"hoeffding"`` / ``"bernstein"``
    on the vote indicators (each side at alpha / (2K)).  p_lower = lower[k], p_upper = max_{i != k}
    upper[i].  ``scale`` is sigma (Gaussian) or b (Laplace); (eps, delta) are the construction's.
    """
    eta, noise, scale, sensitivity, eps, delta = _check_pixeldp_args(eta, noise, scale, sensitivity, eps, delta)
    if method not in PIXELDP_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(PIXELDP_METHODS)}")
    c = _counts(counts)
    if c.size < 2:
        raise ValueError("counts must cover K >= 2 classes")
    alpha = 1 - eta
    K = c.size
    n = c.sum()
    if method == "clopper-pearson":
        lower, upper = simultaneous_clopper_pearson(c, alpha)
    else:
        if method == "bernstein" and n < 2:
            raise ValueError("the empirical-Bernstein bound needs n >= 2 draws")
        means = c / n
        variances = means * (1 - means) * n / max(n - 1, 1)  # unbiased variance of 0/1 indicators
        lower, upper = _mean_bounds(method, means, variances, n, alpha / (2 * K))
    return _pixeldp_result(_argmax_lowest(c), np.asarray(lower), np.asarray(upper), noise, scale, sensitivity, eps, delta)


def pixeldp_certify_from_scores(
    mean_scores, var_scores, n, eta, noise, scale, sensitivity, eps, delta, method="bernstein"
) -> PixelDPCertificate:
    """PixelDP Prop. 2 from mean softmax scores (each in [0, 1]) over n noise draws.

    k = argmax mean_scores; per class a two-sided ``"bernstein"`` (default; Maurer & Pontil, needs the
    unbiased sample variances ``var_scores``) or ``"hoeffding"`` (``var_scores`` may be None) interval, each side at
    (1 - eta) / (2K): by the union bound all 2K one-sided bounds hold together with probability >= eta.
    """
    eta, noise, scale, sensitivity, eps, delta = _check_pixeldp_args(eta, noise, scale, sensitivity, eps, delta)
    if method not in ("hoeffding", "bernstein"):
        raise ValueError(f"unknown method {method!r}; expected 'hoeffding' or 'bernstein'")
    means = _probs(mean_scores, "mean_scores")
    if means.ndim != 1 or means.size < 2:
        raise ValueError(f"mean_scores must be a 1-d vector over K >= 2 classes, got shape {means.shape}")
    if method == "bernstein":
        if var_scores is None:
            raise ValueError("method='bernstein' needs var_scores")
        variances = np.asarray(var_scores, dtype=float)
        if variances.shape != means.shape:
            raise ValueError(f"var_scores must have shape {means.shape}, got {variances.shape}")
    else:
        variances = None
    K = means.size
    lower, upper = _mean_bounds(method, means, variances, n, (1 - eta) / (2 * K))
    return _pixeldp_result(_argmax_lowest(means), np.asarray(lower), np.asarray(upper), noise, scale, sensitivity, eps, delta)
