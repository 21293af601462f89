"""Attacks with expectation over the noise, and the defended model's accuracy and certificates under them.

PGD (Madry et al., ICLR 2018) in L2 or Linf on [0, 1] images: a random start in the ball, ``steps``
ascent steps of size ``step_size`` (default 2.5 eps / steps, Madry's choice) along the normalized
gradient (L2) or its sign (Linf), each followed by the projection onto the ball and onto the image
domain [0, 1] (clipping a coordinate can only shrink |delta_i|, so the result stays in the ball).
``restarts`` independent random starts; per image the candidate with the largest final margin is kept
(a successful one, margin > 0, whenever a restart found one).

Expectation over transformation (Athalye et al., ICML 2018) for the noisy defended model: each
gradient step averages ``eot`` fresh noise draws.  The objective is the cross-entropy of the *mean
softmax* over the draws, -log((1/eot) sum_e softmax(f(x + noise_e))_y) (``loss="ce"``, the default),
the surrogate Salman et al. (NeurIPS 2019, "SmoothAdv") use for smoothed classifiers: the mean
softmax estimates the smoothed soft classifier, whose argmax is what the certificate speaks about,
whereas the mean of per-draw cross-entropies over-weights draws that are already misclassified with
low confidence.  ``loss="margin"`` maximizes max_{j != y} log pbar_j - log pbar_y on the same mean
softmax pbar (Carlini-Wagner's margin; for a noise-free model it is exactly the logit margin).
``dpae attack`` and ``dpae audit`` default to the margin: on 5-class linear models PGD with it reached
the analytic minimal perturbation (at 1.01x) in 19 of 20 cases against 4-9 of 20 with ce, and on real
images it was at least as strong.  :func:`pgd` itself keeps ``loss="ce"`` as its default.
Targeted attacks (``target``) maximize log pbar_t (ce) or log pbar_t - max_{j != t} log pbar_j.

Models: any ``nn.Module`` mapping [0, 1] images to logits.  A model with the sampler's protocol
(``pre_noise``, ``sample_noise``, ``logits_from_noisy``: :class:`~dp_autoencoder.stack.DefendedClassifier`)
gets its noise from one generator per image and purpose, derived from (seed, key, ...) like the
sampler's, so an image's attack does not depend on the other images in its batch; a module whose
``forward`` takes ``generator=`` gets one generator per batch; any other module is deterministic and
``eot`` is ignored.  Gradients reach the input only (``torch.autograd.grad`` with respect to delta):
the weights get no ``.grad`` and are never changed.

Evaluation under attack (:func:`attack_dataset`, ``dpae attack``): for each image and budget t, the
undefended classifier and the defended stack (with EOT) are attacked; the defended prediction on the
attacked image comes from n0 + n fresh draws (sampler purposes distinct from the attack's noise and
from ``dpae certify``'s), read as Cohen et al.'s CERTIFY (smoothed radius), PREDICT (abstention),
the plain majority, and PixelDP's Prop. 2 size.  Per budget: accuracy under attack, and the paper's
Fig. 5 metrics at T in ``THRESHOLDS``: robust precision (correct among those certified at >= T on the
attacked input) and certified fraction.  Images without a label (-1) are scored against the
undefended classifier's clean prediction ("reference").

``method="cw"`` (``dpae attack --method cw``) runs Carlini-Wagner L2 instead (:mod:`dp_autoencoder.cw`):
per image and target the smallest perturbation found, and accuracy at each budget read from it.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .certificates import smoothed_predict
from .certify import (CertifyError, append_records, certificates, check_run_context, read_records, run_context,
                      selected_indices, sparse)
from .checkpoint import atomic_write_json
from .sampler import sample_votes
from .seeding import generator

NORMS = ("l2", "linf")
LOSSES = ("ce", "margin")
THRESHOLDS = (0.05, 0.1)
BOUNDS = ("smoothing", "pixeldp")


class AttackError(CertifyError):
    """Settings, data or an output folder that an attack or an audit cannot use."""


# --------------------------------------------------------------------------- the attack


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # (B, C, H, W) in [0, 1]
    norm: torch.Tensor  # (B,) ||x_adv - x|| in the attack's norm
    margin: torch.Tensor  # (B,) success margin on the final evaluation draws (> 0: success)
    success: torch.Tensor  # (B,) bool, margin > 0


def has_noise_protocol(model) -> bool:
    return all(hasattr(model, a) for a in ("pre_noise", "sample_noise", "logits_from_noisy"))


def _takes_generator(model) -> bool:
    try:
        return "generator" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def is_stochastic(model) -> bool:
    """Whether each forward pass draws fresh noise (then EOT averages several draws)."""
    return has_noise_protocol(model) or _takes_generator(model)


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.detach().flatten(1).double()
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def log_mean_softmax(model, x: torch.Tensor, draws: int, generators=None,
                     autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """log of the mean softmax over ``draws`` noise draws, (B, K); plain log-softmax for a deterministic model.

    ``generators``: one torch.Generator per image (noise protocol), or a list whose first one serves the
    batch (a module taking ``generator=``).  ``autocast_dtype``: the forwards after the noise run under
    autocast in that dtype (as ``sample_votes`` runs them for a bf16 certificate).
    """
    b = len(x)
    amp = dict(device_type=x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    if has_noise_protocol(model):
        z = model.pre_noise(x)
        noise = torch.stack([model.sample_noise((draws, *z.shape[1:]), g, z.device, z.dtype) for g in generators])
        with torch.autocast(**amp):
            logits = model.logits_from_noisy((z.unsqueeze(1) + noise).flatten(0, 1), tuple(x.shape[-2:]))
    elif _takes_generator(model):
        with torch.autocast(**amp):
            logits = model(x.repeat_interleave(draws, 0), generator=generators[0])
    else:
        with torch.autocast(**amp):
            return F.log_softmax(model(x).float(), -1)
    logp = F.log_softmax(logits.float().view(b, draws, -1), -1)
    return torch.logsumexp(logp, 1) - math.log(draws)


def _runner_up(logp: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    other = logp.scatter(1, cls[:, None], float("-inf"))
    return other.amax(1)


def success_margin(logp: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """> 0 iff the attack succeeded: max_{j != y} logp_j - logp_y (untargeted), logp_t - max_{j != t} logp_j."""
    if target is None:
        return _runner_up(logp, y) - logp.gather(1, y[:, None])[:, 0]
    return logp.gather(1, target[:, None])[:, 0] - _runner_up(logp, target)


def _objective(logp, y, target, loss):
    if loss == "margin":
        return success_margin(logp, y, target)
    if target is None:
        return -logp.gather(1, y[:, None])[:, 0]
    return logp.gather(1, target[:, None])[:, 0]


def _as_labels(v, b: int, device, name: str) -> torch.Tensor:
    t = torch.as_tensor(v, device=device).long()
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name} must be one class per image ({b}), got shape {tuple(t.shape)}")
    return t.clone()


def _random_start(x: torch.Tensor, eps: float, norm: str, gens) -> torch.Tensor:
    out = []
    for xi, g in zip(x, gens):
        if norm == "linf":
            d = (torch.rand(xi.shape, generator=g, device=xi.device, dtype=xi.dtype) * 2 - 1) * eps
        else:
            d = torch.randn(xi.shape, generator=g, device=xi.device, dtype=xi.dtype)
            r = torch.rand((), generator=g, device=xi.device, dtype=xi.dtype)
            d = d * (eps * r / d.norm().clamp_min(1e-12))
        out.append(d)
    return torch.stack(out)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / n).clamp(max=1.0).view(-1, *([1] * (delta.ndim - 1)))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-30)
    return grad / n.view(-1, *([1] * (grad.ndim - 1)))


def check_attack_args(eps, norm, steps, restarts, eot, loss, step_size=None) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"the budget eps must be a finite number >= 0, got {eps!r}")
    for name, v in (("steps", steps), ("restarts", restarts), ("eot", eot)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")


def pgd(model: nn.Module, x: torch.Tensor, y, eps: float, *, norm: str = "l2", steps: int = 20, restarts: int = 1,
        step_size: float | None = None, eot: int = 1, loss: str = "ce", target=None, random_start: bool = True,
        seed: int = 0, keys=None, eval_draws: int | None = None,
        autocast_dtype: torch.dtype | None = None) -> AttackResult:
    """PGD-L2 / PGD-Linf with random restarts and expectation over the noise (see the module docstring).

    ``x``: (B, C, H, W) in [0, 1]; ``y``: the true (or reference) class per image, the one to move away
    from; ``target``: a class per image (or one int) for a targeted attack.  ``keys``: one hashable per
    image (default 0..B-1); the random start of restart r comes from (seed, key, "pgd-start", r), the
    EOT noise from (seed, key, "pgd-eot", r) and the evaluation draws that rank the restarts from
    (seed, key, "pgd-eval", r), each on x's device.  ``eval_draws`` defaults to ``eot``.
    ``autocast_dtype``: run the forwards under autocast (the precision the model was certified at).
    Returns the kept adversarial images with their norms and success margins.
    """
    check_attack_args(eps, norm, steps, restarts, eot, loss, step_size)
    b = len(x)
    keys = list(range(b)) if keys is None else list(keys)
    if len(keys) != b:
        raise ValueError(f"keys must name each of the {b} images, got {len(keys)}")
    stochastic = is_stochastic(model)
    draws = eot if stochastic else 1
    eval_n = (eval_draws or eot) if stochastic else 1
    step = step_size if step_size is not None else 2.5 * eps / steps
    device = x.device
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode(False):
            x = x.detach().clone()
            if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise ValueError("the images must be finite and lie in [0, 1]")
            y = _as_labels(y, b, device, "y")
            target = None if target is None else _as_labels(target, b, device, "target")
            best_x, best_margin = x.clone(), torch.full((b,), float("-inf"), device=device)
            for r in range(restarts if eps > 0 else 1):
                if eps > 0 and random_start:
                    starts = [generator(seed, k, "pgd-start", r, device=device) for k in keys]
                    delta = _random_start(x, eps, norm, starts)
                else:
                    delta = torch.zeros_like(x)
                delta = (x + delta).clamp(0, 1) - x
                noise_gens = [generator(seed, k, "pgd-eot", r, device=device) for k in keys] if stochastic else None
                for _ in range(steps if eps > 0 else 0):
                    delta.requires_grad_(True)
                    with torch.enable_grad():
                        logp = log_mean_softmax(model, x + delta, draws, noise_gens, autocast_dtype)
                        obj = _objective(logp, y, target, loss).sum()
                        (grad,) = torch.autograd.grad(obj, delta)
                    delta = _project(delta.detach() + step * _direction(grad, norm), eps, norm)
                    delta = (x + delta).clamp(0, 1) - x
                x_adv = (x + delta.detach()).clamp(0, 1)
                with torch.no_grad():
                    eval_gens = [generator(seed, k, "pgd-eval", r, device=device) for k in keys] if stochastic else None
                    margin = success_margin(log_mean_softmax(model, x_adv, eval_n, eval_gens, autocast_dtype), y,
                                            target).float()
                better = margin > best_margin
                best_x[better] = x_adv[better]
                best_margin = torch.where(better, margin, best_margin)
            return AttackResult(best_x.detach(), perturbation_norm(best_x - x, norm).float(), best_margin.detach(),
                                (best_margin > 0).detach())
    finally:
        for m, mode in modes:  # every submodule back in its own mode
            m.training = mode


# --------------------------------------------------------------------------- evaluation under attack


METHODS = ("pgd", "cw")


@dataclass(frozen=True)
class AttackSettings:
    method: str = "pgd"  # cw: Carlini-Wagner L2, the smallest perturbation per image (dp_autoencoder.cw)
    norm: str = "l2"
    budgets: tuple = (0.0, 0.25, 0.5, 1.0)
    steps: int = 20
    restarts: int = 1
    step_factor: float = 2.5  # step size = step_factor * budget / steps
    eot: int = 8
    loss: str = "margin"  # the stronger objective in our tests (see the module docstring)
    n0: int = 100
    n: int = 300
    alpha: float = 0.001
    eta: float = 0.95
    pixeldp_profile: str = "analytic"  # certificates.PIXELDP_PROFILES; run.json files without it: classical
    skip: int = 1
    max: int | None = None
    seed: int = 0
    batch_size: int = 256
    images_per_step: int = 4
    cw_steps: int = 100  # Adam steps per constant
    cw_search_steps: int = 6  # binary-search rounds over the constant c
    cw_lr: float = 0.01  # Adam's learning rate, per pixel
    cw_const: float = 1.0  # the first c
    cw_kappa: float = 0.0  # confidence margin
    cw_targets: tuple = ("untargeted", "runner-up")
    sources: tuple = ()  # (autoencoder sha, classifier identity, data): what was attacked, for the resume check
    names: dict = field(default_factory=dict, compare=False)  # the models as the user named them, for labels

    def check(self) -> None:
        if self.method not in METHODS:
            raise AttackError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "cw" and self.norm != "l2":
            raise AttackError(f"--method cw is an L2 attack; --norm {self.norm} needs --method pgd")
        from .cw import CW_TARGETS

        if not self.cw_targets or any(t not in CW_TARGETS for t in self.cw_targets):
            raise AttackError(f"--cw-targets must be a comma list of {', '.join(CW_TARGETS)}, got "
                              f"{','.join(self.cw_targets)!r}")
        for name in ("cw_lr", "cw_const"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise AttackError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(self, name)}")
        if not (math.isfinite(self.cw_kappa) and self.cw_kappa >= 0):
            raise AttackError(f"--cw-kappa must be a finite number >= 0, got {self.cw_kappa}")
        if self.norm not in NORMS:
            raise AttackError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.loss not in LOSSES:
            raise AttackError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.budgets:
            raise AttackError("--budgets must name at least one budget")
        for t in self.budgets:
            if not (math.isfinite(t) and t >= 0):
                raise AttackError(f"--budgets must be finite numbers >= 0, got {t!r}")
        if len(set(self.budgets)) != len(self.budgets):
            raise AttackError(f"--budgets has a repeated value: {', '.join(f'{t:g}' for t in self.budgets)}")
        for name in ("steps", "restarts", "eot", "n0", "n", "skip", "batch_size", "images_per_step", "cw_steps",
                     "cw_search_steps"):
            if getattr(self, name) < 1:
                raise AttackError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max is not None and self.max < 1:
            raise AttackError(f"--max must be >= 1, got {self.max}")
        if not (math.isfinite(self.step_factor) and self.step_factor > 0):
            raise AttackError(f"--step-factor must be > 0, got {self.step_factor}")
        for name in ("alpha", "eta"):
            if not 0 < getattr(self, name) < 1:
                raise AttackError(f"--{name} must be in (0, 1), got {getattr(self, name)}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["budgets"] = [float(t) for t in self.budgets]
        d["cw_targets"] = list(self.cw_targets)
        d["sources"] = [list(s) if isinstance(s, tuple) else s for s in self.sources]
        return d


def parse_budgets(text: str) -> tuple[float, ...]:
    """'0,0.25,0.5' -> (0.0, 0.25, 0.5), sorted; AttackError naming the bad item."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        try:
            v = float(item)
        except ValueError:
            raise AttackError(f"--budgets must be a comma-separated list of numbers >= 0, got {item!r} "
                              f"in {text!r}") from None
        if not (math.isfinite(v) and v >= 0):
            raise AttackError(f"--budgets must be finite numbers >= 0, got {item!r}")
        out.append(v)
    return tuple(sorted(out))


