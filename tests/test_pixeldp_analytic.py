"""The PixelDP size read through the Gaussian mechanism's exact privacy profile (docs/pixeldp-analytic.md).

Checked against quantities computed without the code under test: the hockey-stick divergence by
numerical integration and in 50-digit arithmetic, a brute-force inversion on dense (L', eps') grids with
the textbook formula, the Neyman-Pearson limit that no certificate can pass, and a simulation of a toy
whose expected scores are known.
"""

import json
import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from dp_autoencoder import certificates as C
from dp_autoencoder.certify import (
    CertifyError,
    CertifySettings,
    _prepare_out,
    certificates,
    recompute_record,
    resumed_pixeldp_profile,
    summarize,
)
from dp_autoencoder.cli import main


def textbook_delta(eps, d, sigma):
    """Balle & Wang's Thm 8 as printed, in plain floating point (fine away from underflow)."""
    return norm.cdf(d / (2 * sigma) - eps * sigma / d) - np.exp(eps) * norm.cdf(-d / (2 * sigma) - eps * sigma / d)


def hockey_stick_by_quadrature(eps, d, sigma):
    """sup_S P(S) - e^eps Q(S) for P = N(d, sigma^2), Q = N(0, sigma^2): the integral of (p - e^eps q)_+."""
    crossing = sigma**2 * eps / d + d / 2  # p > e^eps q exactly to the right of it (log-likelihood ratio is linear)
    hi = max(crossing, d) + 40 * sigma
    value, _ = integrate.quad(lambda x: norm.pdf(x, d, sigma) - math.exp(eps) * norm.pdf(x, 0, sigma), crossing, hi,
                              epsabs=0, epsrel=1e-12, limit=200)
    whole, _ = integrate.quad(lambda x: max(norm.pdf(x, d, sigma) - math.exp(eps) * norm.pdf(x, 0, sigma), 0.0),
                              d - 40 * sigma, hi, points=[crossing], epsabs=1e-15, epsrel=1e-10, limit=400)
    assert whole == pytest.approx(value, rel=1e-7, abs=1e-14)  # nothing positive left of the crossing
    return value


def neyman_pearson_size(p_lower, p_upper, sigma, sensitivity):
    """No certificate from these bounds can pass sigma (Phi^-1(p_l) - Phi^-1(p_u)) / (2 Delta): two half-space
    classifiers with exactly these probabilities swap order there (Cohen et al.'s worst case)."""
    return sigma * (norm.ppf(p_lower) - norm.ppf(p_upper)) / (2 * sensitivity)


# --- the profile --------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("d, sigma", [(0.1, 0.254), (0.3, 0.254), (1.0, 0.5), (0.05, 1.0), (2.5, 0.7)])
def test_profile_is_the_hockey_stick_divergence(eps, d, sigma):
    exact = hockey_stick_by_quadrature(eps, d, sigma)
    got = C.gaussian_privacy_profile(eps, d, sigma)
    if exact < 1e-250:
        assert 0 <= got < 1e-240
    else:
        assert got == pytest.approx(exact, rel=1e-7, abs=1e-300)
        assert got >= exact * (1 - 1e-9)


def test_profile_closed_forms_and_monotonicity():
    # eps = 0: total variation 2 Phi(D / (2 sigma)) - 1 = erf(D / (2 sqrt(2) sigma))
    for r in (1e-6, 1e-3, 0.1, 1.0, 3.0):
        assert C.gaussian_privacy_profile(0.0, r, 1.0) == pytest.approx(math.erf(r / (2 * math.sqrt(2))), rel=1e-9)
    # the classical calibration is a valid (eps, delta) pair, so Thm 8 puts delta(eps) below it (eps <= 1)
    for eps in (0.1, 0.5, 1.0):
        for delta in (1e-5, 1e-3, 0.05, 0.3):
            d = eps / math.sqrt(2 * math.log(1.25 / delta))  # sigma = 1
            assert C.gaussian_privacy_profile(eps, d, 1.0) < delta
    eps = np.linspace(0, 5, 200)
    d = np.logspace(-2, 1, 150)[:, None]
    delta = C.gaussian_privacy_profile(eps, d, 1.0)
    assert np.all(np.diff(delta, axis=0) > -1e-15)  # increasing in the sensitivity
    assert np.all(np.diff(delta, axis=1) < 1e-15)  # decreasing in eps
    np.testing.assert_allclose(delta[(delta > 1e-6)], textbook_delta(np.broadcast_to(eps, delta.shape),
                                                                     np.broadcast_to(d, delta.shape), 1.0)[delta > 1e-6],
                               rtol=1e-8)


