"""Soundness audit: attacks inside the certified radius must not change a certified prediction.

For every image that a ``dpae certify`` run certified, and for each bound separately:

* randomized smoothing, class c with input-space L2 radius r > 0 (Cohen et al., CERTIFY with failure
  probability alpha_cert): attack at budget 0.999 r;
* PixelDP, class c with robustness size s > 0 (Prop. 2 with confidence eta): attack at 0.999 s.

Candidate attacks, all with expectation over the noise and all inside the ball of radius budget:

* ``pgd``: two PGD-L2 attacks (:func:`~dp_autoencoder.attacks.pgd`), untargeted (away from c) and
  targeted at the runner-up class (the second most voted class of the certify run's votes; the
  undefended classifier's second class when no other class got a vote);
* ``cw``: Carlini-Wagner L2 (:func:`~dp_autoencoder.cw.carlini_wagner`, untargeted), which looks for
  the *smallest* perturbation that moves the mean-softmax argmax.  Its perturbation is scaled back
  to the budget where it is longer ("cw"); where it is shorter, the same direction is also tried
  stretched to the budget ("cw-to-budget", clipped to [0, 1], which can only shorten it), since a
  point just past the boundary barely moves the votes.  Adam's learning rate is
  ``cw_lr_factor`` x budget / sqrt(pixels), so its first steps have about that fraction of the budget.

``n_select`` fresh draws at each candidate pick the most damaging one (fewest votes for c for
smoothing; smallest lead of c over the best other class for PixelDP; ties go to the first listed,
PGD before C&W), recorded as ``chosen`` (and ``winner``: pgd or cw); then ``n`` fresh draws at the
chosen x' test the certified statement.  Every draw here comes from sampler purposes of its own,
independent of the certify run's draws and of the attacks' EOT noise; selecting the candidate on
separate draws keeps exactly one test per image and bound, so the test's level holds.  The noisy
forwards (attacks, selection and test) run at the certify run's precision (``precision``: fp32 or
autocast bf16/fp16), because the certificate is about the classifier as it was run.

What is tested, and when a violation is counted:

* smoothing guarantees p_c(x') = P(f(x' + noise) = c) > 1/2 for ||x' - x||_2 < r (more precisely
  p_c(x') >= Phi(Phi^{-1}(p_A) - Delta ||x' - x|| / sigma) >= 1/2).  Violation: the one-sided
  (1 - alpha) Clopper-Pearson upper bound on p_c(x') from the test votes is below 1/2 — a
  statistically significant breach, not a noisy estimate dipping under 1/2.  ``violation_vs_bound``
  applies the same test to the sharper statement Phi(Phi^{-1}(p_A) - Delta ||delta|| / sigma).
* PixelDP guarantees (Prop. 1) that c keeps the largest expected score: E[A_c(x')] > E[A_i(x')] for
  all i != c, with A the one-hot argmax, so E[A_i(x')] = p_i(x').  Violation: simultaneous
  Clopper-Pearson intervals at level alpha (Bonferroni over the K classes) put c's upper bound below
  another class's lower bound.

Reading the counts.  A violation can come from (a) a false certificate: the certify run's confidence
bound failed, probability <= alpha_cert per certified image for smoothing (the run's ``alpha``) and
<= 1 - eta for PixelDP; (b) a false alarm of the audit's own test, probability <= alpha per image;
(c) a real unsoundness (a wrong sensitivity Delta, a miscalibrated noise, a bug).  Under (a) and (b)
alone the number of violations is stochastically dominated by Binomial(N, alpha_cert + alpha), so the
summary reports the expected number of false certificates alpha_cert N, of false alarms alpha N, and
the p-value P(Binomial(N, alpha_cert + alpha) >= violations): "0 violations" is the expected outcome,
and a small p-value points at (c).  ``majority_changed`` (the raw count of images whose majority vote
at x' is not c) is reported too; near the radius p_c(x') may legitimately be close to 1/2, so a changed
majority alone proves nothing.  An attack that fails to find a violation is, of course, no proof of
soundness: the audit can refute a certificate, never prove it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom as _binom
from scipy.stats import norm as _norm

from .attacks import BOUNDS, LOSSES, AttackError, append_records, pgd, prepare_run
from .certify import dense, read_records, run_context, sparse
from .cw import carlini_wagner
from .checkpoint import atomic_write_json
from .sampler import sample_votes
from .stats import clopper_pearson_upper, simultaneous_clopper_pearson

SIZE_KEY = {"smoothing": "radius", "pixeldp": "pixeldp_size"}
CLASS_KEY = {"smoothing": "predict", "pixeldp": "pixeldp_predict"}
AUDIT_ATTACKS = ("pgd", "cw")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What audit run.json files from before these options were added ran with.
AUDIT_DEFAULTS_BEFORE = {"attacks": ["pgd"], "precision": "fp32"}


@dataclass(frozen=True)
class AuditSettings:
    bounds: tuple = BOUNDS
    attacks: tuple = AUDIT_ATTACKS
    steps: int = 40
    restarts: int = 2
    eot: int = 16
    loss: str = "margin"  # the stronger objective in our tests (see the module docstring)
    n_select: int = 100
    n: int = 1000
    alpha: float = 0.001
    budget_factor: float = 0.999
    cw_steps: int = 20  # Adam steps per constant
    cw_search_steps: int = 4  # binary-search rounds over c
    cw_lr_factor: float = 0.25  # Adam's learning rate = factor x budget / sqrt(pixels)
    cw_const: float = 1.0  # the first c
    precision: str = "fp32"  # the certify run's: the noisy forwards run at it
    max: int | None = None
    seed: int = 0
    batch_size: int = 256
    sources: tuple = ()  # (autoencoder sha, classifier identity, data, certify folder)

    def check(self) -> None:
        if not self.bounds or any(b not in BOUNDS for b in self.bounds):
            raise AttackError(f"--bounds must be a comma list of {', '.join(BOUNDS)}, got {','.join(self.bounds)!r}")
        if not self.attacks or any(a not in AUDIT_ATTACKS for a in self.attacks) or \
                len(set(self.attacks)) != len(self.attacks):
            raise AttackError(f"--attacks must be a comma list of {', '.join(AUDIT_ATTACKS)}, got "
                              f"{','.join(self.attacks)!r}")
        if self.precision not in PRECISIONS:
            raise AttackError(f"precision must be one of {', '.join(PRECISIONS)} (the certify run's), got "
                              f"{self.precision!r}")
        for name in ("cw_steps", "cw_search_steps"):
            if getattr(self, name) < 1:
                raise AttackError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("cw_lr_factor", "cw_const"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise AttackError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
        if self.loss not in LOSSES:
            raise AttackError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("steps", "restarts", "eot", "n_select", "n", "batch_size"):
            if getattr(self, name) < 1:
                raise AttackError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max is not None and self.max < 1:
            raise AttackError(f"--max must be >= 1, got {self.max}")
        if not 0 < self.alpha < 1:
            raise AttackError(f"--alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.budget_factor <= 1:
            raise AttackError(f"--budget-factor must be in (0, 1], got {self.budget_factor}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["bounds"] = list(self.bounds)
        d["attacks"] = list(self.attacks)
        d["sources"] = [list(s) if isinstance(s, tuple) else s for s in self.sources]
        return d


# --------------------------------------------------------------------------- the statistics


def smoothing_violation(count_c: int, n: int, alpha: float, level: float = 0.5) -> tuple[bool, float]:
    """(violated, upper): the one-sided (1 - alpha) Clopper-Pearson upper bound on p_c is below ``level``."""
    upper = float(clopper_pearson_upper(count_c, n, alpha))
    return upper < level, upper


def smoothing_guaranteed_probability(p_a_lower: float, distance: float, sigma: float, sensitivity: float) -> float:
    """Cohen et al.'s bound at distance ||delta||: p_c(x + delta) >= Phi(Phi^{-1}(p_A) - Delta ||delta|| / sigma)."""
    return float(_norm.cdf(_norm.ppf(p_a_lower) - sensitivity * distance / sigma))


