"""Confidence bounds and certificates: closed forms, known values, and simulated failure rates."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from dp_autoencoder import certificates as C
from dp_autoencoder import stats as S

TRIALS = 10_000
ALPHA = 0.05


def allowed(alpha, trials=TRIALS):
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


# --- closed forms -----------------------------------------------------------------------
def test_clopper_pearson_closed_forms():
    n, a = 300, 0.01
    assert S.clopper_pearson_lower(n, n, a) == pytest.approx(a ** (1 / n))
    assert S.clopper_pearson_upper(0, n, a) == pytest.approx(1 - a ** (1 / n))
    assert S.clopper_pearson_lower(0, n, a) == 0 and S.clopper_pearson_upper(n, n, a) == 1
    lo, up = S.clopper_pearson_interval(150, 300, 0.05)
    assert lo < 0.5 < up and up - 0.5 == pytest.approx(0.5 - lo)


def test_radius_cap_of_cohen_at_n_100000():
    p_a = S.clopper_pearson_lower(100_000, 100_000, 0.001)
    assert C.smoothing_radius_gaussian(p_a, 1.0, 1.0) == pytest.approx(3.81, abs=0.01)
    assert C.smoothing_radius_gaussian(p_a, 0.5, 2.0) == pytest.approx(3.81 / 4, abs=0.01)


def test_smoothing_radii_closed_forms_and_abstention():
    assert C.smoothing_radius_gaussian(0.9, 0.25, 1.0) == pytest.approx(0.25 * norm.ppf(0.9))
    assert C.smoothing_radius_laplace(0.9, 0.3, 1.5) == pytest.approx(-0.3 * math.log(0.2) / 1.5)
    assert C.smoothing_radius_gaussian(0.5, 1.0, 1.0) == C.NO_RADIUS
    assert C.smoothing_radius_laplace(0.3, 1.0, 1.0) == C.NO_RADIUS


def test_pixeldp_max_eps_is_the_boundary_of_the_condition():
    for pl, pu, d in [(0.9, 0.05, 0.01), (0.7, 0.2, 0.0), (0.6, 0.0, 0.05), (0.99, 0.001, 1e-5)]:
        eps = C.pixeldp_max_eps(pl, pu, d)
        assert eps > 0
        assert C.pixeldp_condition(pl, pu, eps * 0.999, d)
        assert not C.pixeldp_condition(pl, pu, eps * 1.001, d)
    assert C.pixeldp_max_eps(0.4, 0.5, 0.05) == 0


def test_pixeldp_size_at_the_paper_constants():
    # With sigma = 2.5373 Delta L (eps = 1, delta = 0.05) the size reaches L exactly when Prop. 2
    # holds at (1, 0.05); the search over delta' can only find a larger size.
    L, delta_ = 0.3, 1.7
    sigma = math.sqrt(2 * math.log(25)) * delta_ * L
    on_grid = C.pixeldp_size_gaussian(0.999, 0.0001, sigma, delta_, delta_grid=[0.05])
    assert on_grid.size == pytest.approx(L) and on_grid.eps == 1.0
    assert C.pixeldp_size_gaussian(0.999, 0.0001, sigma, delta_).size >= L
    fails = C.pixeldp_size_gaussian(0.6, 0.35, sigma, delta_, delta_grid=[0.05])
    assert fails.size < L and not C.pixeldp_condition(0.6, 0.35, 1.0, 0.05)


def test_pixeldp_size_laplace_closed_form():
    got = C.pixeldp_size_laplace(0.8, 0.1, 0.5, 2.0)
    assert got.size == pytest.approx(0.5 * math.log(8) / 4)
    assert C.pixeldp_size_laplace(0.3, 0.4, 0.5, 2.0).size == 0


def test_smoothed_predict_abstains_on_close_votes():
    assert C.smoothed_predict(np.array([50, 48, 2]), 0.05) == C.ABSTAIN
    assert C.smoothed_predict(np.array([2, 90, 8]), 0.05) == 1


@pytest.mark.parametrize("call", [
    lambda: S.clopper_pearson_lower(5, 10, 0.0), lambda: S.clopper_pearson_lower(5, 10, 1.0),
    lambda: S.clopper_pearson_lower(11, 10, 0.05), lambda: C.smoothing_radius_gaussian(0.9, -1.0, 1.0),
    lambda: C.smoothed_certify([1, 2], [3, 4], 0.05, "cauchy", 1.0, 1.0),
    lambda: C.pixeldp_certify([3, 4], 1.0, "gaussian", 1.0, 1.0, 1.0, 0.05)])
def test_bad_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


# --- simulation: every bound fails no more often than its alpha ---------------------------
def test_clopper_pearson_failure_rates():
    rng = np.random.default_rng(0)
    for p, n in [(0.3, 100), (0.9, 300), (0.02, 300)]:
        k = rng.binomial(n, p, TRIALS)
        lo_fail = np.mean(S.clopper_pearson_lower(k, n, ALPHA) > p)
        up_fail = np.mean(S.clopper_pearson_upper(k, n, ALPHA) < p)
        lo2, up2 = S.clopper_pearson_interval(k, n, ALPHA)
        two_fail = np.mean((lo2 > p) | (up2 < p))
        assert max(lo_fail, up_fail, two_fail) <= allowed(ALPHA), (p, n, lo_fail, up_fail, two_fail)
        if p == 0.3:  # not absurdly conservative either
            assert lo_fail > ALPHA / 3


def test_simultaneous_clopper_pearson_failure_rate():
    rng = np.random.default_rng(1)
    probs = np.array([0.55, 0.25, 0.1, 0.05, 0.05])
    counts = rng.multinomial(300, probs, TRIALS)
    lo, up = S.simultaneous_clopper_pearson(counts, ALPHA)
    fail = np.mean(np.any((lo > probs) | (up < probs), axis=1))
    assert fail <= allowed(ALPHA)


def test_hoeffding_and_bernstein_failure_rates():
    rng = np.random.default_rng(2)
    a, b, n = 2.0, 5.0, 100
    true_mean = a / (a + b)
    x = rng.beta(a, b, (TRIALS, n))
    mean, var = x.mean(1), x.var(1, ddof=1)
    rates = {
        "hoeffding_lower": np.mean(S.hoeffding_lower(mean, n, ALPHA) > true_mean),
        "hoeffding_upper": np.mean(S.hoeffding_upper(mean, n, ALPHA) < true_mean),
        "bernstein_lower": np.mean(S.empirical_bernstein_lower(mean, var, n, ALPHA) > true_mean),
        "bernstein_upper": np.mean(S.empirical_bernstein_upper(mean, var, n, ALPHA) < true_mean),
    }
    assert max(rates.values()) <= allowed(ALPHA), rates


def test_certificates_certify_a_wrong_class_no_more_than_alpha():
    """When the true top class is 0 with p_A just above 1/2, a certificate for any other class
    (or a radius beyond the true one) is a failure; both bounds must fail at most alpha."""
    rng = np.random.default_rng(3)
    probs = np.array([0.52, 0.46, 0.02])
    sigma = 1.0
    true_radius = sigma * norm.ppf(probs[0])
    smooth_fail = pixeldp_fail = 0
    trials = 4000
    for _ in range(trials):
        sel, est = rng.multinomial(20, probs), rng.multinomial(300, probs)
        s = C.smoothed_certify(sel, est, ALPHA, "gaussian", sigma, 1.0)
        smooth_fail += (s.predict not in (0, C.ABSTAIN)) or s.radius > true_radius
        p = C.pixeldp_certify(est, 1 - ALPHA, "gaussian", sigma, 1.0, 1.0, 0.05)
        pixeldp_fail += p.predict != 0 and p.size > 0
    assert smooth_fail / trials <= allowed(ALPHA, trials)
    assert pixeldp_fail / trials <= allowed(ALPHA, trials)