# What run.json files from before an option was added meant by leaving it out.
ATTACK_DEFAULTS_BEFORE = {"method": "pgd", "cw_steps": 100, "cw_search_steps": 6, "cw_lr": 0.01, "cw_const": 1.0,
                          "cw_kappa": 0.0, "cw_targets": ["untargeted", "runner-up"], "pixeldp_profile": "classical"}


def prepare_run(out: Path, wanted: dict, ignore=("batch_size", "images_per_step", "names"), defaults=None,
                context: dict | None = None) -> None:
    """Write run.json, or check that the one there holds the same settings (then the run resumes).

    ``defaults``: values of settings that older run.json files do not record (what they ran with).
    ``context``: the device and data fingerprint (``certify.run_context``), recorded beside the settings; a
    resume on another device type or on changed data is refused (older run.json files without them resume)."""
    run_file = out / "run.json"
    if run_file.exists():
        previous = {**(defaults or {}), **json.loads(run_file.read_text())}
        changed = {k: (previous.get(k), v) for k, v in wanted.items() if previous.get(k) != v and k not in ignore}
        if changed:
            raise AttackError(f"{out} holds a run with other settings (" + "; ".join(
                f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items()) +
                "); choose another --out to start a new run")
        if context:
            check_run_context(out, previous, context, error=AttackError)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {**wanted, **(context or {})})