def pixeldp_violation(counts, c: int, alpha: float) -> tuple[bool, float, float]:
    """(violated, upper_c, max_{i != c} lower_i) from simultaneous (1 - alpha) Clopper-Pearson intervals."""
    counts = np.asarray(counts)
    lower, upper = simultaneous_clopper_pearson(counts, alpha)
    other = float(np.max(np.delete(lower, c)))
    return bool(upper[c] < other), float(upper[c]), other


def false_alarm_pvalue(violations: int, audited: int, rate: float) -> float:
    """P(Binomial(audited, rate) >= violations): how surprising the count is if every certificate is sound."""
    if violations <= 0:
        return 1.0
    return float(_binom.sf(violations - 1, audited, min(rate, 1.0)))


# --------------------------------------------------------------------------- one image


def runner_up(record: dict, c: int, num_classes: int, fallback_scores: torch.Tensor) -> int:
    """The second class: most voted other class in the certify votes, else the undefended classifier's."""
    for key in ("counts", "selection_counts"):
        votes = dense(record.get(key) or {}, num_classes)
        votes[c] = -1
        if votes.max() > 0:
            return int(np.argmax(votes))
    scores = fallback_scores.clone().float()
    scores[c] = float("-inf")
    return int(scores.argmax())


def _votes(model, x, idx, num, purpose, settings, num_classes) -> np.ndarray:
    with torch.inference_mode():
        z = model.pre_noise(x)
    return sample_votes(model, z, [idx], num, num_classes, tuple(x.shape[-2:]), settings.seed, purpose,
                        settings.batch_size, autocast_dtype=PRECISIONS[settings.precision]).counts[0].cpu().numpy()


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).flatten().norm())


