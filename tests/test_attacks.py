import json

import pytest
import torch
from torch import nn

from conftest import needs_fashion_mnist
from dp_autoencoder.attacks import (AttackError, AttackSettings, format_attack_table, is_stochastic, parse_budgets, pgd,
                                    summarize_attacks)
from dp_autoencoder.cli import main
from dp_autoencoder.stack import state_fingerprint
from toy import CLASSES, SIZE, toy_data, toy_model

D, K = 24, 5


class Linear(nn.Module):
    """f(x) = W x + b on flattened 1 x 4 x 6 images."""

    def __init__(self, W, b):
        super().__init__()
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


def linear_case(seed: int, classes: int = K):
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(classes, D, generator=g), 0.1 * torch.randn(classes, generator=g))
    x = 0.5 + 0.02 * torch.randn(1, 1, 4, 6, generator=g)  # interior: the minimal attacks never reach 0 or 1
    with torch.no_grad():
        f = model(x)[0]
    return model, x, int(f.argmax()), f


def minimal(model, f, y: int, p: float, j=None) -> float:
    """Analytic minimal perturbation: margin / ||w_y - w_j||_q, q the dual norm (2 for L2, 1 for Linf)."""
    W = model.W.detach()
    dist = {k: float((f[y] - f[k]) / (W[y] - W[k]).norm(p=p)) for k in range(len(f)) if k != y}
    return dist[j] if j is not None else min(dist.values())


@pytest.mark.parametrize("norm, dual", [("l2", 2), ("linf", 1)])
def test_linear_untargeted_is_exact(norm, dual):
    for seed in range(5):
        model, x, y, f = linear_case(seed)
        r = minimal(model, f, y, dual)
        for factor, succeeds in ((1.01, True), (0.99, False)):
            eps = r * factor
            a = pgd(model, x, [y], eps, norm=norm, steps=50, restarts=10, step_size=eps / 2, loss="margin", seed=seed)
            assert bool(a.success[0]) is succeeds, (seed, factor, float(a.margin[0]))
            assert (int(model(a.x_adv).argmax()) != y) is succeeds
            delta = (a.x_adv - x).flatten()
            assert float(delta.norm() if norm == "l2" else delta.abs().max()) <= eps + 1e-6
            assert 0 < a.x_adv.min() and a.x_adv.max() < 1  # clipping inactive: the analytic bound applies


@pytest.mark.parametrize("norm, dual", [("l2", 2), ("linf", 1)])
def test_linear_two_classes_cross_entropy(norm, dual):
    """With two classes the default loss (CE of the softmax) is monotone in the margin: exact too."""
    for seed in range(4):
        model, x, y, f = linear_case(seed, classes=2)
        r = minimal(model, f, y, dual)
        assert pgd(model, x, [y], 1.01 * r, norm=norm, steps=40, step_size=0.5 * r, seed=seed).success.item()
        assert not pgd(model, x, [y], 0.99 * r, norm=norm, steps=40, step_size=0.5 * r, seed=seed).success.item()
        # Madry's default step size from a zero start follows the (constant) gradient straight to the optimum
        assert pgd(model, x, [y], 1.01 * r, norm=norm, steps=20, random_start=False).success.item()


def test_linear_targeted():
    model, x, y, f = linear_case(3)
    others = sorted((minimal(model, f, y, 2, j), j) for j in range(K) if j != y)
    (r, best), (r_far, far) = others[0], others[-1]
    assert pgd(model, x, [y], 1.01 * r, target=[best], steps=50, step_size=0.5 * r, loss="margin").success.item()
    # to make the farthest class win it must at least beat y: impossible below its distance to y
    a = pgd(model, x, [y], 0.99 * r_far, target=far, steps=50, restarts=3, step_size=0.5 * r_far, loss="margin")
    assert not a.success.item()
    assert int(model(a.x_adv).argmax()) != far


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_budget_domain_and_frozen_weights(norm):
    model = toy_model()
    before, modes = state_fingerprint(model), [m.training for m in model.modules()]
    x = toy_data(4)[:][0]
    x[0] = (x[0] > 0.5).float()  # pixels on the domain's edges
    y = torch.zeros(4, dtype=torch.long)
    for target_model, eot in ((model, 4), (model.classifier, 1)):
        for eps in (0.1, 3.0):
            a = pgd(target_model, x, y, eps, norm=norm, steps=3, restarts=2, eot=eot)
            assert a.x_adv.min() >= 0 and a.x_adv.max() <= 1
            assert float(a.norm.max()) <= eps + 1e-6
            d = (a.x_adv - x).flatten(1)
            assert float((d.norm(dim=1) if norm == "l2" else d.abs().amax(1)).max()) <= eps + 1e-6
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes  # every module back in its mode
    assert not model.classifier.model.training


def test_eot_without_noise_is_plain_pgd():
    model = toy_model()
    model.autoencoder.sample_noise = lambda shape, generator=None, device=None, dtype=torch.float32, out=None: (
        torch.zeros(shape, device=device, dtype=dtype, out=out))

    class Plain(nn.Module):  # the same map with no noise and no generator: a deterministic model
        def forward(self, x):
            return model.logits_from_noisy(model.pre_noise(x), x.shape[-2:])

    x, y = toy_data(3)[:]
    assert is_stochastic(model) and not is_stochastic(Plain())
    for norm in ("l2", "linf"):
        eot = pgd(model, x, y, 0.5, norm=norm, steps=4, restarts=2, eot=6, seed=3)
        plain = pgd(Plain(), x, y, 0.5, norm=norm, steps=4, restarts=2, eot=1, seed=3)
        assert torch.allclose(eot.x_adv, plain.x_adv, atol=1e-5)
        assert torch.allclose(eot.margin, plain.margin, atol=1e-4)


