"""Carlini-Wagner L2 (IEEE S&P 2017) with expectation over the noise: the smallest perturbation that succeeds.

For each image, minimize over delta (x + delta in [0, 1])

    ||delta||_2^2 + c * max(kappa - m(x + delta), 0)

with m the success margin of :func:`~dp_autoencoder.attacks.success_margin` on the log of the *mean
softmax* over ``eot`` fresh noise draws per step (for a noise-free model: the logit margin
max_{j != y} z_j - z_y, or z_t - max_{j != t} z_j for a target t; Carlini-Wagner's f_6).  Adam runs
``steps`` steps from delta = 0 for each constant c, with a cosine-decayed learning rate so that the
iterates settle on the decision boundary instead of oscillating around it; a binary search over c
(``search_steps`` rounds; x10 while no c has succeeded) looks for the smallest c that still succeeds,
because a smaller c weighs the distance more.  Per image the smallest successful perturbation over all
rounds is kept; where none succeeded, the evaluated iterate with the largest margin.

Box handling: a projected variant.  After each Adam step x + delta is clipped to [0, 1], instead of
Carlini-Wagner's change of variables x' = (tanh(w) + 1) / 2, because tanh's derivative vanishes at the
domain's edges: a Fashion-MNIST pixel at exactly 0 (half of them) would barely move.  Clipping a
coordinate can only shrink |delta_i|, so nothing else changes.

Success is decided on evaluation draws, never on the optimization's own: in each round the iterate
with the smallest norm whose step draws looked successful, and the final iterate, are re-scored on
``eval_draws`` draws from their own generator (seed, key, "cw-eval", round); a candidate counts as
successful when that margin is > 0.  For a noise-free model this is exact, so the kept perturbation is
a genuine adversarial example and its norm an upper bound on the minimal one (the tests check it
against the distance to the decision hyperplane of linear models).  Noise: from (seed, key, "cw-eot",
round) for the steps, one generator per image, so an image's attack does not depend on its batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .attacks import AttackError, _as_labels, is_stochastic, log_mean_softmax, perturbation_norm, success_margin
from .seeding import generator


LINE_SEARCH = (0.9, 0.95, 1.0, 1.02, 1.05, 1.1, 1.25, 1.5)


@dataclass
class CWResult:
    x_adv: torch.Tensor  # (B, C, H, W) in [0, 1]: the smallest successful one, else the best-margin iterate
    norm: torch.Tensor  # (B,) ||x_adv - x||_2
    margin: torch.Tensor  # (B,) success margin of x_adv on its evaluation draws (> 0: success)
    success: torch.Tensor  # (B,) bool
    const: torch.Tensor  # (B,) the constant c that produced x_adv (nan where nothing was evaluated)


def check_cw_args(steps, search_steps, initial_const, lr, kappa, eot, eval_draws=None) -> None:
    for name, v in (("steps", steps), ("search_steps", search_steps), ("eot", eot)):
        if int(v) != v or v < 1:
            raise AttackError(f"C&W {name} must be an integer >= 1, got {v!r}")
    if eval_draws is not None and (int(eval_draws) != eval_draws or eval_draws < 1):
        raise AttackError(f"C&W eval_draws must be an integer >= 1, got {eval_draws!r}")
    for name, v in (("initial_const", initial_const), ("lr", lr)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise AttackError(f"C&W {name} must be a finite number > 0, got {v!r}")
    if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 0):
        raise AttackError(f"C&W kappa (the confidence margin) must be a finite number >= 0, got {kappa!r}")


def carlini_wagner(model: nn.Module, x: torch.Tensor, y, *, target=None, steps: int = 100, search_steps: int = 6,
                   initial_const: float = 1.0, lr: float = 0.01, kappa: float = 0.0, eot: int = 1,
                   eval_draws: int | None = None, seed: int = 0, keys=None, line_search=LINE_SEARCH,
                   autocast_dtype: torch.dtype | None = None) -> CWResult:
    """C&W-L2 with EOT (see the module docstring); ``x`` (B, C, H, W) in [0, 1], ``y`` the class to leave.

    ``target``: a class per image (or one int) to reach instead.  ``eval_draws`` (default max(eot, 32) for a
    noisy model) re-score the candidates.  ``autocast_dtype``: run the noisy forwards under autocast (the
    precision the defended model was certified at).  ``line_search``: the round's final perturbation is also
    scored at these multiples of itself, since iterates that hover on the boundary succeed only about half
    the time on fresh draws (``(1.0,)``: the final iterate only).  The weights are never changed and get
    no ``.grad``.
    """
    check_cw_args(steps, search_steps, initial_const, lr, kappa, eot, eval_draws)
    line_search = tuple(float(s) for s in line_search)
    if not line_search or not all(math.isfinite(s) and s > 0 for s in line_search):
        raise AttackError(f"C&W line_search must be positive multiples, got {line_search!r}")
    b = len(x)
    keys = list(range(b)) if keys is None else list(keys)
    if len(keys) != b:
        raise AttackError(f"keys must name each of the {b} images, got {len(keys)}")
    stochastic = is_stochastic(model)
    draws = eot if stochastic else 1
    eval_n = (eval_draws or max(eot, 32)) if stochastic else 1
    device = x.device
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode(False):
            x = x.detach().clone()
            if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise AttackError("the images must be finite and lie in [0, 1]")
            y = _as_labels(y, b, device, "y")
            target = None if target is None else _as_labels(target, b, device, "target")

            def margin_of(x_adv, gens):
                return success_margin(log_mean_softmax(model, x_adv, draws if gens is None else eval_n, gens,
                                                       autocast_dtype), y, target).float()

            const = torch.full((b,), float(initial_const), dtype=torch.float64)
            lower = torch.zeros(b, dtype=torch.float64)
            upper = torch.full((b,), math.inf, dtype=torch.float64)
            best_x, best_norm = x.clone(), torch.full((b,), math.inf)
            best_margin = torch.full((b,), -math.inf)
            best_const = torch.full((b,), math.nan)
            found = torch.zeros(b, dtype=torch.bool)
            for rnd in range(search_steps):
                step_gens = [generator(seed, k, "cw-eot", rnd, device=device) for k in keys] if stochastic else None
                delta = torch.zeros_like(x, requires_grad=True)
                opt = torch.optim.Adam([delta], lr=lr)
                c = const.to(device=device, dtype=x.dtype)
                cand_x, cand_norm = x.clone(), torch.full((b,), math.inf, device=device)
                for step in range(steps):
                    for group in opt.param_groups:  # cosine decay: settle on the boundary
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                    with torch.enable_grad():
                        x_adv = x + delta
                        m = success_margin(log_mean_softmax(model, x_adv, draws, step_gens, autocast_dtype), y,
                                           target).float()
                        sq = delta.flatten(1).pow(2).sum(1)
                        loss = (sq + c * (kappa - m).clamp_min(0)).sum()
                        opt.zero_grad(set_to_none=True)
                        (grad,) = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        norm_now = sq.detach().sqrt()
                        better = (m.detach() > 0) & (norm_now < cand_norm)
                        cand_x[better] = x_adv.detach()[better]
                        cand_norm = torch.where(better, norm_now, cand_norm)
                        delta.grad = grad
                        opt.step()
                        delta.copy_((x + delta).clamp(0, 1) - x)
                with torch.no_grad():
                    have_cand = torch.isfinite(cand_norm).cpu()
                    final_delta = delta.detach()
                    # (image, whether its success tells the binary search that c sufficed): a stretched
                    # iterate that succeeds says nothing about c
                    options = [(cand_x, True)] if have_cand.any() else []
                    options += [((x + s * final_delta).clamp(0, 1), s <= 1) for s in line_search]
                    success_now = torch.zeros(b, dtype=torch.bool)
                    for o, (xs, informs_search) in enumerate(options):
                        # the same evaluation draws for every option of the round (common random numbers)
                        eval_gens = ([generator(seed, k, "cw-eval", rnd, device=device) for k in keys]
                                     if stochastic else None)
                        ms = margin_of(xs, eval_gens).cpu()
                        if o == 0 and have_cand.any():
                            ms = torch.where(have_cand, ms, torch.tensor(-math.inf))
                        norms = perturbation_norm(xs - x, "l2").float().cpu()
                        ok = ms > 0
                        if informs_search:
                            success_now |= ok
                        take = ok & (norms < best_norm)
                        # no success yet anywhere: keep the most adversarial evaluated iterate
                        take |= ~found & ~ok & (ms > best_margin)
                        idx = take.nonzero().flatten()
                        if len(idx):
                            best_x[idx.to(device)] = xs[idx.to(device)]
                            best_norm[idx] = torch.where(ok[idx], norms[idx], best_norm[idx])
                            best_margin[idx] = ms[idx]
                            best_const[idx] = const[idx].float()
                            found[idx] |= ok[idx]
                    # the binary search over c (Carlini-Wagner's schedule)
                    upper = torch.where(success_now, torch.minimum(upper, const), upper)
                    lower = torch.where(success_now, lower, torch.maximum(lower, const))
                    const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
            norm = perturbation_norm(best_x - x, "l2").float()
            return CWResult(best_x.detach(), norm, best_margin.to(device), found.to(device), best_const.to(device))
    finally:
        for mod, mode in modes:
            mod.training = mode


# --------------------------------------------------------------------------- evaluation under attack

CW_TARGETS = ("untargeted", "runner-up")


def second_class(counts, scores: torch.Tensor, c: int) -> int:
    """The runner-up to ``c``: the most voted other class of ``counts``, else (no other vote, or ``counts`` None)
    the classifier's next score."""
    if counts is not None:
        votes = torch.as_tensor(counts).clone().double()
        votes[c] = -1
        if votes.max() > 0:
            return int(votes.argmax())
    s = scores.detach().clone().float()
    s[c] = float("-inf")
    return int(s.argmax())


