"""dp_autoencoder.stats: closed forms, exact coverage, and simulated failure rates of every bound."""

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from dp_autoencoder import stats as S

ALPHA = 0.05
TRIALS = 20_000


def allowed(alpha, trials):
    """alpha plus 3 standard errors of a Bernoulli(alpha) rate estimated from `trials` draws."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def report(name, rate, trials):
    print(f"[failure rate] {name:60s} {rate:.4f}  (alpha={ALPHA}, trials={trials})")


# --- closed forms and known values ------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 100, 300])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.3])
def test_clopper_pearson_extreme_counts(n, alpha):
    assert S.clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert S.clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-12)
    assert S.clopper_pearson_lower(0, n, alpha) == 0.0
    assert S.clopper_pearson_upper(n, n, alpha) == 1.0


def test_clopper_pearson_defining_tail_equation_and_symmetry():
    n, alpha = 300, 0.05
    k = np.arange(1, n)
    lo = S.clopper_pearson_lower(k, n, alpha)
    up = S.clopper_pearson_upper(k, n, alpha)
    # P_{p_lower}(K >= k) = alpha and P_{p_upper}(K <= k) = alpha: the bounds are the exact tail inversions.
    np.testing.assert_allclose(binom.sf(k - 1, n, lo), alpha, rtol=1e-8)
    np.testing.assert_allclose(binom.cdf(k, n, up), alpha, rtol=1e-8)
    np.testing.assert_allclose(lo, 1 - S.clopper_pearson_upper(n - k, n, alpha), atol=1e-12)
    assert np.all(np.diff(lo) > 0) and np.all(lo < k / n) and np.all(up > k / n)


def test_interval_is_two_one_sided_bounds_at_half_alpha():
    lo, up = S.clopper_pearson_interval(37, 120, 0.1)
    assert lo == S.clopper_pearson_lower(37, 120, 0.05) and up == S.clopper_pearson_upper(37, 120, 0.05)
    lo, up = S.clopper_pearson_interval(150, 300, 0.05)
    assert lo < 0.5 < up and up - 0.5 == pytest.approx(0.5 - lo)


def test_scalars_in_floats_out_and_arrays_broadcast():
    assert isinstance(S.clopper_pearson_lower(3, 10, 0.05), float)
    assert isinstance(S.hoeffding_upper(0.3, 10, 0.05), float)
    assert isinstance(S.binomial_test_pvalue(3, 4), float)
    out = S.clopper_pearson_lower(np.array([[1], [5]]), 10, np.array([0.01, 0.05, 0.1]))
    assert out.shape == (2, 3)
    assert out[1, 2] == S.clopper_pearson_lower(5, 10, 0.1)


def test_simultaneous_clopper_pearson_is_bonferroni_over_k():
    counts = np.array([5, 250, 30, 15])
    lo, up = S.simultaneous_clopper_pearson(counts, 0.05)
    elo, eup = S.clopper_pearson_interval(counts, 300, 0.05 / 4)
    np.testing.assert_array_equal(lo, elo)
    np.testing.assert_array_equal(up, eup)
    batch = np.stack([counts, counts[::-1]])
    blo, bup = S.simultaneous_clopper_pearson(batch, 0.05)
    np.testing.assert_array_equal(blo[1], lo[::-1])
    np.testing.assert_array_equal(bup[0], up)


def test_hoeffding_and_bernstein_closed_forms_and_clipping():
    w = math.sqrt(math.log(1 / 0.05) / (2 * 200))
    assert S.hoeffding_lower(0.5, 200, 0.05) == pytest.approx(0.5 - w)
    assert S.hoeffding_upper(0.5, 200, 0.05) == pytest.approx(0.5 + w)
    assert S.hoeffding_lower(0.01, 10, 0.05) == 0.0 and S.hoeffding_upper(0.99, 10, 0.05) == 1.0
    L = math.log(2 / 0.05)
    wb = math.sqrt(2 * 0.04 * L / 200) + 7 * L / (3 * 199)
    assert S.empirical_bernstein_lower(0.5, 0.04, 200, 0.05) == pytest.approx(0.5 - wb)
    assert S.empirical_bernstein_upper(0.5, 0.04, 200, 0.05) == pytest.approx(0.5 + wb)
    # small variance: Bernstein beats Hoeffding at large n
    assert S.empirical_bernstein_lower(0.9, 0.001, 10_000, 0.05) > S.hoeffding_lower(0.9, 10_000, 0.05)


def test_binomial_test_pvalue_known_values():
    assert S.binomial_test_pvalue(60, 40) == pytest.approx(binomtest(60, 100, 0.5).pvalue)
    assert S.binomial_test_pvalue(60, 40) == pytest.approx(S.binomial_test_pvalue(40, 60))
    assert S.binomial_test_pvalue(10, 0) == pytest.approx(2 * 0.5**10)
    assert S.binomial_test_pvalue(0, 0) == 1.0
    np.testing.assert_allclose(S.binomial_test_pvalue([60, 10], [40, 0]), [binomtest(60, 100).pvalue, 2 * 0.5**10])


# --- exact coverage (no simulation error) -----------------------------------------------
@pytest.mark.parametrize("n", [100, 300])
def test_clopper_pearson_exact_failure_probability(n):
    """P_p(lower > p) and P_p(upper < p), summed exactly over the binomial law on a fine grid of p:
    never above alpha, and close to alpha somewhere (so the bound is not needlessly conservative)."""
    k = np.arange(n + 1)
    lo = S.clopper_pearson_lower(k, n, ALPHA)
    up = S.clopper_pearson_upper(k, n, ALPHA)
    p = np.linspace(1e-4, 1 - 1e-4, 5000)
    first_bad = np.searchsorted(lo, p, side="right")  # smallest k with lower(k) > p
    fail_lo = binom.sf(first_bad - 1, n, p)
    last_bad = np.searchsorted(up, p, side="left") - 1  # largest k with upper(k) < p
    fail_up = binom.cdf(last_bad, n, p)
    assert fail_lo.max() <= ALPHA + 1e-12 and fail_up.max() <= ALPHA + 1e-12
    assert fail_lo.max() > 0.95 * ALPHA and fail_up.max() > 0.95 * ALPHA


# --- simulation: each bound fails no more often than alpha ------------------------------
@pytest.mark.parametrize("p,n", [(0.3, 100), (0.3, 300), (0.5, 100), (0.9, 300), (0.02, 300)])
def test_clopper_pearson_simulated_failure_rates(p, n):
    rng = np.random.default_rng(1000 + n + int(100 * p))
    k = rng.binomial(n, p, TRIALS)
    lo, up = S.clopper_pearson_interval(k, n, ALPHA)
    rates = {
        "lower": np.mean(S.clopper_pearson_lower(k, n, ALPHA) > p),
        "upper": np.mean(S.clopper_pearson_upper(k, n, ALPHA) < p),
        "two-sided": np.mean((lo > p) | (up < p)),
    }
    for name, rate in rates.items():
        report(f"Clopper-Pearson {name}, p={p}, n={n}", rate, TRIALS)
    assert max(rates.values()) <= allowed(ALPHA, TRIALS), rates
    if (p, n) == (0.3, 300):
        # exact failure probability here is 0.0458: a bound at the wrong level (e.g. alpha / 10) fails this
        assert rates["lower"] > ALPHA / 10


@pytest.mark.parametrize(
    "probs,n",
    [
        ([0.55, 0.25, 0.1, 0.05, 0.05], 300),
        ([0.9, 0.05, 0.03, 0.02], 100),
        ([0.1] * 10, 300),
        ([0.5, 0.5], 100),
    ],
)
def test_simultaneous_clopper_pearson_simulated_failure_rate(probs, n):
    rng = np.random.default_rng(7 + n + len(probs))
    probs = np.asarray(probs)
    counts = rng.multinomial(n, probs, TRIALS)
    lo, up = S.simultaneous_clopper_pearson(counts, ALPHA)
    rate = np.mean(np.any((lo > probs) | (up < probs), axis=1))
    report(f"simultaneous CP (any class misses), K={len(probs)}, n={n}", rate, TRIALS)
    assert rate <= allowed(ALPHA, TRIALS)


@pytest.mark.parametrize("a,b,n", [(2.0, 5.0, 100), (0.3, 0.3, 100), (50.0, 2.0, 300)])
def test_hoeffding_and_bernstein_simulated_failure_rates(a, b, n):
    rng = np.random.default_rng(int(10 * a + b + n))
    trials = 10_000
    x = rng.beta(a, b, (trials, n))
    true = a / (a + b)
    mean, var = x.mean(1), x.var(1, ddof=1)
    rates = {
        "Hoeffding lower": np.mean(S.hoeffding_lower(mean, n, ALPHA) > true),
        "Hoeffding upper": np.mean(S.hoeffding_upper(mean, n, ALPHA) < true),
        "empirical Bernstein lower": np.mean(S.empirical_bernstein_lower(mean, var, n, ALPHA) > true),
        "empirical Bernstein upper": np.mean(S.empirical_bernstein_upper(mean, var, n, ALPHA) < true),
    }
    for name, rate in rates.items():
        report(f"{name}, Beta({a},{b}) samples, n={n}", rate, trials)
    assert max(rates.values()) <= allowed(ALPHA, trials), rates


def test_hoeffding_and_bernstein_at_the_worst_case_bernoulli_half():
    """Bernoulli(1/2) is Hoeffding's worst case: its failure rate is the binomial tail beyond the width."""
    rng = np.random.default_rng(5)
    n, true = 100, 0.5
    k = rng.binomial(n, true, TRIALS)
    mean = k / n
    var = mean * (1 - mean) * n / (n - 1)  # unbiased sample variance of 0/1 samples
    hl = np.mean(S.hoeffding_lower(mean, n, ALPHA) > true)
    bl = np.mean(S.empirical_bernstein_lower(mean, var, n, ALPHA) > true)
    report("Hoeffding lower, Bernoulli(1/2) samples, n=100", hl, TRIALS)
    report("empirical Bernstein lower, Bernoulli(1/2) samples, n=100", bl, TRIALS)
    exact = binom.sf(math.floor(n * (true + math.sqrt(math.log(1 / ALPHA) / (2 * n)))), n, true)
    assert hl <= allowed(ALPHA, TRIALS) and bl <= allowed(ALPHA, TRIALS)
    assert abs(hl - exact) <= 3 * math.sqrt(exact * (1 - exact) / TRIALS) + 1e-4


