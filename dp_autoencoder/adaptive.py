"""Adaptive (sequential) randomized-smoothing certification at a requested radius, anytime-valid.

Cohen et al.'s CERTIFY spends the same n draws on every image.  Most images are decided long
before: a certificate at a *requested* radius R only needs the one-sided lower bound p_A on the
top class's probability to exceed the threshold

    t(R) = Phi(R Delta / sigma)              (Gaussian noise, L2 radius; sigma Phi^{-1}(p) / Delta >= R)
    t(R) = 1 - exp(-R Delta / b) / 2         (Laplace noise, L1 radius; -b ln(2 (1 - p)) / Delta >= R)

(R in input space, the unit of ``dpae certify``'s ``radius`` column; Delta the pre-noise map's
proven sensitivity).  This module draws the estimation noise in *looks* of growing size and stops
an image as soon as its answer at R is decided.

Procedure for one image (all of it fixed before any draw, except what the draws decide):

1. Selection (Cohen): ``n0`` draws, c_A = argmax of their counts (ties -> lowest id).  These
   draws are never used again.
2. Looks k = 0 .. K-1 at cumulative estimation sizes n_0 < n_1 < ... < n_{K-1} = n_max
   (:func:`look_sizes`, geometric), each drawing the n_k - n_{k-1} *fresh* draws of look k (noise
   purpose ``f"adaptive-{k}"``) and adding their votes to the running count S_k of c_A.
3. At look k, with level alpha_k (:func:`look_alphas`, sum_k alpha_k <= alpha):
   * certified at R  if LB_k = ClopperPearsonLower(S_k, n_k, alpha_k) > max(t(R), 1/2): stop;
   * futile          if no later look can certify even when every remaining draw votes c_A
                     (curtailment, exact) or if U = ClopperPearsonUpper(S_k, n_k, beta) shows the
                     goal out of reach (:func:`decide`: default ``"reach"``, U below the smallest vote
                     share a later look can certify; ``"threshold"``, U <= t(R)): stop, "not
                     certified at R";
   * otherwise go on; after the last look stop, "not certified at R".
   The output is (c_A, certified at R, LB at the stopping look, draws used, looks); the radius
   sigma Phi^{-1}(LB_stop) / Delta (or abstain when LB_stop <= 1/2) is reported as well.

Theorem.  For every image, P(the procedure outputs a certificate at R for a class whose
smoothed probability is <= t(R)) <= alpha; more strongly, P(LB_stop > p_{c_A}) <= alpha, so the
reported radius at the stopping look (whatever it is) is a valid Cohen et al. radius at level
alpha, and so is "certified at R".

Proof.  Condition on the selection draws: c_A is then fixed and, the estimation noise being
independent of the selection noise, the estimation votes X_1, X_2, ... (X_i = 1 when draw i votes
c_A) are i.i.d. Bernoulli(p), p = p_{c_A}.  Couple the procedure with the *full* sequence
X_1..X_{n_max}: it only ever reads a prefix of it, and S_k = X_1 + ... + X_{n_k} is the same
number whether or not the procedure got that far.  Let E_k = {ClopperPearsonLower(S_k, n_k,
alpha_k) > p}.  Each n_k and alpha_k is fixed in advance, S_k ~ Binomial(n_k, p), so by the
validity of the one-sided Clopper-Pearson bound P(E_k) <= alpha_k.  If the procedure stops at
look k* (a random time) with LB_{k*} > p, then E_{k*} happened; hence
{LB_stop > p} is contained in the union of E_0 .. E_{K-1} and, by the union bound,
P(LB_stop > p) <= sum_k alpha_k <= alpha.  A false certificate at R (output "certified", i.e.
LB_stop > t(R), while p <= t(R)) implies LB_stop > p, so it has probability <= alpha as well.
The bound holds conditionally on every selection outcome, hence unconditionally.  []

Why the futility stop needs no alpha: the union above ranges over *every* look, including those
the procedure never reaches.  Stopping early with "not certified" only removes looks at which a
certificate could have been issued; it cannot add a false certificate, whatever rule (even a
data-dependent heuristic) triggers it.  Futility therefore costs power (certified accuracy),
never validity; the curtailment rule costs neither: it stops only when a certificate is
impossible for every continuation.

Why n0 may be far smaller than Cohen's 100: the selection draws only decide *which* class is
tested; the theorem holds for any selection rule that does not look at the estimation draws,
whatever n0 is.  A small n0 only risks selecting a wrong class, which loses a certificate (the
image ends "not certified"), never creates a false one.  For an image whose top class has
p_A >= t(R) > 1/2 the wrong class wins the selection only if c_A gets <= n0/2 of the n0 votes,
probability <= exp(-2 n0 (p_A - 1/2)^2) (Hoeffding); with fixed-n certification at n = 300 the
images that certify at R have p_A well above t(R), and for p_A >= 0.9, n0 = 10 the failure
probability is P(Binomial(10, 0.9) <= 5) < 0.002.  With Cohen's n = 100,000 the 100 selection
draws are negligible; at the ~30-60 estimation draws an easy image needs here they would
dominate the cost.

Anytime validity beyond the stop: the event "no E_k happens" has probability >= 1 - alpha and on
it *every* look's LB_k is below p, so the running maximum of the LB_k (and any look's radius) is
valid too; we report the LB at the stopping look.

Defaults (n0 = 10, growth 1.5, alpha ratio 0.7, n_max = 768, futility "reach" at beta = 0.2) were
chosen by simulation on Fashion-MNIST test images 500-999; measured results and the proof in
docs/adaptive.md.

Noise: the draws of look k for image ``idx`` come from
:func:`~dp_autoencoder.sampler.sample_votes` with purpose ``f"adaptive-{k}"``, i.e. generators
seeded by (seed, idx, f"adaptive-{k}", block): fresh for each look (never a reuse of another
look's, the selection's (purpose ``"adaptive-selection"``) or fixed-n certify's noise),
reproducible, and independent of which other images are still running or of the batch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm as _norm

from .certificates import _level, _positive, _smoothing_radius
from .stats import clopper_pearson_lower, clopper_pearson_upper

__all__ = [
    "CERTIFIED",
    "CONTINUE",
    "NOT_CERTIFIED",
    "AdaptiveResult",
    "LookPlan",
    "certify_adaptive",
    "decide",
    "first_look_size",
    "look_alphas",
    "look_sizes",
    "needed_successes",
    "operating_characteristics",
    "plan",
    "run_votes",
    "stop_table",
    "radius_threshold",
]

CERTIFIED = "certified"
NOT_CERTIFIED = "not-certified"
CONTINUE = "continue"

SELECTION_PURPOSE = "adaptive-selection"
# Defaults chosen on Fashion-MNIST test images 500-999 (docs/adaptive.md); validity never depends on them.
DEFAULT_N0 = 10
DEFAULT_N_MAX = 768
DEFAULT_GROWTH = 1.5
DEFAULT_RATIO = 0.7
DEFAULT_SLACK = 0
DEFAULT_FUTILITY_BETA = 0.2


def look_purpose(k: int) -> str:
    """The sampler purpose of look k's fresh draws."""
    return f"adaptive-{k}"


