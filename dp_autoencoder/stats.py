"""Confidence bounds on probabilities and means (numbers in, numbers out).

All bounds are vectorized over numpy arrays (broadcasting) and return a Python
``float`` when every input is a scalar.  Every function validates its inputs and
raises ``ValueError`` naming the bad value.

* Clopper-Pearson (exact binomial) bounds on a probability p from k successes in n trials.
* Simultaneous Clopper-Pearson bounds on the K class probabilities of a vote vector
  (Bonferroni), as used by PixelDP's Prop. 2.
* Hoeffding and empirical-Bernstein (Maurer & Pontil 2009) bounds on the mean of
  [0, 1]-valued samples, e.g. a class's softmax score under noise.
* The two-sided binomial test of Cohen et al.'s PREDICT.
"""

from __future__ import annotations

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

__all__ = [
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "clopper_pearson_interval",
    "simultaneous_clopper_pearson",
    "hoeffding_lower",
    "hoeffding_upper",
    "empirical_bernstein_lower",
    "empirical_bernstein_upper",
    "binomial_test_pvalue",
]


# --------------------------------------------------------------------------- validation


def _out(x):
    """Python float for 0-d results, the array otherwise."""
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


def _check_alpha(alpha, name: str = "alpha") -> np.ndarray:
    a = np.asarray(alpha, dtype=float)
    if not np.all((a > 0) & (a < 1)):  # also rejects nan
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")
    return a