def into_ball(x: torch.Tensor, x_adv: torch.Tensor, budget: float, stretch: bool = False) -> torch.Tensor:
    """x + delta scaled back into the L2 ball of radius ``budget`` (or, with ``stretch``, onto its sphere),
    clipped to [0, 1] (clipping only shrinks |delta_i|).  The distance is checked on the image as stored:
    rounding x + delta to float32 can lengthen a tiny delta by ~0.1% (224 x 224 photos, budgets ~0.002), so
    the scale is tightened until the stored image lies inside the ball."""
    norm = _distance(x_adv, x)
    if norm == 0 or (norm <= budget and not stretch):
        return x_adv
    delta, target = (x_adv - x).double(), budget * (1 - 1e-6)
    for _ in range(20):
        out = (x.double() + delta * (target / norm)).clamp(0, 1).to(x.dtype)
        if _distance(out, x) <= budget:
            return out
        target *= 0.999
    return x  # never reached in practice; the unattacked image is inside any ball


def candidate_attacks(model, x, c: int, second: int, budget: float, idx: int, bound: str,
                      settings: AuditSettings) -> dict:
    """The candidate attacked images inside the ball (see the module docstring), by name."""
    amp = PRECISIONS[settings.precision]
    out = {}
    if "pgd" in settings.attacks:
        common = dict(norm="l2", steps=settings.steps, restarts=settings.restarts, eot=settings.eot,
                      loss=settings.loss, seed=settings.seed, autocast_dtype=amp)
        out["pgd-untargeted"] = pgd(model, x, [c], budget, keys=[(idx, "audit", bound, "untargeted")], **common).x_adv
        out["pgd-targeted"] = pgd(model, x, [c], budget, target=[second], keys=[(idx, "audit", bound, "targeted")],
                                  **common).x_adv
    if "cw" in settings.attacks and budget > 0:
        lr = settings.cw_lr_factor * budget / float(np.sqrt(x[0].numel()))
        found = carlini_wagner(model, x, [c], steps=settings.cw_steps, search_steps=settings.cw_search_steps,
                               initial_const=settings.cw_const, lr=lr, eot=settings.eot, seed=settings.seed,
                               keys=[(idx, "audit", bound, "cw")], line_search=(1.0,),  # stretched below instead
                               autocast_dtype=amp).x_adv
        out["cw"] = into_ball(x, found, budget)
        norm = _distance(found, x)
        if 0 < norm < budget:
            out["cw-to-budget"] = into_ball(x, found, budget, stretch=True)
    return out


def _damage(bound: str, counts: np.ndarray, c: int) -> float:
    """Lower is more damaging: votes for c (smoothing), or c's lead over the best other class (PixelDP)."""
    if bound == "smoothing":
        return float(counts[c])
    return float(counts[c] - np.max(np.delete(counts, c)))


