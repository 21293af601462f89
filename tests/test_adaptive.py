"""Adaptive anytime-valid certification (dp_autoencoder.adaptive): schedule, levels, stop rule, validity.

The validity tests run the sequential test on Bernoulli votes at p just below the threshold t(R),
where a certificate is false, with a large alpha (0.1) so that an invalid procedure is caught: the
naive procedure that spends the full alpha at every look is shown to exceed alpha by the same test,
exactly (dynamic programming) and by simulation.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dp_autoencoder.adaptive import (
    CERTIFIED,
    CONTINUE,
    NOT_CERTIFIED,
    LookPlan,
    certify_adaptive,
    decide,
    first_look_size,
    look_alphas,
    look_purpose,
    look_sizes,
    needed_successes,
    operating_characteristics,
    plan,
    radius_threshold,
    run_votes,
    stop_table,
)
from dp_autoencoder.certificates import smoothing_radius_gaussian, smoothing_radius_laplace
from dp_autoencoder.sampler import sample_votes
from dp_autoencoder.stats import clopper_pearson_lower, clopper_pearson_upper

from toy import CLASSES, SIZE, toy_data, toy_model


# --------------------------------------------------------------------------- schedule and levels


def test_look_sizes_closed_form():
    assert look_sizes(32, 1000) == (32, 64, 128, 256, 512, 1000)
    assert look_sizes(32, 1024) == (32, 64, 128, 256, 512, 1024)
    assert look_sizes(10, 10) == (10,)  # one look: fixed-n certification
    assert look_sizes(25, 512) == (25, 50, 100, 200, 512)  # 400 -> 512 would be a look of 112 draws
    assert look_sizes(25, 400) == (25, 50, 100, 200, 400)
    assert look_sizes(17, 100, growth=1.5) == (17, 26, 39, 58, 100)
    assert look_sizes(17, 110, growth=1.5) == (17, 26, 39, 58, 87, 110)
    assert look_sizes(1, 5, growth=1.1) == (1, 2, 3, 4, 5)  # rounding never repeats a size
    for bad in [dict(n_first=0, n_max=5), dict(n_first=6, n_max=5), dict(n_first=2, n_max=5, growth=1.0)]:
        with pytest.raises(ValueError):
            look_sizes(**bad)


@pytest.mark.parametrize("K", [1, 2, 3, 6, 12, 40])
@pytest.mark.parametrize("ratio", [0.5, 0.7, 1.0])
def test_look_alphas_sum_to_alpha(K, ratio):
    alpha = 0.001
    a = look_alphas(alpha, K, ratio)
    assert len(a) == K
    assert math.fsum(a) <= alpha
    assert math.fsum(a) == pytest.approx(alpha, rel=1e-12)
    assert all(x > 0 for x in a)
    assert all(x >= y for x, y in zip(a, a[1:]))  # never more at a later look


def test_look_alphas_closed_form():
    alpha = 0.1
    # r = 1/2: alpha 2^-(k+1) rescaled by 1 / (1 - 2^-K)
    assert look_alphas(alpha, 3) == pytest.approx(tuple(alpha * 2.0 ** -(k + 1) / (1 - 2.0**-3) for k in range(3)))
    assert look_alphas(alpha, 1) == pytest.approx((alpha,))
    assert look_alphas(alpha, 4, ratio=1.0) == pytest.approx((alpha / 4,) * 4)
    with pytest.raises(ValueError):
        look_alphas(alpha, 3, ratio=0.0)
    with pytest.raises(ValueError):
        look_alphas(1.5, 3)


@pytest.mark.parametrize("slack", [0, 1, 2])
@pytest.mark.parametrize("growth,ratio", [(2.0, 0.5), (1.5, 0.7)])
def test_plan_spends_alpha_and_is_fixed_in_advance(slack, growth, ratio):
    for t in [0.5, 0.578, 0.653, 0.785, 0.95]:
        p = plan(0.001, t, 768, growth=growth, ratio=ratio, slack=slack)
        assert p.sizes == look_sizes(p.sizes[0], 768, growth)
        assert p.alphas == look_alphas(0.001, len(p.sizes), ratio)
        assert p.alpha <= 0.001 and p.alpha == pytest.approx(0.001, rel=1e-12)
        # the first look certifies an image with `slack` stray votes; one draw fewer would not
        n = p.sizes[0]
        assert clopper_pearson_lower(n - slack, n, p.alphas[0]) > max(t, 0.5)
        assert clopper_pearson_lower(n - 1 - slack, n - 1, p.alphas[0]) <= max(t, 0.5)


def test_radius_threshold_inverts_the_radius():
    sigma, delta = 0.2537, 0.98
    for R in [0.0, 0.05, 0.1, 0.2, 0.5]:
        t = radius_threshold(R, "gaussian", sigma, delta)
        assert t == pytest.approx(norm.cdf(R * delta / sigma))
        if R > 0:
            assert smoothing_radius_gaussian(t, sigma, delta) == pytest.approx(R)
            t_l = radius_threshold(R, "laplace", sigma, delta)
            assert smoothing_radius_laplace(t_l, sigma, delta) == pytest.approx(R)
    assert radius_threshold(0.0, "gaussian", 1.0, 1.0) == 0.5
    with pytest.raises(ValueError):
        radius_threshold(-0.1, "gaussian", 1.0, 1.0)
    with pytest.raises(ValueError):
        radius_threshold(0.1, "uniform", 1.0, 1.0)


def test_needed_successes_is_the_exact_boundary():
    for n, a, t in [(21, 0.0005, 0.604), (84, 0.0001, 0.785), (300, 0.001, 0.5), (7, 0.01, 0.9)]:
        s = needed_successes(n, a, t)
        lbs = [clopper_pearson_lower(k, n, a) for k in range(n + 1)]
        assert s == next((k for k in range(n + 1) if lbs[k] > max(t, 0.5)), n + 1)
    assert needed_successes(5, 0.001, 0.9) == 6  # 5 draws can never certify 0.9 at 0.001


def test_first_look_size():
    a, t = 0.0005, 0.785
    n = first_look_size(t, a)
    assert a ** (1 / n) > t >= a ** (1 / (n - 1))  # the all-votes bound is alpha^(1/n)
    assert n == math.floor(math.log(1 / a) / math.log(1 / t)) + 1
    n1 = first_look_size(t, a, slack=1)
    assert clopper_pearson_lower(n1 - 1, n1, a) > t >= clopper_pearson_lower(n1 - 2, n1 - 1, a)


# --------------------------------------------------------------------------- stop rule


def test_decide_easy_hopeless_and_last_look():
    p = plan(0.001, 0.785, 512, growth=2.0, ratio=0.5, slack=1)
    assert p.sizes == (42, 84, 168, 336, 512)
    n0 = p.sizes[0]
    assert decide(n0, 0, p)[0] == CERTIFIED  # all votes: certified at the first look
    assert decide(n0 - 1, 0, p)[0] == CERTIFIED  # slack = 1
    assert decide(0, 0, p, futility_beta=None)[0] == CONTINUE  # 470 more votes could still certify at 512
    d, lb, reason = decide(0, 0, p, futility_beta=0.05)
    assert (d, reason) == (NOT_CERTIFIED, "futility") and lb == 0.0
    k = len(p.sizes) - 2  # curtailment is exact: at n = 336, s + 176 more votes must reach needed at 512
    s = p.needed[-1] - (512 - p.sizes[k]) - 1
    assert decide(s, k, p, futility_beta=None)[::2] == (NOT_CERTIFIED, "curtailed")
    assert decide(s + 1, k, p, futility_beta=None)[::2] == (CONTINUE, "continue")
    assert decide(p.needed[-1] - 1, len(p.sizes) - 1, p)[:3:2] == (NOT_CERTIFIED, "last-look")
    assert decide(p.needed[-1], len(p.sizes) - 1, p)[0] == CERTIFIED
    # a middling count continues without futility, and is stopped by it once the upper bound is below reach
    s = round(0.8 * p.sizes[1])
    assert decide(s, 1, p, futility_beta=None)[0] == CONTINUE
    s = round(0.75 * p.sizes[2])
    assert clopper_pearson_upper(s, p.sizes[2], 0.05) < p.reach(2)
    assert decide(s, 2, p, futility_beta=0.05) == (NOT_CERTIFIED, clopper_pearson_lower(s, p.sizes[2], p.alphas[2]),
                                                   "futility")
    assert decide(s, 2, p, futility_beta=None)[0] == CONTINUE
    with pytest.raises(ValueError):
        decide(n0 + 1, 0, p)
    with pytest.raises(ValueError):
        decide(1, len(p.sizes), p)


def test_decide_and_its_vectorized_table_agree():
    for futility, beta in [("reach", 0.05), ("threshold", 0.01), ("none", None)]:
        p = plan(0.01, 0.65, 200)
        for k, n in enumerate(p.sizes):
            certified, stopped = stop_table(k, p, beta, futility)
            for s in range(n + 1):
                d = decide(s, k, p, beta, futility)[0]
                assert (d == CERTIFIED) == certified[s] and (d != CONTINUE) == stopped[s], (futility, k, s)


def test_easy_votes_stop_at_the_first_look():
    for t in [0.578, 0.653, 0.785]:
        p = plan(0.001, t, 512)
        d, lb, n, looks, reason = run_votes(np.ones(512, int), p)
        assert (d, n, looks, reason) == (CERTIFIED, p.sizes[0], 1, "certified") and lb > t
        d, _, n, looks, reason = run_votes(np.zeros(512, int), p, futility_beta=0.05)
        assert (d, n, looks, reason) == (NOT_CERTIFIED, p.sizes[0], 1, "futility")  # hopeless: stopped at once
        d, _, n, looks, reason = run_votes(np.zeros(512, int), p, futility_beta=None)
        assert d == NOT_CERTIFIED and reason == "curtailed" and n < 512  # without futility: when out of reach
    # and exactly: at p = 1 the expected number of estimation draws is the first look
    p = plan(0.001, 0.785, 512)
    assert operating_characteristics(1.0, p, 0.05) == (pytest.approx(1.0), pytest.approx(p.sizes[0]))


# --------------------------------------------------------------------------- validity


ALPHA = 0.1
T = float(norm.cdf(0.3))  # t(R) for R Delta / sigma = 0.3, about 0.618
P_FALSE = T - 1e-9  # the largest p at which a certificate at R is false


def _naive_plan(look_plan, alpha=ALPHA):
    """The invalid procedure: the same looks, but the full alpha at every look (no spending)."""
    return LookPlan(look_plan.sizes, (alpha,) * len(look_plan.sizes), look_plan.threshold)


@pytest.mark.parametrize("futility,beta", [("none", None), ("reach", 0.2), ("threshold", 0.05)])
def test_false_certificate_probability_exact(futility, beta):
    """Exact DP over the counts: P(certify | p = t - tiny) <= alpha for the spending schedule, > alpha naive."""
    p = plan(ALPHA, T, 1024)
    p_false, _ = operating_characteristics(P_FALSE, p, beta, futility)
    assert p_false <= ALPHA
    naive = _naive_plan(p)
    p_naive, _ = operating_characteristics(P_FALSE, naive, beta, futility)
    assert p_naive > 1.5 * ALPHA  # peeking with full alpha at each of the looks breaks the guarantee
    # below the boundary it only gets smaller (the union bound holds for every p <= t)
    assert operating_characteristics(T - 0.05, p, beta, futility)[0] <= p_false


def _simulate(look_plan, p, reps, rng, beta=None, futility="none"):
    """False-certificate rate over ``reps`` independent runs on Bernoulli(p) votes, all looks vectorized."""
    increments = np.diff((0,) + look_plan.sizes)
    S = np.cumsum(rng.binomial(increments[None, :], p, size=(reps, len(increments))), axis=1)
    running = np.ones(reps, bool)
    certified = np.zeros(reps, bool)
    for k, n in enumerate(look_plan.sizes):
        cert_k, stop_k = stop_table(k, look_plan, beta, futility)
        certified |= running & cert_k[S[:, k]]
        running &= ~stop_k[S[:, k]]
    return certified.mean()


def test_false_certificate_rate_simulated():
    """Monte-Carlo version of the exact test: the adaptive rate stays <= alpha, the naive rate exceeds it."""
    rng = np.random.default_rng(2024)
    reps = 20000
    se = math.sqrt(ALPHA * (1 - ALPHA) / reps)  # 0.0021
    p = plan(ALPHA, T, 1024)
    rate = _simulate(p, P_FALSE, reps, rng)
    rate_futility = _simulate(p, P_FALSE, reps, rng, beta=0.2, futility="reach")
    naive = _simulate(_naive_plan(p), P_FALSE, reps, rng)
    assert rate <= ALPHA + 3 * se
    assert rate_futility <= ALPHA + 3 * se
    assert naive > ALPHA + 10 * se
    # the exact values the simulation estimates
    exact = operating_characteristics(P_FALSE, p)[0]
    assert abs(rate - exact) < 5 * math.sqrt(exact * (1 - exact) / reps)


def test_run_votes_matches_the_table():
    rng = np.random.default_rng(0)
    p = plan(ALPHA, T, 256)
    for _ in range(200):
        votes = rng.random(256) < rng.uniform(0.4, 1.0)
        d, lb, n, looks, _ = run_votes(votes, p, 0.05)
        k = looks - 1
        s = int(votes[:n].sum())
        cert, stop = stop_table(k, p, 0.05)
        assert n == p.sizes[k] and stop[s] and (d == CERTIFIED) == cert[s]
        assert all(not stop_table(j, p, 0.05)[1][int(votes[:p.sizes[j]].sum())] for j in range(k))
        assert lb == pytest.approx(clopper_pearson_lower(s, n, p.alphas[k]))


# --------------------------------------------------------------------------- model runs (toy stack)


def _toy():
    model = toy_model()
    x, _ = toy_data(6)[:]
    with torch.inference_mode():
        z = model.pre_noise(x)
    return model, z


def test_certify_adaptive_toy_end_to_end():
    model, z = _toy()
    idx = list(range(10, 16))
    noise = model.noise
    kw = dict(noise=noise.kind, scale=noise.scale, sensitivity=model.sensitivity((SIZE, SIZE)), alpha=0.01,
              n0=8, n_max=128, seed=3)
    radius = 0.15  # t(R) = Phi(0.15 / 0.127), about 0.88: some toy images certify at once, some never
    res = certify_adaptive(model, z, idx, (SIZE, SIZE), CLASSES, radius, batch_size=64, **kw)
    p = plan(0.01, radius_threshold(radius, kw["noise"], kw["scale"], kw["sensitivity"]), 128)
    assert [r.idx for r in res] == idx
    # counts accumulate the fresh draws of every look taken, each look with its own noise purpose
    sel = sample_votes(model, z, idx, 8, CLASSES, (SIZE, SIZE), 3, "adaptive-selection").counts
    looks = max(r.looks for r in res)
    per_look = [sample_votes(model, z, idx, n - prev, CLASSES, (SIZE, SIZE), 3, look_purpose(k)).counts
                for k, (prev, n) in enumerate(zip((0,) + p.sizes, p.sizes[:looks]))]
    for row, r in enumerate(res):
        assert r.n in p.sizes and r.looks == p.sizes.index(r.n) + 1 and r.draws == 8 + r.n
        assert r.selected == int(sel[row].argmax())
        assert r.successes == sum(int(per_look[k][row, r.selected]) for k in range(r.looks))
        d, lb, reason = decide(r.successes, r.looks - 1, p, 0.05)
        assert r.certified == (d == CERTIFIED) and r.stop == reason and r.p_a_lower == pytest.approx(lb)
        if r.certified:
            assert r.radius >= radius and r.predict == r.selected
        if r.p_a_lower <= 0.5:
            assert r.predict == -1 and r.radius == -1.0
    assert any(r.certified for r in res) and any(not r.certified for r in res)
    # reproducible, and an image's result depends neither on the other images nor on the batch size
    again = certify_adaptive(model, z[[4, 1]], [idx[4], idx[1]], (SIZE, SIZE), CLASSES, radius, batch_size=7, **kw)
    assert again == [res[4], res[1]]


def test_certify_adaptive_validates():
    model, z = _toy()
    kw = dict(noise="gaussian", scale=1.0, sensitivity=1.0)
    with pytest.raises(ValueError):
        certify_adaptive(model, z, [0, 1], (SIZE, SIZE), CLASSES, 0.1, **kw)  # 6 rows, 2 indices
    with pytest.raises(ValueError):
        certify_adaptive(model, z, range(6), (SIZE, SIZE), CLASSES, 0.1, futility="sometimes", **kw)
    with pytest.raises(ValueError):
        certify_adaptive(model, z, range(6), (SIZE, SIZE), CLASSES, 0.1, n0=0, **kw)
    assert certify_adaptive(model, z[:0], [], (SIZE, SIZE), CLASSES, 0.1, **kw) == []
