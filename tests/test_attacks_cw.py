"""Carlini-Wagner L2 against closed forms: the distance to a linear model's decision boundary."""

import json
import math

import pytest
import torch
from torch import nn

from conftest import needs_fashion_mnist
from dp_autoencoder.attacks import AttackError, AttackSettings, attack_dataset, prepare_run
from dp_autoencoder.cli import main
from dp_autoencoder.cw import carlini_wagner, format_cw_table, minimal_norms, summarize_cw
from dp_autoencoder.stack import state_fingerprint
from test_attacks import K, linear_case, minimal
from toy import CLASSES, toy_data, toy_model


class NoisyLinear(nn.Module):
    """x -> W (x + N(0, sigma^2 I)) + b with the sampler's noise protocol (g = identity)."""

    def __init__(self, linear, sigma: float):
        super().__init__()
        self.linear, self.sigma = linear, sigma

    def pre_noise(self, x):
        return x

    def sample_noise(self, shape, generator=None, device=None, dtype=torch.float32, out=None):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * self.sigma

    def logits_from_noisy(self, z, image_size):
        return self.linear(z)


def test_linear_untargeted_is_the_distance_to_the_nearest_boundary():
    """Multiclass: the minimal L2 perturbation is min_j (f_y - f_j) / ||w_y - w_j||; C&W gets within 1%, never below."""
    for seed in range(5):
        model, x, y, f = linear_case(seed)
        r = minimal(model, f, y, 2)
        a = carlini_wagner(model, x, [y], steps=100, search_steps=8, lr=0.01)
        assert a.success.item() and int(model(a.x_adv).argmax()) != y
        norm = float((a.x_adv - x).norm())
        assert norm == pytest.approx(float(a.norm[0]), rel=1e-5)
        assert r * (1 - 1e-5) <= norm <= 1.01 * r, (seed, norm / r)  # below r would be a bug
        assert 0 < a.x_adv.min() and a.x_adv.max() < 1  # the box is inactive: the closed form applies


def test_linear_two_classes_and_targeted():
    for seed in range(3):
        model, x, y, f = linear_case(seed, classes=2)
        r = abs(float(f[0] - f[1])) / float((model.W[0] - model.W[1]).detach().norm())
        a = carlini_wagner(model, x, [y], steps=100, search_steps=8, lr=0.01)
        assert a.success.item() and r * (1 - 1e-5) <= float(a.norm[0]) <= 1.01 * r
    model, x, y, f = linear_case(3)
    others = sorted((minimal(model, f, y, 2, j), j) for j in range(K) if j != y)
    (r_near, near), (r_far, far) = others[0], others[-1]
    # the nearest class wins right past its hyperplane (no third class can be ahead there)
    a = carlini_wagner(model, x, [y], target=[near], steps=100, search_steps=8, lr=0.01)
    assert a.success.item() and int(model(a.x_adv).argmax()) == near
    assert r_near * (1 - 1e-5) <= float(a.norm[0]) <= 1.01 * r_near
    # the farthest one must at least beat y: never below its distance to y's hyperplane
    b = carlini_wagner(model, x, [y], target=far, steps=100, search_steps=8, lr=0.01)
    assert b.success.item() and int(model(b.x_adv).argmax()) == far
    assert float(b.norm[0]) >= r_far * (1 - 1e-5)