def budget_key(t: float) -> str:
    return f"{t:g}"


def _decide(model, x_adv, ids, keys_purpose: str, settings, num_classes, sensitivity) -> list[dict]:
    """Votes of fresh draws on the attacked images and every reading of them (certificates, predictions)."""
    size = tuple(x_adv.shape[-2:])
    with torch.inference_mode():
        z = model.pre_noise(x_adv)
    common = dict(num_classes=num_classes, image_size=size, seed=settings.seed, batch_size=settings.batch_size)
    sel = sample_votes(model, z, ids, settings.n0, purpose=f"{keys_purpose}-selection", **common).counts.cpu().numpy()
    est = sample_votes(model, z, ids, settings.n, purpose=f"{keys_purpose}-estimation", **common).counts.cpu().numpy()
    noise = model.noise
    out = []
    for j in range(len(ids)):
        c = certificates(sel[j], est[j], noise=noise.kind, scale=noise.scale, sensitivity=sensitivity,
                         eps=noise.eps, delta=noise.delta, alpha=settings.alpha, eta=settings.eta,
                         pixeldp_profile=settings.pixeldp_profile)
        out.append({**c, "majority": int(np.argmax(est[j])),
                    "predict_abstain": int(smoothed_predict(est[j], settings.alpha)),
                    "counts": sparse(est[j]), "selection_counts": sparse(sel[j])})
    return out