def audit_image(model, x: torch.Tensor, record: dict, bound: str, settings: AuditSettings, num_classes: int) -> dict:
    """Attack one certified image inside its certificate and test the certified statement (see the docstring)."""
    t0 = time.perf_counter()
    idx = int(record["idx"])
    c = int(record[CLASS_KEY[bound]])
    size = float(record[SIZE_KEY[bound]])
    budget = settings.budget_factor * size
    with torch.inference_mode():
        scores = model.classifier(x)[0]
    second = runner_up(record, c, num_classes, scores)
    candidates = {name: into_ball(x, a, budget)  # PGD's float32 projection can overshoot like C&W's scaling
                  for name, a in candidate_attacks(model, x, c, second, budget, idx, bound, settings).items()}
    attack_seconds = time.perf_counter() - t0
    # sampler purposes as before C&W joined, so a PGD-only audit draws the same noise as before
    purpose = {"pgd-untargeted": "untargeted", "pgd-targeted": "targeted"}
    select = {name: _votes(model, a, idx, settings.n_select, f"audit-{bound}-select-{purpose.get(name, name)}",
                           settings, num_classes) for name, a in candidates.items()}
    chosen = min(candidates, key=lambda name: _damage(bound, select[name], c))  # ties -> the first listed
    x_adv = candidates[chosen]
    counts = _votes(model, x_adv, idx, settings.n, f"audit-{bound}-test", settings, num_classes)
    distances = {name: _distance(a, x) for name, a in candidates.items()}
    distance = distances[chosen]
    rec = {"idx": idx, "label": int(record["label"]), "bound": bound, "certified_class": c, "certified_size": size,
           "budget": budget, "runner_up": second, "chosen": chosen, "winner": chosen.split("-")[0],
           "distance": distance, "within_budget": bool(distance <= budget),
           "distances": distances, "precision": settings.precision, "attack_time": attack_seconds,
           "select_counts": {name: sparse(v) for name, v in select.items()}, "counts": sparse(counts), "n": settings.n,
           "p_c_hat": float(counts[c] / settings.n), "majority": int(np.argmax(counts)),
           "majority_changed": bool(int(np.argmax(counts)) != c), "alpha": settings.alpha}
    if bound == "smoothing":
        violated, upper = smoothing_violation(int(counts[c]), settings.n, settings.alpha)
        guaranteed = smoothing_guaranteed_probability(record["p_a_lower"], distance, record["scale"],
                                                      record["sensitivity"])
        rec.update(p_c_upper=upper, violation=violated, guaranteed_p_c=guaranteed,
                   violation_vs_bound=bool(upper < guaranteed), certificate_failure_rate=float(record["alpha"]))
    else:
        violated, upper, other = pixeldp_violation(counts, c, settings.alpha)
        rec.update(p_c_upper=upper, other_lower=other, violation=violated,
                   certificate_failure_rate=float(1 - record["eta"]),
                   pixeldp_profile=record.get("pixeldp_profile", "classical"))  # how the audited size was read
    rec["time"] = time.perf_counter() - t0
    return rec


# --------------------------------------------------------------------------- the run


def certified_records(records: list[dict], bounds, max_images: int | None) -> list[tuple[dict, str]]:
    """(record, bound) pairs to audit: images certified by a bound, the first ``max_images`` such images."""
    ok = sorted((r for r in records if r.get("status", "ok") == "ok"), key=lambda r: r["idx"])
    chosen = [r for r in ok if any(r[SIZE_KEY[b]] > 0 for b in bounds)]
    if max_images is not None:
        chosen = chosen[:max_images]
    return [(r, b) for r in chosen for b in bounds if r[SIZE_KEY[b]] > 0]


def check_certify_records(records: list[dict]) -> None:
    if not records:
        raise AttackError("the certify folder holds no certify.jsonl records")
    kinds = {r.get("noise") for r in records if r.get("status", "ok") == "ok"}
    if kinds - {"gaussian"}:
        raise AttackError(f"the audit attacks in L2 and needs Gaussian-noise certificates; the certify run used "
                          f"{', '.join(sorted(k for k in kinds if k))} noise (L1 certificates)")