def test_eot_on_a_noisy_linear_stack_finds_the_smoothed_boundary():
    """Two classes, Gaussian noise: the smoothed classifier (and the mean softmax's argmax, by the symmetry of
    the logistic function) flips exactly at the clean hyperplane, so the minimal perturbation is |w.x + b| / ||w||."""
    for seed in range(3):
        model, x, y, f = linear_case(seed, classes=2)
        r = abs(float(f[0] - f[1])) / float((model.W[0] - model.W[1]).detach().norm())
        noisy = NoisyLinear(model, 0.25)
        a = carlini_wagner(noisy, x, [y], steps=60, search_steps=6, lr=0.01, eot=16, eval_draws=2000, seed=seed)
        assert a.success.item()
        assert float(a.norm[0]) == pytest.approx(r, rel=0.05), (seed, float(a.norm[0]) / r)
        # fresh draws at the attacked image: on the smoothed classifier's boundary, half the votes have moved
        z = a.x_adv.flatten(1) + 0.25 * torch.randn(4000, x[0].numel(), generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            assert float((model(z).argmax(1) != y).float().mean()) == pytest.approx(0.5, abs=0.1)


def test_an_impossible_attack_fails_honestly():
    model, x, y, f = linear_case(1)
    r = minimal(model, f, y, 2)
    a = carlini_wagner(model, x, [y], steps=20, search_steps=1, initial_const=1e-6, lr=0.01)
    assert not a.success.item() and float(a.margin[0]) < 0
    assert int(model(a.x_adv).argmax()) == y and float(a.norm[0]) < r
    # kappa asks for a confident example: still never closer than the boundary
    b = carlini_wagner(model, x, [y], steps=100, search_steps=6, lr=0.01, kappa=1.0)
    assert b.success.item() and float(b.norm[0]) >= r


def test_box_frozen_weights_and_batch_independence():
    model = toy_model()
    before, modes = state_fingerprint(model), [m.training for m in model.modules()]
    x, y = toy_data(3)[:]
    x[0] = (x[0] > 0.5).float()  # every pixel on the domain's edges
    keys = [5, 6, 7]
    a = carlini_wagner(model, x, y, steps=5, search_steps=2, eot=4, lr=0.05, seed=2, keys=keys)
    assert a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    assert torch.allclose(a.norm, (a.x_adv - x).flatten(1).norm(dim=1), atol=1e-5)
    one = carlini_wagner(model, x[1:2], y[1:2], steps=5, search_steps=2, eot=4, lr=0.05, seed=2, keys=[6])
    assert torch.allclose(one.x_adv[0], a.x_adv[1], atol=1e-5)
    again = carlini_wagner(model, x, y, steps=5, search_steps=2, eot=4, lr=0.05, seed=2, keys=keys)
    assert torch.equal(a.x_adv, again.x_adv)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("kwargs, words", [
    (dict(steps=0), "steps must be"), (dict(search_steps=0), "search_steps must be"), (dict(eot=0), "eot must be"),
    (dict(lr=0.0), "lr must be"), (dict(initial_const=-1.0), "initial_const must be"),
    (dict(kappa=-0.5), "kappa"), (dict(eval_draws=0), "eval_draws")])
def test_bad_arguments(kwargs, words):
    model, x, y, _ = linear_case(0)
    with pytest.raises(AttackError, match=words):
        carlini_wagner(model, x, [y], **kwargs)
    with pytest.raises(AttackError, match="in \\[0, 1\\]"):
        carlini_wagner(model, x + 1, [y])


@pytest.mark.parametrize("kwargs, words", [
    (dict(method="fgsm"), "--method"), (dict(method="cw", norm="linf"), "L2 attack"),
    (dict(cw_steps=0), "--cw-steps"), (dict(cw_search_steps=0), "--cw-search-steps"), (dict(cw_lr=-1.0), "--cw-lr"),
    (dict(cw_const=float("nan")), "--cw-const"), (dict(cw_kappa=-1.0), "--cw-kappa"),
    (dict(cw_targets=("random",)), "--cw-targets")])
def test_bad_settings(kwargs, words):
    with pytest.raises(AttackError, match=words):
        AttackSettings(**kwargs).check()


def _record(idx, ref, und_clean, dfd_clean_ok, und, dfd):
    """und / dfd: per target (minimal norm or None)."""
    return {"idx": idx, "label": ref, "reference": ref, "undefended_clean": und_clean, "status": "ok",
            "defended_clean_correct": dfd_clean_ok,
            "targets": {t: {"undefended": {"minimal_norm": u}, "defended": {"minimal_norm": d}}
                        for t, u, d in zip(("untargeted", "runner-up"), und, dfd)}}


def test_summary_reads_accuracy_from_the_minimal_perturbations():
    records = [_record(0, 1, 1, 1, (0.3, 0.2), (None, 0.9)),  # moved at 0.2 / 0.9
               _record(1, 2, 2, 1, (0.6, None), (None, None)),  # moved at 0.6 / never
               _record(2, 3, 0, 0, (None, None), (None, None)),  # wrong before any attack: 0 / 0
               _record(3, 4, 4, 1, (1.5, 1.2), (2.0, None))]
    assert minimal_norms(records[0], "undefended") == 0.2 and minimal_norms(records[1], "defended") == math.inf
    assert minimal_norms(records[2], "undefended") == 0.0
    s = summarize_cw(records, (0.0, 0.25, 1.0))
    assert [s["budgets"][k]["undefended_accuracy"] for k in ("0", "0.25", "1")] == [0.75, 0.5, 0.25]
    assert [s["budgets"][k]["defended_accuracy"] for k in ("0", "0.25", "1")] == [0.75, 0.75, 0.5]
    assert s["median_minimal_norm_undefended"] == pytest.approx(0.4)  # of 0.2, 0.6, 0, 1.2
    assert s["median_minimal_norm_defended"] == pytest.approx(1.45)  # of 0.9, inf, 0, 2.0
    assert s["moved_defended"] == 3 and s["median_minimal_norm_defended_successful"] == pytest.approx(0.9)
    records[3]["targets"]["runner-up"]["defended"]["minimal_norm"] = None
    records[3]["targets"]["untargeted"]["defended"]["minimal_norm"] = None
    assert summarize_cw(records, (0.0,))["median_minimal_norm_defended"] is None  # half never moved
    assert "0.250" in format_cw_table(s)


def test_attack_dataset_cw_resumes_and_records_the_method(tmp_path):
    model = toy_model()
    data = toy_data(3)
    settings = AttackSettings(method="cw", budgets=(0.0, 2.0), eot=2, n0=5, n=10, cw_steps=3, cw_search_steps=2,
                              cw_lr=0.05, images_per_step=2)
    out = tmp_path / "cw"
    summary = attack_dataset(model, data, settings, out, CLASSES, progress=False)
    assert summary["method"] == "cw" and summary["images"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "cw" and run["cw_targets"] == ["untargeted", "runner-up"]
    lines = (out / "attack.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert set(rec["targets"]) == {"untargeted", "runner-up"}
    for side in ("undefended", "defended"):
        t = rec["targets"]["untargeted"][side]
        assert t["changed"] == (t["minimal_norm"] is not None)
    dfd = rec["targets"]["runner-up"]["defended"]
    assert dfd["target"] != rec["reference"] and "majority" in dfd and "radius" in dfd
    with open(out / "attack.jsonl", "w") as f:  # as if killed after the first image (and mid-write)
        f.write(lines[0] + "\n" + '{"idx": 1, "tr')
    resumed = attack_dataset(model, data, settings, out, CLASSES, progress=False)
    assert resumed["images_this_run"] == 2

    def results(s):
        return {k: v for k, v in s.items() if k not in ("seconds_this_run", "images_this_run")}

    assert results(resumed) == results(summary)  # same seeds per image: the same results after the kill
    assert [json.loads(x)["idx"] for x in (out / "attack.jsonl").read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(AttackError, match="method"):
        attack_dataset(model, data, AttackSettings(budgets=(0.0, 2.0), eot=2, n0=5, n=10, cw_steps=3,
                                                   cw_search_steps=2, cw_lr=0.05), out, CLASSES, progress=False)


def test_pgd_folders_from_before_the_method_option_still_resume(tmp_path):
    settings = AttackSettings()
    old = {k: v for k, v in settings.to_json().items() if k != "method" and not k.startswith("cw_")}
    tmp_path.joinpath("run.json").write_text(json.dumps(old))
    from dp_autoencoder.attacks import ATTACK_DEFAULTS_BEFORE

    prepare_run(tmp_path, settings.to_json(), defaults=ATTACK_DEFAULTS_BEFORE)  # no error: the same run
    with pytest.raises(AttackError, match="method"):
        prepare_run(tmp_path, AttackSettings(method="cw").to_json(), defaults=ATTACK_DEFAULTS_BEFORE)


def dpae(*args) -> int:
    return main([str(a) for a in args])


@needs_fashion_mnist
def test_cli_attack_cw(tmp_path, capsys):
    base = ["attack", "--method", "cw", "--autoencoder", "pretrained/fmnist-ae-L0.3", "--classifier",
            "pretrained/fmnist-classifier", "--data", "fashion-mnist", "--max", 2, "--budgets", "0,0.5",
            "--cw-steps", 3, "--cw-search-steps", 2, "--eot", 2, "--n0", 5, "--n", 10, "--device", "cpu", "--quiet"]
    assert dpae(*base, "--out", tmp_path / "a") == 0
    text = capsys.readouterr().out
    assert "Carlini-Wagner" in text and "median minimal perturbation" in text
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["method"] == "cw"
    assert dpae(*base, "--cw-lr", "0", "--out", tmp_path / "b") == 2
    assert "--cw-lr" in capsys.readouterr().err
    assert dpae(*base, "--norm", "linf", "--out", tmp_path / "b") == 2
    assert "L2 attack" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
