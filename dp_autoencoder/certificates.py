"""Certificates from noisy vote counts (pure math: numbers in, numbers out).

Symbols: sigma is the Gaussian noise std and b the Laplace scale, both in the noise layer's space;
``sensitivity`` is Delta, the proven operator norm of the pre-noise map g (L2 -> L2 for Gaussian
noise, L1 -> L1 for Laplace noise), so an input change of norm r moves g(x) by at most Delta * r.

PixelDP (Lecuyer et al., IEEE S&P 2019).  Prop. 1: if the expected scores A(x) of an
(eps, delta)-PixelDP model satisfy ``E[A_k] > e^{2 eps} max_{i != k} E[A_i] + (1 + e^eps) delta``,
no attack of size <= L changes the prediction k.  Prop. 2: the same with a lower bound on E[A_k] and
upper bounds on the others that hold together with probability >= eta.  The robustness size (the largest
attack size L' for which the fixed noise is (eps', delta')-DP with a pair that satisfies Prop. 2) reads
Gaussian noise through the exact privacy profile delta(eps') of Balle & Wang (ICML 2018, Thm 8) by
default ("analytic"), or through the classical sqrt(2 ln(1.25/delta')) calibration ("classical"); see
docs/pixeldp-analytic.md for the proofs.

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
from scipy.special import log_ndtr as _log_ndtr
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
    "PIXELDP_PROFILES",
    "DEFAULT_PIXELDP_PROFILE",
    "ANALYTIC_MAX_EPS",
    "PixelDPSize",
    "PixelDPCertificate",
    "SmoothedCertificate",
    "pixeldp_condition",
    "pixeldp_max_eps",
    "pixeldp_size_gaussian",
    "gaussian_privacy_profile",
    "pixeldp_size_gaussian_analytic",
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
# How the Gaussian noise is read as (eps', delta')-DP in the PixelDP size search: "classical" is the
# calibration sigma = sqrt(2 ln(1.25/delta')) Delta L' / eps' (eps' <= 1, delta' on a grid), "analytic" the
# exact privacy profile of Balle & Wang (2018), never looser (docs/pixeldp-analytic.md).  Records and
# run.json files without a profile are classical: that is what they were computed with.
PIXELDP_PROFILES = ("classical", "analytic")
DEFAULT_PIXELDP_PROFILE = "analytic"


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
    eta-confidence bounds on E[A_k] and max_{i != k} E[A_i]; ``profile``: how Gaussian noise was read
    as (eps', delta')-DP in the size search (see :data:`PIXELDP_PROFILES`).
    """

    predict: int
    size: float
    certified_at_construction: bool
    p_lower: float
    p_upper: float
    size_eps: float
    size_delta: float
    profile: str  # the privacy profile the size was read with: "classical" or "analytic"


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


def _profile(profile) -> str:
    if profile not in PIXELDP_PROFILES:
        raise ValueError(f"unknown PixelDP profile {profile!r}; expected one of {', '.join(PIXELDP_PROFILES)}")
    return profile


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


# --------------------------------------------------------------------------- PixelDP, analytic profile

# Rounding allowance, in ulps of the magnitudes involved, that keeps every computed delta(eps) above the
# exact one (scipy's log_ndtr is accurate to ~2 ulps of max(|log Phi|, 1); tests check against mpmath).
_ROUNDING_ULPS = 8 * np.finfo(float).eps
# r = D / sigma is searched on the coarse grid e^-40, e^-38, ..., e^10 and then refined inside the last
# certified step: below e^-40, delta(eps) < 2e-18 for any eps (such a size certifies nothing and is
# reported as 0); at e^10, delta(eps) = 1 for every eps <= ANALYTIC_MAX_EPS.
_LOG_RATIO_GRID = np.arange(-40.0, 10.0 + 1e-9, 2.0)
_NEWTON_STEPS = 8  # safeguarded Newton steps on log delta against log r, inside a bracket of width 2
_EPS_GRID_POINTS = (65, 33)  # eps' grid of each level: [0, eps_top], then +-1 step around the best
ANALYTIC_MAX_EPS = 10.0  # eps' > 10 would need p_upper < e^-20 p_lower; no finite sample gets there


