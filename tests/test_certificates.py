"""dp_autoencoder.certificates: closed forms, the paper's constants, and simulated soundness."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from dp_autoencoder import certificates as C
from dp_autoencoder import stats as S

ALPHA = 0.05
TRIALS = 10_000
PAPER_FACTOR = math.sqrt(2 * math.log(1.25 / 0.05))  # sigma = 2.5373 Delta L at eps = 1, delta = 0.05


def allowed(alpha, trials):
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def distinct(rows):
    """Distinct rows of simulated counts and how often each occurred: every certificate is a
    deterministic function of its counts, so each distinct vector is evaluated once (exact, faster)."""
    uniq, mult = np.unique(np.asarray(rows), axis=0, return_counts=True)
    return uniq, mult


def report(name, rate, trials):
    print(f"[failure rate] {name:60s} {rate:.4f}  (alpha={ALPHA}, trials={trials})")


# --- PixelDP: the closed-form eps' -------------------------------------------------------
def test_pixeldp_max_eps_is_the_root_of_the_condition():
    rng = np.random.default_rng(0)
    pl = rng.uniform(0.2, 1.0, 5000)
    pu = rng.uniform(0.0, 0.3, 5000) * pl
    d = rng.choice([0.0, 1e-5, 1e-3, 0.01, 0.05, 0.1], 5000)
    eps = C.pixeldp_max_eps(pl, pu, d)
    ok = eps > 0
    assert ok.sum() > 2000
    t = np.exp(eps[ok])
    # equality at t*: p_upper t^2 + delta t + delta - p_lower = 0
    np.testing.assert_allclose(pu[ok] * t**2 + d[ok] * t + d[ok], pl[ok], rtol=1e-9)
    assert np.all(C.pixeldp_condition(pl[ok], pu[ok], eps[ok] * (1 - 1e-6), d[ok]))
    assert not np.any(C.pixeldp_condition(pl[ok], pu[ok], eps[ok] * (1 + 1e-6), d[ok]))
    assert np.all(C.pixeldp_condition(pl[ok], pu[ok], eps[ok] * rng.uniform(0, 1, ok.sum()), d[ok]))
    # eps' = 0 exactly when the condition already fails at eps = 0
    np.testing.assert_array_equal(~ok, ~C.pixeldp_condition(pl, pu, 0.0, d))


def test_pixeldp_max_eps_special_cases():
    assert C.pixeldp_max_eps(0.8, 0.0, 0.05) == pytest.approx(math.log((0.8 - 0.05) / 0.05))
    assert C.pixeldp_max_eps(0.8, 0.1, 0.0) == pytest.approx(0.5 * math.log(8))
    assert C.pixeldp_max_eps(0.8, 0.0, 0.0) == math.inf
    assert C.pixeldp_max_eps(0.4, 0.5, 0.05) == 0.0
    assert C.pixeldp_max_eps(0.05, 0.0, 0.05) == 0.0
    # tiny p_upper: the cancellation-free form agrees with the textbook root
    pl, pu, d = 0.9, 1e-12, 1e-3
    textbook = (-d + math.sqrt(d * d - 4 * pu * (d - pl))) / (2 * pu)
    assert C.pixeldp_max_eps(pl, pu, d) == pytest.approx(math.log(textbook), rel=1e-6)


def test_pixeldp_condition_values():
    assert C.pixeldp_condition(0.9, 0.05, 1.0, 0.05)  # 0.9 > 0.369 + 0.186
    assert not C.pixeldp_condition(0.55, 0.05, 1.0, 0.05)
    np.testing.assert_array_equal(C.pixeldp_condition([0.9, 0.55], 0.05, 1.0, 0.05), [True, False])


# --- PixelDP: robustness sizes -----------------------------------------------------------
def test_paper_constant():
    assert PAPER_FACTOR == pytest.approx(2.5373, abs=1e-4)


def test_pixeldp_size_at_the_paper_constants():
    """sigma = 2.5373 Delta L: with the grid {0.05} the size is >= L exactly when Prop. 2 holds at
    (1, 0.05); the full grid can only add sizes, never lose that one."""
    L, delta_ = 0.1, 1.7
    sigma = PAPER_FACTOR * delta_ * L
    rng = np.random.default_rng(1)
    pl = rng.uniform(0.3, 1.0, 3000)
    pu = rng.uniform(0.0, 0.2, 3000)
    holds = C.pixeldp_condition(pl, pu, 1.0, 0.05)
    assert 300 < holds.sum() < 2700
    only = C.pixeldp_size_gaussian(pl, pu, sigma, delta_, delta_grid=[0.05])
    np.testing.assert_array_equal(only.size >= L * (1 - 1e-12), holds)
    np.testing.assert_allclose(only.size[holds], L, rtol=1e-12)  # eps' = 1 (capped), delta' = 0.05
    assert np.all(only.eps[holds] == 1.0) and np.all(only.delta[holds] == 0.05)
    full = C.pixeldp_size_gaussian(pl, pu, sigma, delta_)
    assert np.all(full.size >= only.size) and np.all(full.size[holds] >= L * (1 - 1e-12))
    # one explicit value: eps' = 1, delta' = 0.05 gives L' = sigma / (Delta * 2.5373)
    one = C.pixeldp_size_gaussian(0.999, 1e-4, 1.0, 2.0, delta_grid=[0.05])
    assert one.size == pytest.approx(1.0 / (2.0 * 2.5373), rel=1e-4)


def test_pixeldp_size_gaussian_is_certified_at_its_own_eps_delta():
    rng = np.random.default_rng(2)
    for _ in range(200):
        pl, pu = rng.uniform(0.2, 1.0), rng.uniform(0.0, 0.3)
        sigma, sens = rng.uniform(0.1, 2.0), rng.uniform(0.5, 3.0)
        r = C.pixeldp_size_gaussian(pl, pu, sigma, sens)
        assert isinstance(r.size, float)
        if r.size == 0:
            assert r.eps == 0.0 and r.delta == 0.0
            assert not np.any(C.pixeldp_condition(pl, pu, 1e-9, C.DEFAULT_DELTA_GRID))
            continue
        assert 0 < r.eps <= 1.0 and 0 < r.delta <= 0.3
        assert r.size == pytest.approx(sigma * r.eps / (sens * math.sqrt(2 * math.log(1.25 / r.delta))))
        assert C.pixeldp_condition(pl, pu, r.eps * (1 - 1e-9), r.delta)
        # brute force over the grid and a fine eps grid never beats it
        eps = np.linspace(1e-3, 1.0, 400)[:, None]
        grid = C.DEFAULT_DELTA_GRID[None, :]
        ok = C.pixeldp_condition(pl, pu, eps, grid)
        brute = np.max(np.where(ok, sigma * eps / (sens * np.sqrt(2 * np.log(1.25 / grid))), 0.0))
        assert brute <= r.size * (1 + 1e-12)


def test_pixeldp_size_laplace_closed_form():
    r = C.pixeldp_size_laplace(0.8, 0.1, 0.5, 2.0)
    assert r.size == pytest.approx(0.5 * math.log(8) / 4)
    assert r.eps == pytest.approx(0.5 * math.log(8)) and r.delta == 0.0
    assert C.pixeldp_condition(0.8, 0.1, r.eps * (1 - 1e-9), 0.0)
    assert C.pixeldp_size_laplace(0.3, 0.4, 0.5, 2.0).size == 0.0
    with pytest.raises(ValueError, match="p_upper"):
        C.pixeldp_size_laplace(0.8, 0.0, 0.5, 2.0)


# --- randomized smoothing radii ----------------------------------------------------------
def test_cohen_radius_cap_at_n_100000():
    p_a = S.clopper_pearson_lower(100_000, 100_000, 0.001)
    assert C.smoothing_radius_gaussian(p_a, 1.0, 1.0) == pytest.approx(3.81, abs=0.01)
    assert C.smoothing_radius_gaussian(p_a, 0.5, 2.0) == pytest.approx(3.81 / 4, abs=0.01)
    cert = C.smoothed_certify([0, 100, 0], [0, 100_000, 0], 0.001, "gaussian", 0.25, 1.0)
    assert cert.predict == 1 and cert.radius / 0.25 == pytest.approx(3.81, abs=0.01)


def test_smoothing_radii_closed_forms_and_abstention():
    assert C.smoothing_radius_gaussian(0.9, 0.25, 2.0) == pytest.approx(0.25 * norm.ppf(0.9) / 2)
    assert C.smoothing_radius_laplace(0.9, 0.3, 1.5) == pytest.approx(-0.3 * math.log(0.2) / 1.5)
    # Teng et al.'s radius equals b ln(1 / (2 (1 - p))): at p = 3/4 it is b ln 2
    assert C.smoothing_radius_laplace(0.75, 1.0, 1.0) == pytest.approx(math.log(2))
    for f in (C.smoothing_radius_gaussian, C.smoothing_radius_laplace):
        assert f(0.5, 1.0, 1.0) == C.NO_RADIUS == -1.0
        assert f(0.2, 1.0, 1.0) == -1.0
    np.testing.assert_allclose(C.smoothing_radius_gaussian(np.array([0.3, 0.9]), 1.0, 1.0), [-1.0, norm.ppf(0.9)])


def test_smoothed_certify_and_predict_examples():
    c = C.smoothed_certify([3, 17, 0], [40, 950, 10], 0.001, "laplace", 0.5, 2.0)
    p_a = S.clopper_pearson_lower(950, 1000, 0.001)
    assert (c.predict, c.p_a_lower) == (1, p_a)
    assert c.radius == pytest.approx(-0.5 * math.log(2 * (1 - p_a)) / 2.0)
    tie = C.smoothed_certify([5, 5, 0], [100, 0, 0], 0.01, "gaussian", 1.0, 1.0)
    assert tie.predict == 0  # ties in the selection go to the lowest id
    abst = C.smoothed_certify([5, 5, 0], [52, 48, 0], 0.01, "gaussian", 1.0, 1.0)
    assert (abst.predict, abst.radius) == (C.ABSTAIN, C.NO_RADIUS)
    assert C.smoothed_predict([50, 48, 2], 0.05) == C.ABSTAIN
    assert C.smoothed_predict([2, 90, 8], 0.05) == 1
    assert C.smoothed_predict([30, 30, 40], 0.5) == 2


# --- PixelDP certify ---------------------------------------------------------------------
def test_pixeldp_certify_matches_its_definition():
    counts = np.array([2, 280, 10, 8])
    cert = C.pixeldp_certify(counts, 0.95, "gaussian", 0.3, 1.2, 1.0, 0.05)
    lo, up = S.simultaneous_clopper_pearson(counts, 0.05)
    assert cert.predict == 1
    assert cert.p_lower == pytest.approx(lo[1], rel=1e-12)
    assert cert.p_upper == pytest.approx(max(up[0], up[2], up[3]), rel=1e-12)
    assert cert.certified_at_construction == C.pixeldp_condition(lo[1], cert.p_upper, 1.0, 0.05)
    assert cert.size == C.pixeldp_size_gaussian_analytic(cert.p_lower, cert.p_upper, 0.3, 1.2).size > 0
    classical = C.pixeldp_certify(counts, 0.95, "gaussian", 0.3, 1.2, 1.0, 0.05, profile="classical")
    assert classical.size == C.pixeldp_size_gaussian(cert.p_lower, cert.p_upper, 0.3, 1.2).size > 0
    lap = C.pixeldp_certify(counts, 0.95, "laplace", 0.3, 1.2, 1.0, 0.0)
    assert lap.size == pytest.approx(0.3 * math.log(lap.p_lower / lap.p_upper) / 2.4)
    for method in ("hoeffding", "bernstein"):
        m = C.pixeldp_certify(counts, 0.95, "gaussian", 0.3, 1.2, 1.0, 0.05, method=method)
        assert m.predict == 1 and m.p_lower < cert.p_lower  # both are looser than Clopper-Pearson on votes
    s = C.pixeldp_certify_from_scores([0.05, 0.9, 0.03, 0.02], [0.01] * 4, 1000, 0.95, "gaussian", 0.3, 1.2, 1.0, 0.05)
    assert s.predict == 1
    assert s.p_lower == pytest.approx(S.empirical_bernstein_lower(0.9, 0.01, 1000, 0.05 / 8))
    assert s.p_upper == pytest.approx(S.empirical_bernstein_upper(0.05, 0.01, 1000, 0.05 / 8))


# --- simulation: no certificate is wrong more often than alpha ---------------------------
def test_smoothed_certify_is_wrong_at_most_alpha():
    """True class probabilities known; a certificate is wrong when its class is not the true top class
    or its radius exceeds the true radius sigma Phi^{-1}(p_top) / Delta (any radius when p_top <= 1/2)."""
    rng = np.random.default_rng(3)
    sigma, sens = 0.5, 2.0
    for probs, n in [([0.5, 0.45, 0.05], 100), ([0.6, 0.3, 0.1], 300), ([0.45, 0.55], 100)]:
        probs = np.asarray(probs)
        top = int(np.argmax(probs))
        true_radius = sigma * norm.ppf(probs[top]) / sens if probs[top] > 0.5 else 0.0
        k = len(probs)
        both = np.hstack([rng.multinomial(10, probs, TRIALS), rng.multinomial(n, probs, TRIALS)])
        wrong = 0
        for row, mult in zip(*distinct(both)):
            c = C.smoothed_certify(row[:k], row[k:], ALPHA, "gaussian", sigma, sens)
            wrong += mult * (c.predict != C.ABSTAIN and (c.predict != top or c.radius > true_radius))
        report(f"smoothed_certify wrong, probs={probs.tolist()}, n={n}", wrong / TRIALS, TRIALS)
        assert wrong / TRIALS <= allowed(ALPHA, TRIALS)


def test_smoothed_predict_is_wrong_at_most_alpha():
    rng = np.random.default_rng(4)
    # an exact tie: any answer other than abstaining is unsupported
    rows, mult = distinct(rng.multinomial(100, [0.5, 0.5], TRIALS))
    rate = sum(m * (C.smoothed_predict(c, ALPHA) != C.ABSTAIN) for c, m in zip(rows, mult)) / TRIALS
    report("smoothed_predict answers on an exact tie, n=100", rate, TRIALS)
    assert rate <= allowed(ALPHA, TRIALS)
    rows, mult = distinct(rng.multinomial(100, [0.45, 0.4, 0.15], TRIALS))
    rate = sum(m * (C.smoothed_predict(c, ALPHA) not in (0, C.ABSTAIN)) for c, m in zip(rows, mult)) / TRIALS
    report("smoothed_predict returns a non-top class, probs=[.45,.4,.15]", rate, TRIALS)
    assert rate <= allowed(ALPHA, TRIALS)


@pytest.mark.parametrize(
    "noise,eps,delta,probs,n",
    [
        # K = 2 just below the boundary of Prop. 1 at (1, 0.05): p_0 > (e^2 + 0.1859) / (1 + e^2) = 0.9030
        ("gaussian", 1.0, 0.05, [0.902, 0.098], 1000),
        # Laplace (delta = 0): p_0 > e^2 / (1 + e^2) = 0.8808
        ("laplace", 1.0, 0.0, [0.88, 0.12], 1000),
        # K = 6, just below the boundary (0.7 < e^2 0.07 + (1 + e) 0.05 = 0.703)
        ("gaussian", 1.0, 0.05, [0.7, 0.07, 0.07, 0.07, 0.07, 0.02], 300),
    ],
)
def test_pixeldp_certify_is_wrong_at_most_alpha(noise, eps, delta, probs, n):
    """A PixelDP certificate is wrong when the true expected votes do not satisfy Prop. 1 for the
    predicted class at the claimed (eps, delta): at the construction's, or at the size's (eps', delta').
    The truth sits just outside the construction's condition, so a certify using point estimates
    instead of bounds would be wrong about half of the time."""
    rng = np.random.default_rng(5)
    probs = np.asarray(probs)
    assert not C.pixeldp_condition(probs[0], probs[1:].max(), eps, delta)
    wrong_construction = wrong_size = 0
    for c, mult in zip(*distinct(rng.multinomial(n, probs, TRIALS))):
        cert = C.pixeldp_certify(c, 1 - ALPHA, noise, 0.3, 1.0, eps, delta)
        p_k, p_other = probs[cert.predict], np.max(np.delete(probs, cert.predict))
        wrong_construction += mult * (cert.certified_at_construction and not C.pixeldp_condition(p_k, p_other, eps, delta))
        if cert.size > 0:
            wrong_size += mult * (not C.pixeldp_condition(p_k, p_other, cert.size_eps * (1 - 1e-9), cert.size_delta))
    tag = f"pixeldp_certify ({noise}, K={len(probs)}, n={n})"
    report(f"{tag} wrong at construction (eps={eps}, delta={delta})", wrong_construction / TRIALS, TRIALS)
    report(f"{tag} wrong at its size's (eps', delta')", wrong_size / TRIALS, TRIALS)
    assert wrong_construction / TRIALS <= allowed(ALPHA, TRIALS)
    assert wrong_size / TRIALS <= allowed(ALPHA, TRIALS)


def test_pixeldp_certify_from_scores_is_wrong_at_most_alpha():
    rng = np.random.default_rng(6)
    conc = np.array([6.0, 1.0, 1.0, 1.0])  # Dirichlet softmax scores, E = conc / conc.sum()
    truth = conc / conc.sum()
    n, trials = 200, 2000
    scores = rng.dirichlet(conc, (trials, n))
    means, variances = scores.mean(1), scores.var(1, ddof=1)
    wrong = {"hoeffding": 0, "bernstein": 0}
    for m, v in zip(means, variances):
        for method in wrong:
            cert = C.pixeldp_certify_from_scores(m, v, n, 1 - ALPHA, "gaussian", 0.3, 1.0, 1.0, 0.05, method=method)
            p_k, p_other = truth[cert.predict], np.max(np.delete(truth, cert.predict))
            if cert.size > 0:
                wrong[method] += not C.pixeldp_condition(p_k, p_other, cert.size_eps * (1 - 1e-9), cert.size_delta)
    for method, w in wrong.items():
        report(f"pixeldp_certify_from_scores ({method}) wrong at its size", w / trials, trials)
        assert w / trials <= allowed(ALPHA, trials)


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: C.smoothed_certify([1, 2], [3, 4], 0.0, "gaussian", 1.0, 1.0), "alpha"),
        (lambda: C.smoothed_certify([1, 2], [3, 4], 1.0, "gaussian", 1.0, 1.0), "alpha"),
        (lambda: C.smoothed_certify([1, 2], [3, 4], 0.05, "cauchy", 1.0, 1.0), "noise"),
        (lambda: C.smoothed_certify([1, 2], [3, 4], 0.05, "gaussian", -1.0, 1.0), "scale"),
        (lambda: C.smoothed_certify([1, 2, 0], [3, 4], 0.05, "gaussian", 1.0, 1.0), "length"),
        (lambda: C.smoothed_predict([3, 4], 1.0), "alpha"),
        (lambda: C.smoothing_radius_gaussian(0.9, -1.0, 1.0), "sigma"),
        (lambda: C.smoothing_radius_gaussian(0.9, 1.0, 0.0), "sensitivity"),
        (lambda: C.smoothing_radius_laplace(0.9, 0.0, 1.0), "b"),
        (lambda: C.smoothing_radius_laplace(1.5, 1.0, 1.0), "p_a_lower"),
        (lambda: C.pixeldp_size_gaussian(0.9, 0.1, -0.3, 1.0), "sigma"),
        (lambda: C.pixeldp_size_gaussian(0.9, 0.1, 0.3, 1.0, max_eps=2.0), "max_eps"),
        (lambda: C.pixeldp_size_gaussian(0.9, 0.1, 0.3, 1.0, delta_grid=[0.0, 0.1]), "delta_grid"),
        (lambda: C.pixeldp_size_laplace(0.9, 0.1, 0.3, -1.0), "sensitivity"),
        (lambda: C.pixeldp_max_eps(0.9, 0.1, -0.1), "delta"),
        (lambda: C.pixeldp_certify([3, 4], 1.0, "gaussian", 1.0, 1.0, 1.0, 0.05), "eta"),
        (lambda: C.pixeldp_certify([3, 4], 0.0, "gaussian", 1.0, 1.0, 1.0, 0.05), "eta"),
        (lambda: C.pixeldp_certify([3, 4], 0.95, "uniform", 1.0, 1.0, 1.0, 0.05), "noise"),
        (lambda: C.pixeldp_certify([3, 4], 0.95, "gaussian", 1.0, 1.0, 1.0, 0.05, method="wald"), "method"),
        (lambda: C.pixeldp_certify([7], 0.95, "gaussian", 1.0, 1.0, 1.0, 0.05), "K >= 2"),
        (lambda: C.pixeldp_certify([0, 0], 0.95, "gaussian", 1.0, 1.0, 1.0, 0.05), "vote"),
        (lambda: C.pixeldp_certify_from_scores([0.5, 0.5], None, 10, 0.95, "gaussian", 1.0, 1.0, 1.0, 0.05), "var"),
    ],
)
def test_bad_input_is_refused_with_a_named_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