def cw_attack_batch(model, x: torch.Tensor, labels, ids, settings, num_classes: int, sensitivity: float) -> list[dict]:
    """One record per image: for each target, C&W on the undefended classifier and (EOT) on the defended stack,
    the smallest perturbation found, and the defended decision on fresh draws at the attacked image."""
    from .attacks import _decide
    from .certify import dense

    t0 = time.perf_counter()
    with torch.inference_mode():
        scores = model.classifier(x)
    clean = scores.argmax(1)
    labels = torch.as_tensor(labels, device=x.device).long()
    reference = torch.where(labels >= 0, labels, clean)
    clean_decisions = _decide(model, x, ids, "cw-clean", settings, num_classes, sensitivity)
    records = []
    for j, i in enumerate(ids):
        d = clean_decisions[j]
        records.append({"idx": int(i), "label": int(labels[j]), "reference": int(reference[j]),
                        "undefended_clean": int(clean[j]), "status": "ok", "method": "cw",
                        "defended_clean": {k: d[k] for k in ("majority", "predict", "radius", "pixeldp_size", "counts")},
                        "defended_clean_correct": int(d["majority"] == int(reference[j])), "targets": {}})
    common = dict(steps=settings.cw_steps, search_steps=settings.cw_search_steps, initial_const=settings.cw_const,
                  lr=settings.cw_lr, kappa=settings.cw_kappa, seed=settings.seed)
    for name in settings.cw_targets:
        t1 = time.perf_counter()
        und_target = dfd_target = None
        if name == "runner-up":
            und_target = [second_class(None, scores[j], int(reference[j])) for j in range(len(ids))]
            dfd_target = [second_class(torch.as_tensor(dense(clean_decisions[j]["counts"], num_classes)), scores[j],
                                       int(reference[j])) for j in range(len(ids))]
        und = carlini_wagner(model.classifier, x, reference, target=und_target,
                             keys=[(i, "undefended", name) for i in ids], **common)
        with torch.inference_mode():
            und_pred = model.classifier(und.x_adv).argmax(1).tolist()
        t2 = time.perf_counter()
        dfd = carlini_wagner(model, x, reference, target=dfd_target, eot=settings.eot,
                             keys=[(i, "defended", name) for i in ids], **common)
        t3 = time.perf_counter()
        decisions = _decide(model, dfd.x_adv, ids, f"cw-{name}", settings, num_classes, sensitivity)
        t4 = time.perf_counter()
        for j, rec in enumerate(records):
            ref, d = rec["reference"], decisions[j]
            und_changed = und_pred[j] != ref
            dfd_changed = d["majority"] != ref
            rec["targets"][name] = {
                "undefended": {"target": -1 if und_target is None else und_target[j], "norm": float(und.norm[j]),
                               "attack_success": bool(und.success[j]), "margin": float(und.margin[j]),
                               "const": float(und.const[j]), "predict": und_pred[j], "changed": bool(und_changed),
                               "minimal_norm": float(und.norm[j]) if und_changed else None},
                "defended": {"target": -1 if dfd_target is None else dfd_target[j], "norm": float(dfd.norm[j]),
                             "attack_success": bool(dfd.success[j]), "margin": float(dfd.margin[j]),
                             "const": float(dfd.const[j]), **d, "changed": bool(dfd_changed),
                             "minimal_norm": float(dfd.norm[j]) if dfd_changed else None},
                "time_attack_undefended": (t2 - t1) / len(ids), "time_attack_defended": (t3 - t2) / len(ids),
                "time_decide": (t4 - t3) / len(ids)}
    for rec in records:
        rec["time"] = (time.perf_counter() - t0) / len(ids)
    return records