# --------------------------------------------------------------------------- validation


def _count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- pure math


def radius_threshold(radius: float, noise: str, scale: float, sensitivity: float) -> float:
    """The probability t(R) that p_A must exceed for a certificate of input-space radius R.

    Gaussian (L2, Cohen et al.): sigma Phi^{-1}(p) / Delta >= R  iff  p >= Phi(R Delta / sigma).
    Laplace (L1, Teng et al.): -b ln(2 (1 - p)) / Delta >= R  iff  p >= 1 - exp(-R Delta / b) / 2.
    R = 0 gives 1/2 (a certificate then only needs p_A > 1/2).  ``scale`` is sigma or b.
    """
    r = float(radius)
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    scale = _positive(scale, "scale")
    sensitivity = _positive(sensitivity, "sensitivity")
    if noise == "gaussian":
        return float(_norm.cdf(r * sensitivity / scale))
    if noise == "laplace":
        return float(1.0 - 0.5 * math.exp(-r * sensitivity / scale))
    raise ValueError(f"unknown noise {noise!r}; expected 'gaussian' or 'laplace'")


def look_sizes(n_first: int, n_max: int, growth: float = 2.0) -> tuple[int, ...]:
    """Cumulative estimation draws at each look: n_k = ceil(n_first growth^k) while < n_max, then n_max.

    A last geometric look closer to n_max than a factor sqrt(growth) is dropped (it would spend a
    share of alpha on a handful of draws): ``look_sizes(32, 1000)`` = (32, 64, 128, 256, 512, 1000) but
    ``look_sizes(25, 512)`` = (25, 50, 100, 200, 512), not (..., 400, 512).  ``n_first == n_max``
    gives the single look of fixed-n certification.
    """
    n_first = _count(n_first, "n_first")
    n_max = _count(n_max, "n_max")
    g = float(growth)
    if not (math.isfinite(g) and g > 1):
        raise ValueError(f"growth must be a finite number > 1, got {growth!r}")
    if n_first > n_max:
        raise ValueError(f"n_first must be <= n_max, got n_first={n_first}, n_max={n_max}")
    sizes = []
    k = 0
    while True:
        n = math.ceil(n_first * g**k - 1e-9)
        if n >= n_max:
            break
        if not sizes or n > sizes[-1]:
            sizes.append(n)
        k += 1
    if len(sizes) > 1 and n_max < sizes[-1] * math.sqrt(g):
        sizes.pop()
    sizes.append(n_max)
    return tuple(sizes)


