import json
import math

import pytest
import torch

from conftest import needs_fashion_mnist
from dataclasses import replace

from dp_autoencoder.attacks import AttackError, prepare_run
from dp_autoencoder.audit import (AUDIT_DEFAULTS_BEFORE, AuditSettings, audit_certified, audit_image,
                                  check_certify_records, false_alarm_pvalue, format_audit, into_ball, pixeldp_violation,
                                  runner_up, smoothing_guaranteed_probability, smoothing_violation)
from dp_autoencoder.certify import certificates, sparse
from dp_autoencoder.cli import main
from dp_autoencoder.sampler import sample_votes
from dp_autoencoder.stack import state_fingerprint
from toy import CLASSES, SIZE, toy_data, toy_model

FAST = AuditSettings(steps=10, restarts=1, eot=8, n_select=50, n=300, cw_steps=10, cw_search_steps=2)


def test_smoothing_violation_needs_significance():
    assert smoothing_violation(400, 1000, 0.001)[0]  # p_c <= 0.44 with 99.9% confidence
    violated, upper = smoothing_violation(480, 1000, 0.001)  # below 1/2, but not significantly
    assert not violated and 0.5 < upper < 0.53
    assert not smoothing_violation(600, 1000, 0.001)[0]


def test_pixeldp_violation_needs_separated_intervals():
    violated, upper_c, other = pixeldp_violation([300, 600, 100], 0, 0.001)
    assert violated and upper_c < other
    assert not pixeldp_violation([480, 520, 0], 0, 0.001)[0]  # the other class leads, not significantly
    assert not pixeldp_violation([600, 300, 100], 0, 0.001)[0]


def test_guaranteed_probability_and_pvalue():
    sigma, delta_norm = 0.5, 1.0
    p_a = 0.9
    r = sigma * 1.2815515655446004 / delta_norm  # Phi^{-1}(0.9)
    assert smoothing_guaranteed_probability(p_a, 0.0, sigma, delta_norm) == pytest.approx(0.9)
    assert smoothing_guaranteed_probability(p_a, r, sigma, delta_norm) == pytest.approx(0.5)
    assert false_alarm_pvalue(0, 100, 0.002) == 1.0
    assert false_alarm_pvalue(1, 100, 0.002) == pytest.approx(1 - 0.998 ** 100)
    tail = 1 - sum(math.comb(100, k) * 0.002 ** k * 0.998 ** (100 - k) for k in range(5))
    assert false_alarm_pvalue(5, 100, 0.002) == pytest.approx(tail, rel=1e-6)


def test_runner_up():
    scores = torch.tensor([0.1, 3.0, 2.0, -1.0])
    assert runner_up({"counts": {"1": 90, "3": 10}}, 1, 4, scores) == 3
    assert runner_up({"counts": {"1": 100}, "selection_counts": {"1": 9, "0": 1}}, 1, 4, scores) == 0
    assert runner_up({"counts": {"1": 100}, "selection_counts": {"1": 10}}, 1, 4, scores) == 2


def toy_record(model, x, idx: int, label: int, n0: int = 100, n: int = 1000) -> dict:
    """A genuine certify record for one toy image (the fields the audit reads)."""
    z = model.pre_noise(x)
    common = dict(num_classes=CLASSES, image_size=(SIZE, SIZE), seed=0)
    sel = sample_votes(model, z, [idx], n0, purpose="selection", **common).counts[0].numpy()
    est = sample_votes(model, z, [idx], n, purpose="estimation", **common).counts[0].numpy()
    noise = model.noise
    sens = model.sensitivity((SIZE, SIZE))
    cert = certificates(sel, est, noise=noise.kind, scale=noise.scale, sensitivity=sens, eps=noise.eps,
                        delta=noise.delta, alpha=0.001, eta=0.95)
    return {"idx": idx, "label": label, "status": "ok", "noise": "gaussian", "scale": noise.scale, "sensitivity": sens,
            "alpha": 0.001, "eta": 0.95, "counts": sparse(est), "selection_counts": sparse(sel), **cert}