def test_profile_is_rounded_upwards_in_50_digit_arithmetic():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    worst_low, worst_high = 0.0, 0.0
    for eps in (0.0, 1e-8, 1e-4, 0.01, 0.3, 1.0, 3.0, 10.0, 60.0, 300.0):
        for r in np.logspace(-6, 2.5, 30):
            exact = mp.ncdf(r / 2 - eps / r) - mp.e ** mp.mpf(eps) * mp.ncdf(-r / 2 - eps / r)
            if exact < mp.mpf("1e-250"):
                continue
            rel = float(mp.mpf(C.gaussian_privacy_profile(eps, r, 1.0)) / exact - 1)
            worst_low, worst_high = min(worst_low, rel), max(worst_high, rel)
    assert worst_low > -1e-15  # never below the exact value (beyond the last bit of the final exp)
    assert worst_high < 1e-4  # and only far above it where delta < 1e-200


def test_profile_rejects_bad_values():
    for args, word in [((-0.1, 1.0, 1.0), "eps"), ((0.5, 0.0, 1.0), "l2_sensitivity"), ((0.5, 1.0, 0.0), "sigma"),
                       ((np.inf, 1.0, 1.0), "eps")]:
        with pytest.raises(ValueError, match=word):
            C.gaussian_privacy_profile(*args)


# --- the size -----------------------------------------------------------------------------
CASES = [(0.9, 0.05, 0.254, 1.0), (0.99, 0.0175, 0.254, 1.0), (0.6, 0.3, 0.3, 1.2), (0.5, 0.45, 1.0, 2.0),
         (0.97, 0.001, 0.76, 1.0), (0.3, 0.29, 0.5, 0.8)]


@pytest.mark.parametrize("p_lower, p_upper, sigma, sensitivity", CASES)
def test_size_agrees_with_a_brute_force_inversion(p_lower, p_upper, sigma, sensitivity):
    r = C.pixeldp_size_gaussian_analytic(p_lower, p_upper, sigma, sensitivity)
    assert r.size > 0
    # the returned point, checked with the textbook formula
    delta = textbook_delta(r.eps, sensitivity * r.size, sigma)
    assert r.delta == pytest.approx(delta, rel=1e-7)
    assert p_lower > math.exp(2 * r.eps) * p_upper + (1 + math.exp(r.eps)) * delta
    # every smaller L' is certified at the same eps' (the size is the sup of an interval)
    for f in (0.999, 0.9, 0.5, 0.1):
        assert p_lower > math.exp(2 * r.eps) * p_upper + (1 + math.exp(r.eps)) * textbook_delta(
            r.eps, sensitivity * r.size * f, sigma)
    # brute force: dense L' x eps' grid, the largest L' certified at some eps'
    eps_top = 0.5 * math.log(p_lower / p_upper)
    eps = np.linspace(0, eps_top, 1201)[:, None]
    sizes = np.linspace(0, 1.2 * r.size, 1201)[None, 1:]
    with np.errstate(over="ignore", invalid="ignore"):
        ok = p_lower > np.exp(2 * eps) * p_upper + (1 + np.exp(eps)) * textbook_delta(eps, sensitivity * sizes, sigma)
    brute = sizes[0][ok.any(axis=0)].max()
    assert brute <= r.size * (1 + 1e-9)  # nothing on the grid beats the search
    assert r.size <= brute + 1.2 * r.size / 1200 * 1.01 + 1e-3 * r.size  # and the search finds the grid's best