def look_alphas(alpha: float, num_looks: int, ratio: float = 0.5) -> tuple[float, ...]:
    """Per-look levels: alpha_k = alpha (1 - r) r^k / (1 - r^K), k = 0 .. K-1, summing to exactly alpha.

    A geometric spending schedule normalised over the K looks (r = ``ratio`` in (0, 1]; r = 1 means
    alpha / K each, i.e. Bonferroni).  With r = 1/2 this is alpha 2^-(k+1) scaled up by
    1 / (1 - 2^-K) so the budget the infinite schedule would leave to looks that never come is spent
    instead: the first look, where most images stop, gets just over alpha / 2.  The sum is
    alpha (1 - r) (1 - r^K) / ((1 - r)(1 - r^K)) = alpha; a final rescale guards against rounding so
    it never exceeds alpha in floating point either.
    """
    alpha = _level(alpha, "alpha")
    K = _count(num_looks, "num_looks")
    r = float(ratio)
    if not 0 < r <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    if r == 1:
        out = [alpha / K] * K
    else:
        out = [alpha * (1 - r) * r**k / (1 - r**K) for k in range(K)]
    total = math.fsum(out)
    if total > alpha:
        out = [a * (alpha / total) * (1 - 1e-15) for a in out]
    return tuple(out)


def first_look_size(threshold: float, alpha_first: float, slack: int = 0) -> int:
    """The smallest n at which ``n - slack`` votes out of n certify: ClopperPearsonLower(n - slack, n, alpha_first) > t.

    With slack = 0 this is the fewest draws that can ever certify at the first look,
    n > ln(1/alpha_first) / ln(1/t) (the all-votes bound is alpha_first^{1/n}); a slack of 1-2 lets
    an easy image with one or two stray votes still stop at the first look.
    """
    t = float(threshold)
    if not 0 <= t < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    a = _level(alpha_first, "alpha_first")
    slack = _count(slack, "slack", minimum=0)
    t = max(t, 0.5)
    n = max(slack + 1, math.floor(math.log(1 / a) / math.log(1 / t)))
    while clopper_pearson_lower(n - slack, n, a) <= t:
        n += 1
    return n