def _log_gaussian_delta(eps, ratio):
    """log delta(eps) of the Gaussian mechanism with L2 sensitivity / sigma = ``ratio``, rounded upwards.

    delta = Phi(a) - e^eps Phi(b) with a = r/2 - eps/r, b = -r/2 - eps/r, written as
    log Phi(a) + log(1 - e^x), x = eps + log Phi(b) - log Phi(a) < 0, so that neither e^eps Phi(b) nor the
    difference over- or underflows.  x is lowered and the result raised by a rounding allowance, so the
    value returned is never below the exact one; where the allowance swallows x the bound delta <= Phi(a)
    is returned instead.
    """
    eps = np.asarray(eps, dtype=float)
    r = np.asarray(ratio, dtype=float)
    log_phi_a = _log_ndtr(r / 2 - eps / r)
    log_phi_b = _log_ndtr(-r / 2 - eps / r)
    allowance = _ROUNDING_ULPS * (np.abs(log_phi_a) + np.abs(log_phi_b) + eps + 1)
    x = eps + log_phi_b - log_phi_a - allowance
    log_one_minus = np.where(x < 0, np.log(-np.expm1(np.minimum(x, -1e-300))), 0.0)
    return log_phi_a + log_one_minus + allowance


def gaussian_privacy_profile(eps, l2_sensitivity, sigma):
    """delta(eps) for which N(0, sigma^2 I) noise on a map of L2 sensitivity D is (eps, delta)-DP (vectorized).

    Balle & Wang (ICML 2018), Thm 8: the Gaussian mechanism is (eps, delta)-DP if and only if
    ``delta >= Phi(D/(2 sigma) - eps sigma/D) - e^eps Phi(-D/(2 sigma) - eps sigma/D)``, for every eps >= 0
    (the right side is the hockey-stick divergence between N(0, sigma^2) and N(D, sigma^2)).  Computed in
    logs, rounded upwards (see :func:`_log_gaussian_delta`).
    """
    sigma = _positive(sigma, "sigma")
    d = np.asarray(l2_sensitivity, dtype=float)
    if not np.all(np.isfinite(d) & (d > 0)):
        raise ValueError(f"l2_sensitivity must be finite and > 0, got {l2_sensitivity!r}")
    e = np.asarray(eps, dtype=float)
    if not np.all(np.isfinite(e) & (e >= 0)):
        raise ValueError(f"eps must be finite and >= 0, got eps={eps!r}")
    return _out(np.minimum(np.exp(_log_gaussian_delta(e, d / sigma)), 1.0))


def _largest_ratio(log_budget, eps):
    """Per entry, the largest r = D / sigma found with log delta_r(eps) < log_budget, and that log delta; r = 0
    where even r = e^-40 fails.

    delta_r(eps) is strictly increasing in r (d delta / dr = phi(a) > 0, docs/pixeldp-analytic.md), so the
    certified r form an interval (0, r*): the coarse grid brackets r* within a factor e^2, safeguarded
    Newton steps (bisection whenever a step leaves the bracket) close in on it, and a last point just
    below the final iterate is tried.  Only points where the test was evaluated and held are returned,
    so the answer never depends on the root finder being right, only on how close it gets.
    """
    log_budget = np.asarray(log_budget, dtype=float)
    eps = np.broadcast_to(np.asarray(eps, dtype=float), log_budget.shape)
    coarse = _log_gaussian_delta(eps[..., None], np.exp(_LOG_RATIO_GRID)) < log_budget[..., None]
    feasible = coarse.any(axis=-1)
    k = _LOG_RATIO_GRID.size - 1 - np.argmax(coarse[..., ::-1], axis=-1)  # the last certified grid point
    lo = _LOG_RATIO_GRID[k]
    hi = np.where(k + 1 < _LOG_RATIO_GRID.size, _LOG_RATIO_GRID[np.minimum(k + 1, _LOG_RATIO_GRID.size - 1)], lo)
    log_delta_lo = _log_gaussian_delta(eps, np.exp(lo))
    t = lo  # from the certified side (in tests Newton then stays there and converges in a few steps)
    for _ in range(_NEWTON_STEPS):
        r = np.exp(t)
        log_delta = _log_gaussian_delta(eps, r)
        ok = log_delta < log_budget
        lo, log_delta_lo = np.where(ok, t, lo), np.where(ok, log_delta, log_delta_lo)
        hi = np.where(ok, hi, t)
        a = r / 2 - eps / r
        slope = np.exp(t - 0.5 * a * a - 0.5 * np.log(2 * np.pi) - log_delta)  # d log delta / d log r
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            newton = t - (log_delta - log_budget) / slope
        inside = np.isfinite(newton) & (newton > lo) & (newton < hi)
        t = np.where(inside, newton, 0.5 * (lo + hi))
    # the iterates may approach r* from above only: try a point just below the last one
    t = np.maximum(t - 1e-9, lo)
    log_delta = _log_gaussian_delta(eps, np.exp(t))
    ok = log_delta < log_budget
    lo, log_delta_lo = np.where(ok, t, lo), np.where(ok, log_delta, log_delta_lo)
    return np.where(feasible, np.exp(lo), 0.0), log_delta_lo