def attack_batch(model, x: torch.Tensor, labels, ids, settings: AttackSettings, num_classes: int,
                 sensitivity: float) -> list[dict]:
    """One record per image: for each budget, both attacks and the defended decision on the attacked image."""
    with torch.inference_mode():
        clean = model.classifier(x).argmax(1)
    labels = torch.as_tensor(labels, device=x.device).long()
    reference = torch.where(labels >= 0, labels, clean)
    records = [{"idx": int(i), "label": int(labels[j]), "reference": int(reference[j]),
                "undefended_clean": int(clean[j]), "status": "ok", "budgets": {}} for j, i in enumerate(ids)]
    for t in settings.budgets:
        key = budget_key(t)
        common = dict(norm=settings.norm, steps=settings.steps, restarts=settings.restarts,
                      step_size=settings.step_factor * t / settings.steps if t > 0 else None, loss=settings.loss,
                      seed=settings.seed)
        t0 = time.perf_counter()
        und = pgd(model.classifier, x, reference, t, keys=[(i, "undefended", settings.norm, key) for i in ids],
                  **common)
        with torch.inference_mode():
            und_pred = model.classifier(und.x_adv).argmax(1).tolist()
        t1 = time.perf_counter()
        dfd = pgd(model, x, reference, t, eot=settings.eot, keys=[(i, "defended", settings.norm, key) for i in ids],
                  **common)
        t2 = time.perf_counter()
        decisions = _decide(model, dfd.x_adv, ids, f"attack-{settings.norm}-{key}", settings, num_classes, sensitivity)
        t3 = time.perf_counter()
        for j, rec in enumerate(records):
            ref = rec["reference"]
            d = decisions[j]
            rec["budgets"][key] = {
                "budget": float(t), "undefended_predict": und_pred[j], "undefended_norm": float(und.norm[j]),
                "undefended_correct": int(und_pred[j] == ref), "defended_norm": float(dfd.norm[j]),
                "attack_margin": float(dfd.margin[j]), **d,
                "majority_correct": int(d["majority"] == ref),
                "predict_abstain_correct": int(d["predict_abstain"] == ref),
                "correct": int(d["predict"] == ref), "pixeldp_correct": int(d["pixeldp_predict"] == ref),
                "time_attack_undefended": (t1 - t0) / len(ids), "time_attack_defended": (t2 - t1) / len(ids),
                "time_decide": (t3 - t2) / len(ids)}
    return records