def minimal_norms(record: dict, side: str) -> float:
    """The smallest perturbation that changed the prediction (0 if the clean one is already wrong; inf: none)."""
    if side == "undefended":
        if record["undefended_clean"] != record["reference"]:
            return 0.0
    elif not record["defended_clean_correct"]:
        return 0.0
    found = [t[side]["minimal_norm"] for t in record["targets"].values() if t[side]["minimal_norm"] is not None]
    return min(found) if found else math.inf


def _median(values):
    import numpy as np

    if not values:
        return None
    m = float(np.median(values))
    return m if math.isfinite(m) else None


def summarize_cw(records: list[dict], budgets) -> dict:
    """Accuracy under attack at each budget t: share of images whose smallest successful perturbation exceeds t
    (images that no attack moved, and that were correct, count as correct); medians of the minimal norms."""
    from .attacks import budget_key

    ok = [r for r in records if r["status"] == "ok"]
    n = max(len(records), 1)
    out = {"method": "cw", "images": len(records), "refused": len(records) - len(ok),
           "labeled": sum(r["label"] >= 0 for r in records), "budgets": {}}
    minimal = {side: [minimal_norms(r, side) for r in ok] for side in ("undefended", "defended")}
    for t in budgets:
        out["budgets"][budget_key(t)] = {
            "budget": float(t),
            "undefended_accuracy": sum(m > t for m in minimal["undefended"]) / n,
            "defended_accuracy": sum(m > t for m in minimal["defended"]) / n}
    for side in ("undefended", "defended"):
        ms = minimal[side]
        out[f"median_minimal_norm_{side}"] = _median(ms)  # None: more than half never moved
        out[f"median_minimal_norm_{side}_successful"] = _median([m for m in ms if math.isfinite(m)])
        out[f"moved_{side}"] = sum(math.isfinite(m) for m in ms)
    out["defended_clean_accuracy"] = sum(r["defended_clean_correct"] for r in ok) / n
    return out


def format_cw_table(summary: dict) -> str:
    def med(v):
        return "never (more than half not moved)" if v is None else f"{v:.3f}"

    lines = [f"{summary['images']} images, Carlini-Wagner L2 (smallest perturbation found per image, over the targets); "
             "accuracy under attack = share whose smallest successful perturbation exceeds the budget",
             f"{'budget':>7s} {'undef.':>6s} {'def.':>6s}"]
    for s in summary["budgets"].values():
        lines.append(f"{s['budget']:7.3f} {s['undefended_accuracy']:6.3f} {s['defended_accuracy']:6.3f}")
    for side in ("undefended", "defended"):
        lines.append(f"median minimal perturbation, {side}: {med(summary[f'median_minimal_norm_{side}'])} "
                     f"({summary[f'moved_{side}']} of {summary['images']} images moved; median among them "
                     f"{med(summary[f'median_minimal_norm_{side}_successful'])})")
    return "\n".join(lines)