def summarize_audit(records: list[dict], bounds) -> dict:
    out = {}
    for bound in bounds:
        rows = [r for r in records if r["bound"] == bound]
        n = len(rows)
        cert_rate = float(np.mean([r["certificate_failure_rate"] for r in rows])) if rows else 0.0
        alpha = rows[0]["alpha"] if rows else None
        violations = sum(r["violation"] for r in rows)
        s = {"audited": n, "violations": violations, "majority_changed": sum(r["majority_changed"] for r in rows),
             "attacks_over_budget": sum(not r["within_budget"] for r in rows),
             "mean_budget": float(np.mean([r["budget"] for r in rows])) if rows else None,
             "mean_distance": float(np.mean([r["distance"] for r in rows])) if rows else None,
             "mean_p_c_hat": float(np.mean([r["p_c_hat"] for r in rows])) if rows else None,
             "min_p_c_upper": float(min(r["p_c_upper"] for r in rows)) if rows else None,
             "chosen": {name: sum(r["chosen"] == name for r in rows) for name in sorted({r["chosen"] for r in rows})},
             "won_by_cw": sum(r.get("winner") == "cw" for r in rows),
             "precision": rows[0].get("precision", "fp32") if rows else None,
             "certificate_failure_rate": cert_rate, "alpha_audit": alpha,
             "expected_false_certificates": cert_rate * n, "expected_false_alarms": (alpha or 0.0) * n,
             "p_value": false_alarm_pvalue(violations, n, cert_rate + (alpha or 0.0))}
        if bound == "smoothing":
            s["violations_vs_bound"] = sum(r["violation_vs_bound"] for r in rows)
        out[bound] = s
    return out


def format_audit(summary: dict) -> str:
    lines = []
    for bound, s in summary.items():
        name = "randomized smoothing" if bound == "smoothing" else "PixelDP"
        if not s["audited"]:
            lines.append(f"{name}: no certified image to audit")
            continue
        extra = (f" ({s['violations_vs_bound']} against the sharper bound Phi(Phi^-1(p_A) - Delta d / sigma))"
                 if bound == "smoothing" else "")
        lines.append(
            f"{name}: {s['audited']} certified images attacked at {s['mean_budget']:.3f} mean budget "
            f"(mean distance {s['mean_distance']:.3f}); significant violations {s['violations']}{extra}; "
            f"majority vote changed {s['majority_changed']}; mean p_c at x' {s['mean_p_c_hat']:.3f}")
        if s.get("chosen"):
            lines.append("  strongest attack per image: " + ", ".join(f"{k} {v}" for k, v in s["chosen"].items()) +
                         f" (C&W won {s['won_by_cw']}); noisy forwards at {s['precision']}")
        lines.append(
            f"  expected if every certificate is sound: false certificates {s['expected_false_certificates']:.3f} "
            f"(rate {s['certificate_failure_rate']:g}) + audit false alarms {s['expected_false_alarms']:.3f} "
            f"(alpha {s['alpha_audit']:g}); p-value of the observed count {s['p_value']:.3g}")
    return "\n".join(lines)


def audit_certified(model, dataset, certify_records: list[dict], settings: AuditSettings, out, num_classes: int,
                    device="cpu", progress: bool = True) -> dict:
    """Audit the certified images of a certify run into ``out`` (audit.jsonl + summary.json; resumable)."""
    from tqdm import tqdm

    settings.check()
    check_certify_records(certify_records)
    out = Path(out)
    pairs = certified_records(certify_records, settings.bounds, settings.max)
    prepare_run(out, settings.to_json(), ignore=("batch_size",), defaults=AUDIT_DEFAULTS_BEFORE,
                context=run_context(dataset, device))
    main_file = out / "audit.jsonl"
    done = {(r["idx"], r["bound"]) for r in read_records(main_file, repair=True)}
    todo = [(r, b) for r, b in pairs if (r["idx"], b) not in done]
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="audit", disable=not progress, dynamic_ncols=True)
    violations = {b: 0 for b in settings.bounds}
    with open(main_file, "a") as f:
        for record, bound in todo:
            x, label = dataset[record["idx"]]
            if int(label) != int(record["label"]):
                raise AttackError(f"image {record['idx']} has label {int(label)} here but {record['label']} in the "
                                  "certify run: not the same data (--data, --data-root, --labels)")
            rec = audit_image(model, x.unsqueeze(0).to(device), record, bound, settings, num_classes)
            append_records(f, [rec])
            violations[bound] += rec["violation"]
            bar.update(1)
            bar.set_postfix({f"violations_{b}": v for b, v in violations.items()})
    bar.close()
    by_key = {(r["idx"], r["bound"]): r for r in read_records(main_file)}
    records = [by_key[(r["idx"], b)] for r, b in pairs if (r["idx"], b) in by_key]
    summary = summarize_audit(records, settings.bounds)
    atomic_write_json(out / "summary.json", summary)
    return summary