def test_binomial_test_rejects_a_true_null_at_most_alpha():
    rng = np.random.default_rng(11)
    trials, n = 10_000, 100
    n_a = rng.binomial(n, 0.5, trials)
    rate = np.mean(S.binomial_test_pvalue(n_a, n - n_a) <= ALPHA)
    report("binomial test rejects H0: p = 1/2 when true, n=100", rate, trials)
    assert rate <= allowed(ALPHA, trials)


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: S.clopper_pearson_lower(5, 10, 0.0), "alpha"),
        (lambda: S.clopper_pearson_lower(5, 10, 1.0), "alpha"),
        (lambda: S.clopper_pearson_upper(5, 10, float("nan")), "alpha"),
        (lambda: S.clopper_pearson_lower(11, 10, 0.05), "k"),
        (lambda: S.clopper_pearson_lower(-1, 10, 0.05), "k"),
        (lambda: S.clopper_pearson_lower(2.5, 10, 0.05), "k"),
        (lambda: S.clopper_pearson_upper(0, 0, 0.05), "n"),
        (lambda: S.clopper_pearson_interval(3, 10, 1.5), "alpha"),
        (lambda: S.simultaneous_clopper_pearson([0, 0, 0], 0.05), "sum"),
        (lambda: S.simultaneous_clopper_pearson([3, -1], 0.05), "counts"),
        (lambda: S.simultaneous_clopper_pearson([3, 4], 0.0), "alpha"),
        (lambda: S.hoeffding_lower(1.2, 10, 0.05), "mean"),
        (lambda: S.hoeffding_upper(0.5, 0, 0.05), "n"),
        (lambda: S.empirical_bernstein_lower(0.5, 0.1, 1, 0.05), "n"),
        (lambda: S.empirical_bernstein_upper(0.5, -0.1, 10, 0.05), "var"),
        (lambda: S.empirical_bernstein_upper(0.5, 0.1, 10, 1.0), "alpha"),
        (lambda: S.binomial_test_pvalue(-1, 3), "n_a"),
    ],
)
def test_bad_input_is_refused_with_a_named_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