def test_audit_passes_a_true_certificate_and_catches_a_planted_false_one():
    model = toy_model()
    before = state_fingerprint(model)
    x, y = toy_data(1)[0]
    x = x.unsqueeze(0)
    record = toy_record(model, x, 0, int(y))
    assert record["radius"] > 0 and record["pixeldp_size"] > 0
    for bound in ("smoothing", "pixeldp"):
        rec = audit_image(model, x, record, bound, FAST, CLASSES)
        assert rec["within_budget"] and rec["distance"] <= rec["budget"]
        assert not rec["violation"] and not rec.get("violation_vs_bound"), rec
        assert {"pgd-untargeted", "pgd-targeted", "cw"} <= set(rec["distances"]) == set(rec["select_counts"])
        assert all(d <= rec["budget"] for d in rec["distances"].values())
        assert rec["chosen"] in rec["distances"] and rec["winner"] == rec["chosen"].split("-")[0]
    # A false certificate: the toy stack flips at L2 distance ~4 (see test_attacks), far beyond its true radius.
    bogus = {**record, "radius": 4.0, "pixeldp_size": 4.0}
    smooth = audit_image(model, x, bogus, "smoothing", FAST, CLASSES)
    assert smooth["violation"] and smooth["majority_changed"]
    assert smooth["p_c_upper"] < 0.5
    assert audit_image(model, x, bogus, "pixeldp", FAST, CLASSES)["violation"]
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_cw_alone_catches_the_planted_false_certificate():
    model = toy_model()
    x, y = toy_data(1)[0]
    x = x.unsqueeze(0)
    record = toy_record(model, x, 0, int(y))
    cw_only = replace(FAST, attacks=("cw",))
    assert not audit_image(model, x, record, "smoothing", cw_only, CLASSES)["violation"]
    bogus = audit_image(model, x, {**record, "radius": 4.0}, "smoothing", cw_only, CLASSES)
    assert bogus["violation"] and bogus["winner"] == "cw" and bogus["distance"] <= 4.0


def test_into_ball():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 8, 8, generator=g)
    far = (x + torch.randn(x.shape, generator=g)).clamp(0, 1)
    for budget in (0.1, 0.5):
        inside = into_ball(x, far, budget)
        assert float((inside - x).norm()) <= budget and 0 <= inside.min() and inside.max() <= 1
    near = x + 0.01 * torch.sign(0.5 - x)  # moves every pixel toward the middle: stretching stays in [0, 1]
    assert torch.equal(into_ball(x, near, 0.5), near)
    assert float((into_ball(x, near, 0.5, stretch=True) - x).norm()) == pytest.approx(0.5, rel=1e-4)
    assert torch.equal(into_ball(x, x, 0.5, stretch=True), x)
    # a 224 x 224 photo and a budget of 0.002: float32 rounding of x + delta must not leave the ball
    photo = torch.rand(1, 3, 224, 224, generator=g)
    tiny = photo + 1e-3 * torch.randn(photo.shape, generator=g) / 388
    for stretch in (False, True):
        for budget in (0.0007, 0.002, 0.0021):
            inside = into_ball(photo, tiny, budget, stretch=stretch)
            d = float((inside.double() - photo.double()).norm())
            assert d <= budget and (not stretch or d > 0.99 * budget)


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_noisy_forwards_run_at_the_certify_precision(precision, dtype):
    model = toy_model()
    seen = []
    forward = model.logits_from_noisy

    def spy(z, size):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(z, size)

    model.logits_from_noisy = spy
    x, y = toy_data(1)[0]
    x = x.unsqueeze(0)
    record = toy_record(model, x, 0, int(y), n=100)
    seen.clear()
    rec = audit_image(model, x, record, "smoothing", replace(FAST, steps=2, cw_steps=2, n=50, precision=precision),
                      CLASSES)
    assert rec["precision"] == precision
    assert seen and set(seen) == {dtype}  # attacks, selection and test draws alike


@pytest.mark.parametrize("kwargs, words", [(dict(attacks=("fgsm",)), "--attacks"), (dict(attacks=()), "--attacks"),
                                           (dict(precision="fp8"), "precision"), (dict(cw_steps=0), "--cw-steps"),
                                           (dict(cw_lr_factor=0.0), "--cw-lr-factor")])
def test_bad_audit_settings(kwargs, words):
    with pytest.raises(AttackError, match=words):
        AuditSettings(**kwargs).check()


def test_audit_folders_from_before_cw_resume(tmp_path):
    old = {k: v for k, v in AuditSettings(attacks=("pgd",)).to_json().items()
           if k not in ("attacks", "precision") and not k.startswith("cw_")}
    old.update(cw_steps=20, cw_search_steps=4, cw_lr_factor=0.25, cw_const=1.0)
    (tmp_path / "run.json").write_text(json.dumps(old))
    prepare_run(tmp_path, AuditSettings(attacks=("pgd",)).to_json(), defaults=AUDIT_DEFAULTS_BEFORE)
    with pytest.raises(AttackError, match="attacks"):
        prepare_run(tmp_path, AuditSettings().to_json(), defaults=AUDIT_DEFAULTS_BEFORE)