def _fraction(num: int, den: int):
    return num / den if den else None


def summarize_attacks(records: list[dict], budgets, thresholds=THRESHOLDS) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    n = max(len(records), 1)
    out = {"images": len(records), "refused": len(records) - len(ok), "labeled": sum(r["label"] >= 0 for r in records),
           "thresholds": list(thresholds), "budgets": {}}
    for t in budgets:
        key = budget_key(t)
        rows = [r["budgets"][key] for r in ok if key in r["budgets"]]
        s = {"budget": float(t),
             "undefended_accuracy": sum(b["undefended_correct"] for b in rows) / n,
             "defended_accuracy": sum(b["majority_correct"] for b in rows) / n,
             "defended_accuracy_predict": sum(b["predict_abstain_correct"] for b in rows) / n,
             "abstention_predict": sum(b["predict_abstain"] < 0 for b in rows) / n,
             "smoothed_accuracy": sum(b["correct"] for b in rows) / n,
             "pixeldp_accuracy": sum(b["pixeldp_correct"] for b in rows) / n,
             "mean_norm_undefended": float(np.mean([b["undefended_norm"] for b in rows])) if rows else None,
             "mean_norm_defended": float(np.mean([b["defended_norm"] for b in rows])) if rows else None}
        for bound, size_key, correct_key in (("smoothing", "radius", "correct"),
                                             ("pixeldp", "pixeldp_size", "pixeldp_correct")):
            per_t = {}
            for T in thresholds:
                cert = [b for b in rows if b[size_key] > 0 and b[size_key] >= T]
                per_t[f"{T:g}"] = {"certified": len(cert),
                                   "robust_precision": _fraction(sum(b[correct_key] for b in cert), len(cert)),
                                   "certified_fraction": len(cert) / n}
            s[bound] = per_t
        out["budgets"][key] = s
    return out