def pixeldp_size_gaussian_analytic(p_lower, p_upper, sigma, sensitivity, max_eps=ANALYTIC_MAX_EPS) -> PixelDPSize:
    """Robustness size L' under Gaussian noise read through its exact privacy profile, with its (eps', delta').

    N(0, sigma^2) noise on g (sensitivity Delta) is (eps', delta(eps'))-DP for input changes of L2 size L',
    with delta the profile of :func:`gaussian_privacy_profile` at D = Delta L', for every eps' >= 0 at
    once (Balle & Wang, Thm 8).  So L' is certified if Prop. 2 holds at some eps':
    ``p_lower > e^{2 eps'} p_upper + (1 + e^eps') delta_{Delta L'}(eps')``.  For a fixed eps' the
    right side increases strictly with L', so the certified L' form an interval and the size is its
    sup; for each eps' on a grid over [0, min(ln(p_lower / p_upper) / 2, max_eps)) (beyond, the budget
    p_lower - e^{2 eps'} p_upper is <= 0) the largest L' is found by a bracketed root search, and the grid
    is refined once around the best eps' (the eps' of the classical solution is always among the candidates,
    so the result is never below :func:`pixeldp_size_gaussian`'s).  Searching over eps' costs no
    confidence: the condition is a deterministic function of (p_lower, p_upper), so whenever the
    eta-bounds hold every (L', eps') it accepts is true together (docs/pixeldp-analytic.md).

    The returned point satisfies the strict condition with delta rounded upwards; ``delta`` is that
    delta(eps') at ``size``.  size = eps = delta = 0.0 when nothing certifies.  Vectorized over p_lower,
    p_upper.
    """
    sigma = _positive(sigma, "sigma")
    sensitivity = _positive(sensitivity, "sensitivity")
    max_eps = _positive(max_eps, "max_eps")
    pl = _probs(p_lower, "p_lower")
    pu = _probs(p_upper, "p_upper")
    pl, pu = np.broadcast_arrays(pl, pu)
    certifiable = pl > pu
    with np.errstate(divide="ignore"):  # p_upper = 0: ln(p_lower / p_upper) = inf, capped by max_eps
        log_ratio = np.log(np.where(certifiable, pl, 1.0)) - np.log(np.where(certifiable, pu, 1.0))
    eps_top = np.where(certifiable, np.minimum(0.5 * log_ratio, max_eps), 0.0)
    classical_eps = np.minimum(pixeldp_size_gaussian(pl, pu, sigma, sensitivity).eps, max_eps)

    def evaluate(eps):  # eps: (..., G) -> (ratio, log delta) of the largest certified L' at each eps'
        with np.errstate(divide="ignore", invalid="ignore"):
            budget = pl[..., None] - np.exp(2 * eps) * pu[..., None]
            log_budget = np.where(budget > 0, np.log(np.where(budget > 0, budget, 1.0)) - np.logaddexp(0.0, eps),
                                  -np.inf)
        return _largest_ratio(log_budget, eps)

    eps = np.concatenate([eps_top[..., None] * np.linspace(0.0, 1.0, _EPS_GRID_POINTS[0]),
                          np.asarray(classical_eps, dtype=float)[..., None]], axis=-1)
    step = eps_top / (_EPS_GRID_POINTS[0] - 1)
    best_ratio = np.zeros(pl.shape)
    best_eps = np.zeros(pl.shape)
    best_log_delta = np.full(pl.shape, -np.inf)
    for level, points in enumerate(_EPS_GRID_POINTS):
        if level:  # a finer grid over [best - step, best + step], inside [0, eps_top]
            left = np.clip(best_eps - step, 0.0, eps_top)
            right = np.clip(best_eps + step, 0.0, eps_top)
            eps = left[..., None] + (right - left)[..., None] * np.linspace(0.0, 1.0, points)
            step = (right - left) / (points - 1)
        ratio, log_delta = evaluate(eps)
        j = np.argmax(ratio, axis=-1)[..., None]
        ratio_j = np.take_along_axis(ratio, j, axis=-1)[..., 0]
        better = ratio_j > best_ratio
        best_ratio = np.where(better, ratio_j, best_ratio)
        best_eps = np.where(better, np.take_along_axis(eps, j, axis=-1)[..., 0], best_eps)
        best_log_delta = np.where(better, np.take_along_axis(log_delta, j, axis=-1)[..., 0], best_log_delta)
    certified = best_ratio > 0
    return PixelDPSize(
        size=_out(np.where(certified, best_ratio * sigma / sensitivity, 0.0)),
        eps=_out(np.where(certified, best_eps, 0.0)),
        delta=_out(np.where(certified, np.minimum(np.exp(best_log_delta), 1.0), 0.0)),
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


def _pixeldp_result(k, lower, upper, noise, scale, sensitivity, eps, delta, profile) -> PixelDPCertificate:
    p_lower = float(lower[k])
    p_upper = float(np.max(np.delete(upper, k)))
    if noise == "gaussian" and profile == "analytic":
        d = pixeldp_size_gaussian_analytic(p_lower, p_upper, scale, sensitivity)
    elif noise == "gaussian":
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
        profile=profile,
    )