def test_size_is_never_above_the_neyman_pearson_limit_and_close_to_it():
    rng = np.random.default_rng(0)
    pl = rng.uniform(0.05, 1.0, 2000)
    pu = np.maximum(rng.uniform(0, 1, 2000) * np.minimum(pl, 1 - pl), 1e-6)
    sigma, sensitivity = 0.37, 1.3
    r = C.pixeldp_size_gaussian_analytic(pl, pu, sigma, sensitivity)
    limit = neyman_pearson_size(pl, pu, sigma, sensitivity)
    ok = r.size > 0
    assert ok.sum() > 1900
    assert np.all(r.size[ok] <= limit[ok] * (1 + 1e-9))
    assert np.median(r.size[ok] / limit[ok]) > 0.9  # the exact profile leaves little on the table
    assert np.all(r.size[~ok] == 0) and np.all(pl[~ok] <= pu[~ok] * (1 + 1e-3) + 1e-3)


def test_analytic_is_never_smaller_than_classical():
    rng = np.random.default_rng(1)
    pl = rng.uniform(0.2, 1.0, 1500)
    pu = rng.uniform(0.0, 0.4, 1500) * pl
    for sigma, sensitivity in ((0.254, 1.0), (0.76, 2.3), (3.0, 0.5)):
        a = C.pixeldp_size_gaussian_analytic(pl, pu, sigma, sensitivity)
        c = C.pixeldp_size_gaussian(pl, pu, sigma, sensitivity)
        assert np.all(a.size >= c.size)
        assert np.all(a.size[c.size > 0] >= 1.5 * c.size[c.size > 0])
    # on vote counts, over sigmas and the three bound methods
    for n in (100, 300, 1000):
        for top in range(n // 10, n + 1, n // 10):
            counts = [top, n - top - (n - top) // 3, (n - top) // 3, 0]
            for sigma in (0.1, 0.254, 0.76, 2.0):
                for method in C.PIXELDP_METHODS:
                    args = (counts, 0.95, "gaussian", sigma, 1.4, 1.0, 0.05, method)
                    a, c = C.pixeldp_certify(*args, profile="analytic"), C.pixeldp_certify(*args, profile="classical")
                    assert a.predict == c.predict and a.p_lower == c.p_lower and a.p_upper == c.p_upper
                    assert a.size >= c.size and (a.profile, c.profile) == ("analytic", "classical")
                    assert a.certified_at_construction == c.certified_at_construction


def test_size_is_monotone_in_the_counts_and_the_bounds():
    n = 300
    previous = -1.0
    for top in range(150, n + 1, 5):
        size = C.pixeldp_certify([top, n - top, 0], 0.95, "gaussian", 0.254, 1.0, 1.0, 0.05).size
        assert size >= previous * (1 - 1e-6)
        previous = size
    pl = np.linspace(0.3, 1.0, 71)
    s = C.pixeldp_size_gaussian_analytic(pl, 0.1, 0.5, 1.0).size
    assert np.all(np.diff(s) >= -1e-6 * s[1:])
    pu = np.linspace(0.0, 0.6, 61)
    s = C.pixeldp_size_gaussian_analytic(0.7, pu, 0.5, 1.0).size
    assert np.all(np.diff(s) <= 1e-6 * s[:-1])
    # scale invariance: the size is sigma / Delta times a function of (p_lower, p_upper)
    base = C.pixeldp_size_gaussian_analytic(0.8, 0.1, 1.0, 1.0).size
    assert C.pixeldp_size_gaussian_analytic(0.8, 0.1, 0.3, 2.0).size == pytest.approx(base * 0.15, rel=1e-9)


def test_size_edge_cases():
    none = C.pixeldp_size_gaussian_analytic(0.4, 0.4, 1.0, 1.0)
    assert (none.size, none.eps, none.delta) == (0.0, 0.0, 0.0)
    assert C.pixeldp_size_gaussian_analytic(0.0, 0.0, 1.0, 1.0).size == 0.0
    capped = C.pixeldp_size_gaussian_analytic(0.9, 0.0, 1.0, 1.0)  # p_upper = 0: eps' searched up to max_eps
    assert capped.size > 0 and capped.eps <= C.ANALYTIC_MAX_EPS
    assert C.pixeldp_size_gaussian_analytic(0.9, 0.0, 1.0, 1.0, max_eps=20.0).size > capped.size
    vec = C.pixeldp_size_gaussian_analytic([0.9, 0.4], [0.05, 0.4], 1.0, 1.0)
    assert vec.size.shape == (2,) and vec.size[1] == 0 and vec.size[0] == pytest.approx(
        C.pixeldp_size_gaussian_analytic(0.9, 0.05, 1.0, 1.0).size)
    for call, word in [(lambda: C.pixeldp_size_gaussian_analytic(1.2, 0.1, 1.0, 1.0), "p_lower"),
                       (lambda: C.pixeldp_size_gaussian_analytic(0.9, 0.1, 0.0, 1.0), "sigma"),
                       (lambda: C.pixeldp_size_gaussian_analytic(0.9, 0.1, 1.0, 1.0, max_eps=0.0), "max_eps"),
                       (lambda: C.pixeldp_certify([5, 3], 0.95, "gaussian", 1.0, 1.0, 1.0, 0.05, profile="exact"),
                        "profile")]:
        with pytest.raises(ValueError, match=word):
            call()


def test_classical_profile_and_laplace_are_unchanged():
    counts = [250, 30, 20]
    c = C.pixeldp_certify(counts, 0.95, "gaussian", 0.254, 1.0, 1.0, 0.05, profile="classical")
    pure = C.pixeldp_size_gaussian(c.p_lower, c.p_upper, 0.254, 1.0)
    assert (c.size, c.size_eps, c.size_delta) == (pure.size, pure.eps, pure.delta)
    # the values of the code before the analytic profile existed (commit 1bbad27)
    assert (c.size, c.size_eps, c.size_delta) == pytest.approx((0.07167075234308252, 0.7183108382292158,
                                                                0.0489426936897098), rel=1e-12)
    for profile in C.PIXELDP_PROFILES:
        lap = C.pixeldp_certify(counts, 0.95, "laplace", 0.3, 1.2, 1.0, 0.0, profile=profile)
        assert lap.size == C.pixeldp_size_laplace(lap.p_lower, lap.p_upper, 0.3, 1.2).size
    s = C.pixeldp_certify_from_scores([0.05, 0.9, 0.03, 0.02], [0.01] * 4, 1000, 0.95, "gaussian", 0.3, 1.2, 1.0, 0.05)
    assert s.profile == "analytic" and s.size == C.pixeldp_size_gaussian_analytic(s.p_lower, s.p_upper, 0.3, 1.2).size


# --- soundness on a toy whose expected scores are known ----------------------------------
def toy_violations(x, sigma, n, eta, trials, profile, plug_in=False, seed=0):
    """f(z) = 1[z > 0] on z = x + N(0, sigma^2), Delta = 1: E[A_1(x')] = Phi(x' / sigma), so the prediction at x > 0
    changes exactly at x' = 0 and a certificate (k, L') is false iff k = 0 or L' >= x.  Returns the share of false
    certificates over ``trials`` draws of n votes.  ``plug_in``: the size from the raw frequencies (no
    confidence bounds): a deliberately unsound control that shows the simulation can see over-claiming."""
    rng = np.random.default_rng(seed)
    ones = rng.binomial(n, norm.cdf(x / sigma), trials)
    values, mult = np.unique(ones, return_counts=True)
    false = 0
    for k1, m in zip(values, mult):
        counts = [n - k1, k1]
        if plug_in:
            top = int(k1 >= n - k1)
            p = np.array(counts) / n
            size = float(C.pixeldp_size_gaussian_analytic(p[top], p[1 - top], sigma, 1.0).size)
            predict = top
        else:
            cert = C.pixeldp_certify(counts, eta, "gaussian", sigma, 1.0, 1.0, 0.05, profile=profile)
            size, predict = cert.size, cert.predict
        false += m * (size > 0 and (predict == 0 or size >= x))
    return false / trials


@pytest.mark.parametrize("profile", C.PIXELDP_PROFILES)
def test_certificates_are_false_at_most_one_minus_eta_of_the_time(profile):
    eta, trials = 0.9, 20_000
    allowed = (1 - eta) + 3 * math.sqrt(eta * (1 - eta) / trials)
    for x, sigma, n in ((0.2, 0.25, 100), (0.35, 0.5, 300), (0.1, 0.5, 1000)):
        rate = toy_violations(x, sigma, n, eta, trials, profile)
        print(f"[false certificates] {profile} x={x} sigma={sigma} n={n}: {rate:.4f} (allowed {allowed:.4f})")
        assert rate <= allowed
    # the simulation does detect over-claiming: without confidence bounds the near-tight analytic size is
    # false far more often than 1 - eta
    assert toy_violations(0.35, 0.5, 300, eta, trials, profile, plug_in=True) > 2 * allowed


def test_three_classes_the_truth_satisfies_prop_1_at_the_certified_point():
    """K = 3 multinomial votes: a certificate (k, L', eps') is wrong when the true expected votes fail
    Prop. 1 at (eps', delta_{Delta L'}(eps')) for class k.  Must happen at most 1 - eta of the time."""
    eta, n, trials = 0.9, 100, 20_000
    probs = np.array([0.62, 0.25, 0.13])
    sigma, sensitivity = 0.4, 1.0
    rng = np.random.default_rng(3)
    rows, mult = np.unique(rng.multinomial(n, probs, trials), axis=0, return_counts=True)
    wrong = plug_in_wrong = 0
    for c, m in zip(rows, mult):
        cert = C.pixeldp_certify(c, eta, "gaussian", sigma, sensitivity, 1.0, 0.05)
        if cert.size > 0:
            p_k, p_other = probs[cert.predict], np.max(np.delete(probs, cert.predict))
            delta = textbook_delta(cert.size_eps, sensitivity * cert.size, sigma)
            wrong += m * (not p_k > math.exp(2 * cert.size_eps) * p_other + (1 + math.exp(cert.size_eps)) * delta)
        freq = c / n  # the control: no confidence bounds
        k = int(np.argmax(freq))
        raw = C.pixeldp_size_gaussian_analytic(freq[k], np.max(np.delete(freq, k)), sigma, sensitivity)
        if raw.size > 0:
            delta = textbook_delta(raw.eps, sensitivity * raw.size, sigma)
            plug_in_wrong += m * (not probs[k] > math.exp(2 * raw.eps) * np.max(np.delete(probs, k))
                                  + (1 + math.exp(raw.eps)) * delta)
    allowed = (1 - eta) + 3 * math.sqrt(eta * (1 - eta) / trials)
    print(f"[false certificates] K=3 analytic: {wrong / trials:.4f}, plug-in control {plug_in_wrong / trials:.4f} "
          f"(allowed {allowed:.4f})")
    assert wrong / trials <= allowed
    assert plug_in_wrong / trials > 2 * allowed


# --- records, settings and the command line ----------------------------------------------
def record(profile=None, counts=(260, 25, 15)):
    sel, est = np.array([90, 6, 4]), np.array(counts)
    bounds = certificates(sel, est, noise="gaussian", scale=0.254, sensitivity=1.0, eps=1.0, delta=0.05, alpha=0.001,
                          eta=0.95, pixeldp_profile=profile or "classical")
    rec = {"idx": 0, "label": 0, "status": "ok", "num_classes": 3, "noise": "gaussian", "scale": 0.254,
           "sensitivity": 1.0, "L": 0.1, "eps": 1.0, "delta": 0.05, "alpha": 0.001, "eta": 0.95, "n0": 100, "n": 300,
           "time": 0.1, "undefended_predict": 0, "counts": {"0": int(est[0]), "1": int(est[1]), "2": int(est[2])},
           "selection_counts": {"0": 90, "1": 6, "2": 4}, **bounds, "correct": 1, "pixeldp_correct": 1}
    if profile is None:
        del rec["pixeldp_profile"]  # as written before the option existed
    return rec


def test_old_records_recompute_as_classical_and_can_switch():
    old = record()
    same = recompute_record(old)
    assert same["pixeldp_profile"] == "classical" and same["pixeldp_size"] == old["pixeldp_size"] > 0
    new = recompute_record(old, pixeldp_profile="analytic")
    assert new["pixeldp_profile"] == "analytic" and new["pixeldp_size"] > 1.5 * old["pixeldp_size"]
    assert new["radius"] == old["radius"] and new["pixeldp_predict"] == old["pixeldp_predict"]
    assert recompute_record(new)["pixeldp_size"] == new["pixeldp_size"]  # keeps its own profile
    with pytest.raises(CertifyError, match="pixeldp-profile"):
        recompute_record(old, pixeldp_profile="exact")
    assert summarize([old])["pixeldp_profile"] == "classical"
    assert summarize([new])["pixeldp_profile"] == "analytic"


def test_run_json_without_a_profile_resumes_as_classical(tmp_path):
    settings = CertifySettings(n0=10, n=30)
    assert settings.pixeldp_profile == "analytic"
    with pytest.raises(CertifyError, match="pixeldp-profile"):
        CertifySettings(pixeldp_profile="exact").check()
    old = settings.to_json()
    del old["pixeldp_profile"]
    (tmp_path / "run.json").write_text(json.dumps(old))
    assert resumed_pixeldp_profile(tmp_path, None) == "classical"
    assert resumed_pixeldp_profile(tmp_path / "new", None) == "analytic"
    assert resumed_pixeldp_profile(tmp_path, "analytic") == "analytic"
    _prepare_out(tmp_path, CertifySettings(n0=10, n=30, pixeldp_profile="classical"), rank=0)  # resumes
    with pytest.raises(CertifyError, match="pixeldp_profile: 'classical' there, 'analytic' now"):
        _prepare_out(tmp_path, settings, rank=0)


def test_cli_recompute_switches_the_profile(tmp_path, capsys):
    src = tmp_path / "run"
    src.mkdir()
    records = [record(), {**record(counts=(200, 60, 40)), "idx": 1}]
    (src / "certify.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["recompute", str(src), "--out", str(tmp_path / "same")]) == 0
    assert "PixelDP, classical" in capsys.readouterr().out
    assert main(["recompute", str(src), "--pixeldp-profile", "analytic", "--out", str(tmp_path / "a")]) == 0
    assert "PixelDP, analytic" in capsys.readouterr().out
    same = [json.loads(line) for line in (tmp_path / "same" / "certify.jsonl").read_text().splitlines()]
    new = [json.loads(line) for line in (tmp_path / "a" / "certify.jsonl").read_text().splitlines()]
    assert [r["pixeldp_size"] for r in same] == [r["pixeldp_size"] for r in records]
    assert all(b["pixeldp_size"] > a["pixeldp_size"] and b["pixeldp_profile"] == "analytic" for a, b in zip(same, new))
    with pytest.raises(SystemExit):
        main(["recompute", str(src), "--pixeldp-profile", "exact", "--out", str(tmp_path / "x")])