def format_attack_table(summary: dict, norm: str) -> str:
    """The per-budget table: accuracies under attack, then robust precision / certified fraction at each T."""
    ts = summary["thresholds"]

    def pr(v):
        return "    -" if v is None else f"{v:5.3f}"

    head = f"{'budget':>7s} {'undef.':>6s} {'def.':>6s} {'PREDICT':>7s} {'abst.':>6s}"
    for bound in ("smooth", "PixelDP"):
        for T in ts:
            head += f"  {bound} T={T:g} prec/frac"
    lines = [f"{summary['images']} images, PGD-{norm.upper()}; accuracy under attack (undefended classifier, defended "
             "majority vote, defended PREDICT with abstention); robust precision / certified fraction at T",
             head]
    for key, s in summary["budgets"].items():
        line = (f"{s['budget']:7.3f} {s['undefended_accuracy']:6.3f} {s['defended_accuracy']:6.3f} "
                f"{s['defended_accuracy_predict']:7.3f} {s['abstention_predict']:6.3f}")
        for bound, name in (("smoothing", "smooth"), ("pixeldp", "PixelDP")):
            for T in ts:
                m = s[bound][f"{T:g}"]
                width = len(f"  {name} T={T:g} prec/frac")
                cell = f"{pr(m['robust_precision'])} / {m['certified_fraction']:5.3f}"
                line += cell.rjust(width)
        lines.append(line)
    return "\n".join(lines)