def test_reproducible_and_independent_of_the_batch():
    model = toy_model()
    x, y = toy_data(4)[:]
    keys = [10, 11, 12, 13]
    a = pgd(model, x, y, 1.0, steps=3, restarts=2, eot=4, seed=5, keys=keys)
    b = pgd(model, x, y, 1.0, steps=3, restarts=2, eot=4, seed=5, keys=keys)
    assert torch.equal(a.x_adv, b.x_adv)
    c = pgd(model, x, y, 1.0, steps=3, restarts=2, eot=4, seed=6, keys=keys)
    assert not torch.equal(a.x_adv, c.x_adv)
    one = pgd(model, x[2:3], y[2:3], 1.0, steps=3, restarts=2, eot=4, seed=5, keys=[12])
    assert torch.allclose(one.x_adv[0], a.x_adv[2], atol=1e-5)


def test_eot_attack_beats_the_noise():
    """On the toy stack an attack of size 4 moves the majority vote of fresh draws (a sanity check of EOT)."""
    from dp_autoencoder.sampler import sample_votes

    model = toy_model()
    x = toy_data(3)[:][0]
    z = model.pre_noise(x)
    clean = sample_votes(model, z, range(3), 100, CLASSES, (SIZE, SIZE), 0, "test").counts.argmax(1)
    a = pgd(model, x, clean, 4.0, steps=10, eot=8)
    after = sample_votes(model, model.pre_noise(a.x_adv), range(3), 100, CLASSES, (SIZE, SIZE), 0, "test2").counts
    assert (after.argmax(1) != clean).all()


@pytest.mark.parametrize("kwargs, words", [(dict(norm="l1"), "norm must be"), (dict(steps=0), "steps must be"),
                                           (dict(eot=0), "eot must be"), (dict(loss="hinge"), "loss must be")])
def test_bad_arguments(kwargs, words):
    model, x, y, _ = linear_case(0)
    with pytest.raises(ValueError, match=words):
        pgd(model, x, [y], 0.1, **kwargs)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        pgd(model, x + 1, [y], 0.1)


def test_budgets_and_settings():
    assert parse_budgets("0.5, 0,1") == (0.0, 0.5, 1.0)
    for bad in ("0.5,x", "-1", "nan"):
        with pytest.raises(AttackError, match="--budgets"):
            parse_budgets(bad)
    with pytest.raises(AttackError, match="repeated"):
        AttackSettings(budgets=(0.5, 0.5)).check()
    with pytest.raises(AttackError, match="--eot"):
        AttackSettings(eot=0).check()


def test_summary_metrics():
    def b(correct, radius, pixeldp_size):
        return {"undefended_correct": 0, "majority_correct": correct, "predict_abstain_correct": correct,
                "predict_abstain": 1, "correct": correct, "pixeldp_correct": correct, "radius": radius,
                "pixeldp_size": pixeldp_size, "undefended_norm": 0.5, "defended_norm": 0.5}

    records = [{"idx": i, "label": 1, "status": "ok", "budgets": {"0.5": b(c, r, s)}}
               for i, (c, r, s) in enumerate([(1, 0.2, 0.07), (0, 0.08, 0.0), (1, -1.0, 0.0), (0, 0.3, 0.2)])]
    s = summarize_attacks(records, (0.5,))["budgets"]["0.5"]
    assert s["defended_accuracy"] == 0.5
    assert s["smoothing"]["0.05"] == {"certified": 3, "robust_precision": 1 / 3, "certified_fraction": 0.75}
    assert s["smoothing"]["0.1"] == {"certified": 2, "robust_precision": 0.5, "certified_fraction": 0.5}
    assert s["pixeldp"]["0.1"] == {"certified": 1, "robust_precision": 0.0, "certified_fraction": 0.25}
    assert "0.500" in format_attack_table(summarize_attacks(records, (0.5,)), "l2")


def dpae(*args) -> int:
    return main([str(a) for a in args])


@needs_fashion_mnist
def test_cli_attack_resume_and_refusals(tmp_path, capsys):
    base = ["attack", "--autoencoder", "pretrained/fmnist-ae-L0.3", "--classifier", "pretrained/fmnist-classifier",
            "--data", "fashion-mnist", "--max", 2, "--budgets", "0,0.5", "--steps", 2, "--eot", 2, "--n0", 5,
            "--n", 10, "--device", "cpu", "--quiet"]
    out = tmp_path / "a"
    assert dpae(*base, "--out", out) == 0
    text = capsys.readouterr().out
    assert "PGD-L2" in text and "0.500" in text
    records = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in records] == [0, 1]
    assert set(records[0]["budgets"]) == {"0", "0.5"}
    assert records[0]["budgets"]["0.5"]["defended_norm"] <= 0.5 + 1e-6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and set(summary["budgets"]) == {"0", "0.5"}
    before = (out / "attack.jsonl").read_bytes()
    assert dpae(*base, "--out", out) == 0  # resumes: nothing left to do
    assert (out / "attack.jsonl").read_bytes() == before
    assert dpae(*base, "--norm", "linf", "--out", out) == 2
    assert "other settings" in capsys.readouterr().err
    assert dpae(*base, "--budgets", "0,abc", "--out", tmp_path / "b") == 2
    assert "--budgets" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