def _check_counts(k, n):
    """k, n integer-valued, n >= 1, 0 <= k <= n; returns float arrays."""
    k_arr = np.asarray(k, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if not np.all(np.isfinite(n_arr) & (n_arr >= 1) & (n_arr == np.floor(n_arr))):
        raise ValueError(f"n must be an integer >= 1, got n={n!r}")
    if not np.all(np.isfinite(k_arr) & (k_arr == np.floor(k_arr))):
        raise ValueError(f"k must be an integer count, got k={k!r}")
    if not np.all((k_arr >= 0) & (k_arr <= n_arr)):
        raise ValueError(f"k must satisfy 0 <= k <= n, got k={k!r}, n={n!r}")
    return k_arr, n_arr


def _check_unit(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"{name} must lie in [0, 1], got {name}={x!r}")
    return a


def _check_n(n, minimum: int = 1) -> np.ndarray:
    a = np.asarray(n, dtype=float)
    if not np.all(np.isfinite(a) & (a >= minimum) & (a == np.floor(a))):
        raise ValueError(f"n must be an integer >= {minimum}, got n={n!r}")
    return a


# --------------------------------------------------------------------------- Clopper-Pearson


def clopper_pearson_lower(k, n, alpha):
    """One-sided (1 - alpha) lower bound on a binomial p from k successes in n trials.

    ``Beta.ppf(alpha; k, n - k + 1)`` (computed as ``scipy.special.betaincinv``), and 0 when k = 0.  Valid because
    P_p(K >= k) = Beta.cdf(p; k, n - k + 1), so p_lower(K) > p only when the observed
    K lies in the upper tail of Binomial(n, p) of mass <= alpha.
    """
    a = _check_alpha(alpha)
    k, n = _check_counts(k, n)
    k, n, a = np.broadcast_arrays(k, n, a)
    safe_k = np.where(k > 0, k, 1.0)
    lo = np.where(k > 0, _sp.betaincinv(safe_k, n - k + 1, a), 0.0)
    return _out(lo)


def clopper_pearson_upper(k, n, alpha):
    """One-sided (1 - alpha) upper bound on a binomial p: ``Beta.ppf(1 - alpha; k + 1, n - k)``, 1 when k = n.

    The mirror image of :func:`clopper_pearson_lower` (apply it to n - k failures).
    """
    a = _check_alpha(alpha)
    k, n = _check_counts(k, n)
    k, n, a = np.broadcast_arrays(k, n, a)
    safe_b = np.where(k < n, n - k, 1.0)
    up = np.where(k < n, _sp.betaincinv(k + 1, safe_b, 1 - a), 1.0)
    return _out(up)


def clopper_pearson_interval(k, n, alpha):
    """Two-sided (1 - alpha) interval ``(lower, upper)``: each one-sided bound at level alpha / 2.

    Valid by the union bound over the two one-sided failures.
    """
    a = _check_alpha(alpha)
    return clopper_pearson_lower(k, n, a / 2), clopper_pearson_upper(k, n, a / 2)


def simultaneous_clopper_pearson(counts, alpha):
    """Simultaneous (1 - alpha) intervals for the K class probabilities of a vote vector.

    ``counts`` has shape (..., K) with n = counts.sum(-1) >= 1.  Each class gets a two-sided
    Clopper-Pearson interval at level alpha / K (Bonferroni), so by the union bound all K
    intervals contain their true p_i at once with probability >= 1 - alpha, whatever class is
    picked afterwards from the same votes.  Returns ``(lower, upper)``, arrays shaped like counts.
    """
    a = _check_alpha(alpha)
    if a.ndim != 0:
        raise ValueError(f"alpha must be a scalar, got {alpha!r}")
    c = np.asarray(counts, dtype=float)
    if c.ndim == 0 or c.shape[-1] < 1:
        raise ValueError(f"counts must be a vector of K >= 1 class counts, got {counts!r}")
    if not np.all(np.isfinite(c) & (c >= 0) & (c == np.floor(c))):
        raise ValueError(f"counts must be non-negative integers, got {counts!r}")
    n = c.sum(axis=-1, keepdims=True)
    if not np.all(n >= 1):
        raise ValueError(f"counts must sum to n >= 1, got {counts!r}")
    K = c.shape[-1]
    lo, up = clopper_pearson_interval(c, np.broadcast_to(n, c.shape), float(a) / K)
    return np.asarray(lo), np.asarray(up)


# --------------------------------------------------------------------------- bounds on means


def hoeffding_lower(mean, n, alpha):
    """One-sided (1 - alpha) lower bound on E[X] for n i.i.d. X in [0, 1]: ``mean - sqrt(ln(1/alpha) / (2 n))``.

    Hoeffding's inequality P(mean - E[X] >= t) <= exp(-2 n t^2); clipped to [0, 1].
    """
    a = _check_alpha(alpha)
    m = _check_unit(mean, "mean")
    n = _check_n(n)
    return _out(np.clip(m - np.sqrt(np.log(1 / a) / (2 * n)), 0.0, 1.0))


def hoeffding_upper(mean, n, alpha):
    """One-sided (1 - alpha) upper bound on E[X], X in [0, 1]: ``mean + sqrt(ln(1/alpha) / (2 n))``, clipped."""
    a = _check_alpha(alpha)
    m = _check_unit(mean, "mean")
    n = _check_n(n)
    return _out(np.clip(m + np.sqrt(np.log(1 / a) / (2 * n)), 0.0, 1.0))


def _bernstein_width(var, n, alpha):
    a = _check_alpha(alpha)
    v = np.asarray(var, dtype=float)
    if not np.all(np.isfinite(v) & (v >= 0)):
        raise ValueError(f"var must be a finite number >= 0, got var={var!r}")
    n = _check_n(n, minimum=2)
    log_term = np.log(2 / a)
    return np.sqrt(2 * v * log_term / n) + 7 * log_term / (3 * (n - 1))


def empirical_bernstein_lower(mean, var, n, alpha):
    """One-sided (1 - alpha) empirical-Bernstein lower bound on E[X], X in [0, 1], n >= 2.

    Maurer & Pontil (2009), "Empirical Bernstein Bounds and Sample Variance Penalization",
    Theorem 4: for i.i.d. X_1..X_n in [0, 1], n >= 2, with probability >= 1 - alpha,
    ``E[X] <= mean + sqrt(2 V_n ln(2/alpha) / n) + 7 ln(2/alpha) / (3 (n - 1))``, where V_n is the
    unbiased sample variance (1/(n-1)) sum (X_i - mean)^2.  Applied to 1 - X (same V_n) it gives
    this lower bound ``mean - sqrt(2 var ln(2/alpha) / n) - 7 ln(2/alpha) / (3 (n - 1))``; clipped to [0, 1].
    """
    m = _check_unit(mean, "mean")
    return _out(np.clip(m - _bernstein_width(var, n, alpha), 0.0, 1.0))


def empirical_bernstein_upper(mean, var, n, alpha):
    """One-sided (1 - alpha) upper bound of Maurer & Pontil (2009), Thm 4 (see :func:`empirical_bernstein_lower`)."""
    m = _check_unit(mean, "mean")
    return _out(np.clip(m + _bernstein_width(var, n, alpha), 0.0, 1.0))


# --------------------------------------------------------------------------- binomial test


def _binomtest_scalar(n_a: float, n_b: float) -> float:
    total = int(n_a) + int(n_b)
    if total == 0:
        return 1.0  # no votes, no evidence
    return float(_st.binomtest(int(n_a), total, 0.5, alternative="two-sided").pvalue)


def binomial_test_pvalue(n_a, n_b):
    """Two-sided p-value of H0: n_a ~ Binomial(n_a + n_b, 1/2) (``scipy.stats.binomtest``).

    Used by Cohen et al.'s PREDICT on the top two counts; 1.0 when n_a + n_b = 0.
    """
    a = np.asarray(n_a, dtype=float)
    b = np.asarray(n_b, dtype=float)
    for name, arr, raw in (("n_a", a, n_a), ("n_b", b, n_b)):
        if not np.all(np.isfinite(arr) & (arr >= 0) & (arr == np.floor(arr))):
            raise ValueError(f"{name} must be a non-negative integer count, got {name}={raw!r}")
    a, b = np.broadcast_arrays(a, b)
    if a.ndim == 0:
        return _binomtest_scalar(a, b)
    # binomtest is scalar: evaluate each distinct (n_a, n_b) pair once
    pairs, inverse = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0, return_inverse=True)
    values = np.array([_binomtest_scalar(x, y) for x, y in pairs])
    return values[inverse.ravel()].reshape(a.shape)