def attack_dataset(model, dataset, settings: AttackSettings, out, num_classes: int, device="cpu",
                   progress: bool = True, workers: int = 0) -> dict:
    """Attack the selected images of ``dataset`` at every budget into ``out`` (resumable); returns the summary."""
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    settings.check()
    out = Path(out)
    indices = selected_indices(len(dataset), settings.skip, settings.max)
    if not indices:
        raise AttackError("the data holds no image to attack")
    prepare_run(out, settings.to_json(), defaults=ATTACK_DEFAULTS_BEFORE, context=run_context(dataset, device))
    cw = settings.method == "cw"
    if cw:
        from .cw import cw_attack_batch, minimal_norms, summarize_cw
    main_file = out / "attack.jsonl"
    done = {r["idx"] for r in read_records(main_file, repair=True)}
    todo = [i for i in indices if i not in done]
    sensitivities: dict[tuple, float] = {}
    loader = DataLoader(Subset(dataset, todo), batch_size=settings.images_per_step, num_workers=workers)
    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), desc="attack cw" if cw else f"attack {settings.norm}",
               disable=not progress, dynamic_ncols=True)
    tally = {"n": 0, "undefended": 0, "defended": 0}
    top = budget_key(max(settings.budgets))
    position = 0
    t_run = time.perf_counter()
    with open(main_file, "a") as f:
        for x, labels in loader:
            ids = todo[position:position + len(x)]
            position += len(x)
            x = x.to(device)
            finite = torch.isfinite(x).flatten(1).all(1).cpu().tolist()
            good = [j for j in range(len(x)) if finite[j]]
            done_recs = {}
            if good:
                size = tuple(x.shape[-2:])
                if size not in sensitivities:
                    sensitivities[size] = model.sensitivity(size)
                recs = (cw_attack_batch if cw else attack_batch)(model, x[good], labels[good], [ids[j] for j in good],
                                                                 settings, num_classes, sensitivities[size])
                done_recs = {r["idx"]: r for r in recs}
            records = [done_recs.get(i) or {"idx": i, "label": int(labels[j]), "reference": -1, "status":
                                           "refused: the image has NaN or Inf pixels",
                                           **({"method": "cw", "targets": {}} if cw else {"budgets": {}})}
                       for j, i in enumerate(ids)]
            append_records(f, records)
            for r in records:
                tally["n"] += 1
                if r["status"] == "ok" and cw:
                    tally["undefended"] += minimal_norms(r, "undefended") > max(settings.budgets)
                    tally["defended"] += minimal_norms(r, "defended") > max(settings.budgets)
                elif r["status"] == "ok":
                    tally["undefended"] += r["budgets"][top]["undefended_correct"]
                    tally["defended"] += r["budgets"][top]["majority_correct"]
            bar.update(len(x))
            bar.set_postfix({f"undef@{top}": f"{tally['undefended'] / tally['n']:.3f}",
                             f"def@{top}": f"{tally['defended'] / tally['n']:.3f}"})
    bar.close()
    seconds = time.perf_counter() - t_run
    by_idx = {r["idx"]: r for r in read_records(main_file)}
    records = [by_idx[i] for i in indices if i in by_idx]
    summary = summarize_cw(records, settings.budgets) if cw else summarize_attacks(records, settings.budgets)
    summary["norm"] = settings.norm
    if position:
        summary["seconds_this_run"] = seconds
        summary["images_this_run"] = position
    atomic_write_json(out / "summary.json", summary)
    return summary
