"""Measured failure rates of every confidence bound and certificate, by simulation.

    python tools/simulate_bounds.py --trials 100000 --alpha 0.05

A bound "fails" when it excludes the true value (or certifies a wrong class / a radius beyond the
true one); each rate must be at most alpha up to simulation error.
"""

import argparse
import math
import sys

import numpy as np
from scipy.stats import norm
from tqdm import tqdm

from dp_autoencoder import certificates as C
from dp_autoencoder import stats as S


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr; the rates to stdout)")
    args = p.parse_args()
    rng, a, t = np.random.default_rng(args.seed), args.alpha, args.trials
    rows = []
    for prob, n in [(0.3, 100), (0.9, 300), (0.02, 300)]:
        k = rng.binomial(n, prob, t)
        lo2, up2 = S.clopper_pearson_interval(k, n, a)
        rows += [(f"CP one-sided lower  p={prob} n={n}", np.mean(S.clopper_pearson_lower(k, n, a) > prob)),
                 (f"CP one-sided upper  p={prob} n={n}", np.mean(S.clopper_pearson_upper(k, n, a) < prob)),
                 (f"CP two-sided        p={prob} n={n}", np.mean((lo2 > prob) | (up2 < prob)))]
    probs = np.array([0.55, 0.25, 0.1, 0.05, 0.05])
    counts = rng.multinomial(300, probs, t)
    lo, up = S.simultaneous_clopper_pearson(counts, a)
    rows.append(("simultaneous CP, K=5, n=300", np.mean(np.any((lo > probs) | (up < probs), axis=1))))
    x = rng.beta(2.0, 5.0, (min(t, 20_000), 100))
    mean, var, true = x.mean(1), x.var(1, ddof=1), 2 / 7
    rows += [("Hoeffding lower, Beta(2,5), n=100", np.mean(S.hoeffding_lower(mean, 100, a) > true)),
             ("empirical Bernstein lower, n=100", np.mean(S.empirical_bernstein_lower(mean, var, 100, a) > true))]
    probs = np.array([0.52, 0.46, 0.02])
    true_radius = norm.ppf(probs[0])
    m = min(t, 20_000)
    smooth = pixeldp = 0
    for _ in tqdm(range(m), desc="simulate: certificate trials", unit="trial", dynamic_ncols=True, file=sys.stderr,
                  disable=args.quiet):
        sel, est = rng.multinomial(20, probs), rng.multinomial(300, probs)
        s = C.smoothed_certify(sel, est, a, "gaussian", 1.0, 1.0)
        smooth += (s.predict not in (0, C.ABSTAIN)) or s.radius > true_radius
        cert = C.pixeldp_certify(est, 1 - a, "gaussian", 1.0, 1.0, 1.0, 0.05)
        pixeldp += cert.predict != 0 and cert.size > 0
    rows += [("smoothing: wrong class or radius > true, n=300", smooth / m),
             (f"PixelDP ({C.DEFAULT_PIXELDP_PROFILE}): wrong class certified, n=300", pixeldp / m)]
    print(f"alpha = {a}; each rate must be <= alpha (+ 3 s.e. = {3 * math.sqrt(a * (1 - a) / t):.4f})")
    for name, rate in rows:
        print(f"{name:50s} {rate:.4f}")


if __name__ == "__main__":
    main()