def _check_pixeldp_args(eta, noise, scale, sensitivity, eps, delta, profile):
    _profile(profile)
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
    counts, eta, noise, scale, sensitivity, eps, delta, method="clopper-pearson", profile=DEFAULT_PIXELDP_PROFILE
) -> PixelDPCertificate:
    """PixelDP Prop. 2 from the argmax vote counts of n noise draws (K = len(counts) >= 2 classes).

    k = argmax counts (ties -> lowest id); bounds at alpha = 1 - eta, Bonferroni over the K classes
    so that all hold together with probability >= eta whatever k is: ``"clopper-pearson"`` (default,
    :func:`~dp_autoencoder.stats.simultaneous_clopper_pearson`), or ``"hoeffding"`` / ``"bernstein"``
    on the vote indicators (each side at alpha / (2K)).  p_lower = lower[k], p_upper = max_{i != k}
    upper[i].  ``scale`` is sigma (Gaussian) or b (Laplace); (eps, delta) are the construction's.
    ``profile`` picks how Gaussian noise is read in the size search: ``"analytic"`` (default,
    :func:`pixeldp_size_gaussian_analytic`) or ``"classical"`` (:func:`pixeldp_size_gaussian`); it does
    not change Laplace sizes nor ``certified_at_construction``.
    """
    eta, noise, scale, sensitivity, eps, delta = _check_pixeldp_args(eta, noise, scale, sensitivity, eps, delta, profile)
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
    return _pixeldp_result(_argmax_lowest(c), np.asarray(lower), np.asarray(upper), noise, scale, sensitivity, eps, delta,
                           profile)


def pixeldp_certify_from_scores(
    mean_scores, var_scores, n, eta, noise, scale, sensitivity, eps, delta, method="bernstein",
    profile=DEFAULT_PIXELDP_PROFILE,
) -> PixelDPCertificate:
    """PixelDP Prop. 2 from mean softmax scores (each in [0, 1]) over n noise draws.

    k = argmax mean_scores; per class a two-sided ``"bernstein"`` (default; Maurer & Pontil, needs the
    unbiased sample variances ``var_scores``) or ``"hoeffding"`` (``var_scores`` may be None) interval, each side at
    (1 - eta) / (2K): by the union bound all 2K one-sided bounds hold together with probability >= eta.
    ``profile`` as in :func:`pixeldp_certify`.
    """
    eta, noise, scale, sensitivity, eps, delta = _check_pixeldp_args(eta, noise, scale, sensitivity, eps, delta, profile)
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
    return _pixeldp_result(_argmax_lowest(means), np.asarray(lower), np.asarray(upper), noise, scale, sensitivity, eps, delta,
                           profile)