def test_audit_run_counts_resumes_and_refuses(tmp_path):
    model = toy_model()
    data = toy_data(3)
    records = [toy_record(model, data[i][0].unsqueeze(0), i, int(data[i][1]), n=300) for i in range(2)]
    records[1] = {**records[1], "radius": 4.0}  # planted
    uncertified = {**records[0], "idx": 2, "label": int(data[2][1]), "radius": -1.0, "pixeldp_size": 0.0}
    records.append(uncertified)
    settings = AuditSettings(bounds=("smoothing",), steps=8, restarts=1, eot=8, n_select=30, n=200, cw_steps=5,
                             cw_search_steps=2)
    summary = audit_certified(model, data, records, settings, tmp_path / "a", CLASSES, progress=False)
    s = summary["smoothing"]
    assert s["audited"] == 2 and s["violations"] == 1 and s["p_value"] < 0.01
    assert s["expected_false_certificates"] == pytest.approx(0.002)
    assert "significant violations 1" in format_audit(summary)
    lines = (tmp_path / "a" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["idx"] for line in lines] == [0, 1]
    with open(tmp_path / "a" / "audit.jsonl", "a") as f:
        f.write('{"idx": 9, "trunc')  # a kill mid-write
    assert audit_certified(model, data, records, settings, tmp_path / "a", CLASSES, progress=False) == summary
    assert (tmp_path / "a" / "audit.jsonl").read_text().splitlines() == lines
    with pytest.raises(AttackError, match="other settings"):
        audit_certified(model, data, records, AuditSettings(bounds=("smoothing",), n=201), tmp_path / "a", CLASSES)
    wrong = [{**records[0], "label": (records[0]["label"] + 1) % CLASSES}]
    with pytest.raises(AttackError, match="not the same data"):
        audit_certified(model, data, wrong, settings, tmp_path / "b", CLASSES, progress=False)
    with pytest.raises(AttackError, match="Gaussian"):
        check_certify_records([{**records[0], "noise": "laplace"}])


def dpae(*args) -> int:
    return main([str(a) for a in args])


@needs_fashion_mnist
def test_cli_audit(tmp_path, capsys):
    models = ["--autoencoder", "pretrained/fmnist-ae-L0.3", "--classifier", "pretrained/fmnist-classifier"]
    assert dpae("certify", *models, "--data", "fashion-mnist", "--max", 2, "--n0", 20, "--n", 60, "--device", "cpu",
                "--precision", "bf16", "--quiet", "--out", tmp_path / "c") == 0
    certified = [json.loads(line) for line in (tmp_path / "c" / "certify.jsonl").read_text().splitlines()]
    capsys.readouterr()
    fast = ["--steps", 2, "--restarts", 1, "--eot", 2, "--cw-steps", 2, "--cw-search-steps", 1, "--n-select", 10,
            "--n", 50, "--device", "cpu", "--quiet"]
    assert dpae("audit", "--certify-dir", tmp_path / "c", *models, *fast, "--out", tmp_path / "a") == 0
    assert "randomized smoothing" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["smoothing"]["audited"] == sum(r["radius"] > 0 for r in certified)
    assert summary["pixeldp"]["audited"] == sum(r["pixeldp_size"] > 0 for r in certified)
    rows = [json.loads(line) for line in (tmp_path / "a" / "audit.jsonl").read_text().splitlines()]
    assert all(r["distance"] <= r["budget"] + 1e-6 for r in rows)
    assert all(r["precision"] == "bf16" for r in rows)  # the certify run's, from its run.json
    assert json.loads((tmp_path / "a" / "run.json").read_text())["precision"] == "bf16"
    # refusals: no certify folder, other weights than the certify run's, a bad option
    assert dpae("audit", "--certify-dir", tmp_path / "nothing", *models, "--out", tmp_path / "x") == 2
    assert "no certify.jsonl" in capsys.readouterr().err
    assert dpae("audit", "--certify-dir", tmp_path / "c", "--autoencoder", "pretrained/fmnist-ae-L0.1",
                "--classifier", "pretrained/fmnist-classifier", *fast, "--out", tmp_path / "x") == 2
    assert "auto-encoder weights" in capsys.readouterr().err
    assert dpae("audit", "--certify-dir", tmp_path / "c", *models, "--bounds", "smoothing,cohen", "--out",
                tmp_path / "x") == 2
    assert "--bounds" in capsys.readouterr().err
    assert dpae("audit", "--certify-dir", tmp_path / "c", *models, "--attacks", "pgd,fgsm", "--out",
                tmp_path / "x") == 2
    assert "--attacks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