def needed_successes(n: int, alpha_k: float, threshold: float) -> int:
    """The fewest votes s out of n with ClopperPearsonLower(s, n, alpha_k) > max(threshold, 1/2); n + 1 if none.

    The lower bound increases with s, so the certificate at a look is exactly "S_k >= s_k"
    (binary search; the counts are what the curtailment and futility rules compare against).
    """
    n = _count(n, "n")
    a = _level(alpha_k, "alpha_k")
    need = max(float(threshold), 0.5)
    if clopper_pearson_lower(n, n, a) <= need:
        return n + 1
    lo, hi = 0, n  # LB(lo) <= need < LB(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if clopper_pearson_lower(mid, n, a) > need:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class LookPlan:
    """The fixed schedule of one adaptive run: cumulative look sizes, their levels, the threshold t(R),
    and the vote counts that certify at each look (:func:`needed_successes`)."""

    sizes: tuple[int, ...]
    alphas: tuple[float, ...]
    threshold: float
    needed: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.sizes) != len(self.alphas) or not self.sizes:
            raise ValueError("sizes and alphas must be non-empty and of the same length")
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or self.sizes[0] < 1:
            raise ValueError(f"look sizes must be increasing and >= 1, got {self.sizes}")
        if any(not 0 < a < 1 for a in self.alphas):
            raise ValueError(f"every alpha_k must be in (0, 1), got {self.alphas}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        needed = tuple(needed_successes(n, a, self.threshold) for n, a in zip(self.sizes, self.alphas))
        if self.needed and tuple(self.needed) != needed:
            raise ValueError("needed must be the certifying counts of sizes/alphas (leave it out)")
        object.__setattr__(self, "needed", needed)

    @property
    def alpha(self) -> float:
        """The total level sum_k alpha_k (the bound on a false certificate)."""
        return math.fsum(self.alphas)

    def reach(self, look: int) -> float:
        """min over later looks j of needed_j / n_j: roughly the smallest p_A that a later look can certify."""
        later = [s / n for s, n in zip(self.needed[look + 1:], self.sizes[look + 1:])]
        return min(later) if later else 1.0


def plan(alpha: float, threshold: float, n_max: int, n_first: int | None = None, growth: float = DEFAULT_GROWTH,
         ratio: float = DEFAULT_RATIO, slack: int = DEFAULT_SLACK) -> LookPlan:
    """A look schedule for one threshold: geometric looks from ``n_first`` to ``n_max`` and their alphas.

    ``n_first=None`` picks it from the threshold: the smallest first look at which an image with at
    most ``slack`` stray votes certifies (:func:`first_look_size`, with alpha_0 as it would be for the
    resulting schedule; iterated because K, hence alpha_0 under uniform spending, depends on it).
    Everything here is fixed before any draw, as the proof requires.
    """
    alpha = _level(alpha, "alpha")
    n_max = _count(n_max, "n_max")
    if n_first is None:
        n_first = 1
        for _ in range(20):  # converges in 1-3 rounds (alpha_0 depends on K only under uniform spending)
            K = len(look_sizes(min(n_first, n_max), n_max, growth))
            a0 = look_alphas(alpha, K, ratio)[0]
            new = min(first_look_size(threshold, a0, slack), n_max)
            if new == n_first:
                break
            n_first = new
    sizes = look_sizes(n_first, n_max, growth)
    return LookPlan(sizes, look_alphas(alpha, len(sizes), ratio), float(threshold))


FUTILITY_RULES = ("none", "threshold", "reach")


def decide(successes: int, look: int, plan: LookPlan, futility_beta: float | None = None,
           futility: str = "reach") -> tuple[str, float, str]:
    """The stop rule at look ``look`` given ``successes`` votes for c_A among plan.sizes[look] draws.

    Returns (decision, LB, reason) with LB = ClopperPearsonLower(successes, n_k, alpha_k) and reason one
    of ``"certified"``, ``"last-look"``, ``"curtailed"``, ``"futility"``, ``"continue"``:

    * CERTIFIED when LB > max(threshold, 1/2) (i.e. successes >= plan.needed[look]);
    * NOT_CERTIFIED at the last look, or when no later look j can certify even if all n_j - n_k further
      draws vote c_A (curtailment: successes + n_j - n_k < needed_j for every j > k), or, when
      ``futility_beta`` is set, when U = ClopperPearsonUpper(successes, n_k, futility_beta) shows the
      goal out of reach: ``futility="threshold"``: U <= t(R) (p_A cannot exceed t(R) at all);
      ``"reach"`` (default): U < plan.reach(look) (p_A is below what any later look needs to certify,
      so even the largest look would most likely fail); ``"none"``: curtailment only;
    * CONTINUE otherwise.

    The futility rules only ever answer "not certified": they change power, never validity.
    """
    K = len(plan.sizes)
    if not 0 <= look < K:
        raise ValueError(f"look must be in [0, {K}), got {look}")
    if futility not in FUTILITY_RULES:
        raise ValueError(f"unknown futility rule {futility!r}; expected one of {', '.join(FUTILITY_RULES)}")
    n = plan.sizes[look]
    s = _count(successes, "successes", minimum=0)
    if s > n:
        raise ValueError(f"successes must be <= n_k = {n}, got {s}")
    lb = float(clopper_pearson_lower(s, n, plan.alphas[look]))
    if s >= plan.needed[look]:
        return CERTIFIED, lb, "certified"
    if look == K - 1:
        return NOT_CERTIFIED, lb, "last-look"
    if all(s + plan.sizes[j] - n < plan.needed[j] for j in range(look + 1, K)):
        return NOT_CERTIFIED, lb, "curtailed"
    if futility_beta is not None and futility != "none":
        upper = float(clopper_pearson_upper(s, n, _level(futility_beta, "futility_beta")))
        target = plan.threshold if futility == "threshold" else plan.reach(look)
        if upper <= target if futility == "threshold" else upper < target:
            return NOT_CERTIFIED, lb, "futility"
    return CONTINUE, lb, "continue"


def run_votes(votes, plan: LookPlan, futility_beta: float | None = None,
              futility: str = "reach") -> tuple[str, float, int, int, str]:
    """The sequential test on a given 0/1 vote sequence (at least plan.sizes[-1] long, or long enough).

    Returns (decision, LB at the stop, estimation draws used, looks taken, reason).  Used by the simulations
    and tests; :func:`certify_adaptive` runs the same rule on model votes.
    """
    v = np.asarray(votes)
    prev = 0
    s = 0
    for k, n in enumerate(plan.sizes):
        s += int(v[prev:n].sum())
        prev = n
        decision, lb, reason = decide(s, k, plan, futility_beta, futility)
        if decision != CONTINUE:
            return decision, lb, n, k + 1, reason
    raise AssertionError("unreachable: the last look always decides")


def stop_table(look: int, plan: LookPlan, futility_beta: float | None = None,
               futility: str = "reach") -> tuple[np.ndarray, np.ndarray]:
    """:func:`decide` for every possible count s = 0 .. n_k at once: boolean arrays (certified, stopped)."""
    K = len(plan.sizes)
    n = plan.sizes[look]
    s = np.arange(n + 1)
    certified = s >= plan.needed[look]
    if look == K - 1:
        return certified, np.ones(n + 1, bool)
    curtailed = np.ones(n + 1, bool)
    for j in range(look + 1, K):
        curtailed &= s + plan.sizes[j] - n < plan.needed[j]
    stopped = certified | curtailed
    if futility_beta is not None and futility != "none":
        upper = np.asarray(clopper_pearson_upper(s, np.full(n + 1, n), futility_beta))
        stopped |= (upper <= plan.threshold) if futility == "threshold" else (upper < plan.reach(look))
    return certified, stopped


def operating_characteristics(p: float, plan: LookPlan, futility_beta: float | None = None,
                              futility: str = "reach") -> tuple[float, float]:
    """Exact (P(certified), E[estimation draws]) of the sequential test when every vote is Bernoulli(p).

    Dynamic programming over the count S_k of the paths still running at look k (no simulation).
    At p <= t(R), P(certified) is the exact probability of a false certificate, <= sum_k alpha_k by
    the theorem of the module doc.
    """
    from scipy.stats import binom

    p = float(p)
    if not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    alive = np.array([1.0])  # distribution of S over running paths (mass < 1 after stops)
    prev = 0
    p_cert = 0.0
    mean_n = 0.0
    for k, n in enumerate(plan.sizes):
        step = binom.pmf(np.arange(n - prev + 1), n - prev, p)
        alive = np.convolve(alive, step)
        certified, stopped = stop_table(k, plan, futility_beta, futility)
        p_cert += float(alive[certified].sum())
        mean_n += n * float(alive[stopped].sum())
        alive = np.where(stopped, 0.0, alive)
        prev = n
    return p_cert, mean_n


# --------------------------------------------------------------------------- model runs


@dataclass(frozen=True)
class AdaptiveResult:
    """One image's adaptive certificate at the requested radius.

    ``predict``: c_A, or -1 (abstain) when LB <= 1/2; ``certified``: certified at the requested
    radius; ``p_a_lower``: the Clopper-Pearson lower bound at the stopping look (level alpha_k);
    ``radius``: the radius from it (valid at level alpha, >= the requested one when certified; -1.0
    when abstaining); ``selected``: c_A whatever the outcome; ``successes``/``n``: votes for c_A
    among the n estimation draws; ``draws``: n0 + n; ``looks``: looks taken; ``stop``: why it stopped
    (``"certified"``, ``"futility"``, ``"curtailed"`` or ``"last-look"``, see :func:`decide`).
    """

    idx: int
    predict: int
    certified: bool
    p_a_lower: float
    radius: float
    selected: int
    successes: int
    n: int
    draws: int
    looks: int
    stop: str

    def to_json(self) -> dict:
        return asdict(self)


def certify_adaptive(model, z, indices, image_size, num_classes: int, radius: float, *, noise: str, scale: float,
                     sensitivity: float, alpha: float = 0.001, n0: int = DEFAULT_N0, n_max: int = DEFAULT_N_MAX,
                     n_first: int | None = None, growth: float = DEFAULT_GROWTH, ratio: float = DEFAULT_RATIO,
                     slack: int = DEFAULT_SLACK,
                     futility: str = "reach", futility_beta: float | None = DEFAULT_FUTILITY_BETA, seed: int = 0,
                     batch_size: int = 256, autocast_dtype=None) -> list[AdaptiveResult]:
    """Adaptive randomized-smoothing certificates at ``radius`` for a batch of images (see the module doc).

    ``z``: the images' pre-noise features (``model.pre_noise(x)``), ``indices``: their dataset ids
    (they seed the noise), ``image_size``: (H, W).  ``noise``/``scale``/``sensitivity``: the noise
    kind, sigma or b, and Delta, as in :func:`~dp_autoencoder.certificates.smoothed_certify`;
    ``radius`` is in input space like ``dpae certify``'s radius column.  ``alpha``: the total failure
    probability, spent over the looks of :func:`plan` (``n_first``, ``n_max``, ``growth``, ``ratio``,
    ``slack``); ``n0``: selection draws; ``futility``/``futility_beta``: the futility stop of
    :func:`decide` (power only, never validity).  All still-undecided images draw look k's fresh
    noise together, in one :func:`~dp_autoencoder.sampler.sample_votes` call with purpose
    ``f"adaptive-{k}"``.  Returns one :class:`AdaptiveResult` per image, in order.
    """
    from .sampler import sample_votes

    n0 = _count(n0, "n0")
    threshold = radius_threshold(radius, noise, scale, sensitivity)
    look_plan = plan(alpha, threshold, n_max, n_first, growth, ratio, slack)
    if futility_beta is not None:
        _level(futility_beta, "futility_beta")
    if futility not in FUTILITY_RULES:
        raise ValueError(f"unknown futility rule {futility!r}; expected one of {', '.join(FUTILITY_RULES)}")
    indices = [int(i) for i in indices]
    if len(indices) != len(z):
        raise ValueError(f"got {len(z)} feature rows but {len(indices)} indices")
    common = dict(num_classes=num_classes, image_size=tuple(image_size), seed=seed, batch_size=batch_size,
                  autocast_dtype=autocast_dtype)
    if not indices:
        return []
    selection = sample_votes(model, z, indices, n0, purpose=SELECTION_PURPOSE, **common).counts.cpu().numpy()
    selected = [int(np.argmax(c)) for c in selection]  # ties -> lowest id
    successes = [0] * len(indices)
    outcome: dict[int, tuple[str, float, int, int, str]] = {}
    active = list(range(len(indices)))
    prev = 0
    for k, n_k in enumerate(look_plan.sizes):
        if not active:
            break
        counts = sample_votes(model, z[active], [indices[i] for i in active], n_k - prev,
                              purpose=look_purpose(k), **common).counts.cpu().numpy()
        prev = n_k
        still = []
        for row, i in enumerate(active):
            successes[i] += int(counts[row, selected[i]])
            decision, lb, reason = decide(successes[i], k, look_plan, futility_beta, futility)
            if decision == CONTINUE:
                still.append(i)
            else:
                outcome[i] = (decision, lb, n_k, k + 1, reason)
        active = still
    results = []
    for i, idx in enumerate(indices):
        decision, lb, n, looks, reason = outcome[i]
        abstain = lb <= 0.5
        results.append(AdaptiveResult(
            idx=idx, predict=-1 if abstain else selected[i], certified=decision == CERTIFIED, p_a_lower=lb,
            radius=-1.0 if abstain else float(_smoothing_radius(noise, lb, scale, sensitivity)), selected=selected[i],
            successes=successes[i], n=n, draws=n0 + n, looks=looks, stop=reason))
    return results
