"""The development metric (dp_autoencoder.screening, tools/screen_frontends.py): closed forms, a hand count of the
levels, and the votes of a toy model counted again by hand from the same seeded noise."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dp_autoencoder.certificates import smoothing_radius_gaussian, smoothing_radius_laplace
from dp_autoencoder.screening import (
    certification_level,
    measure_vote_shares,
    plugin_radius,
    radius_level,
    summarize_shares,
    wilson_interval,
)
from dp_autoencoder.seeding import generator
from dp_autoencoder.stats import clopper_pearson_lower
from toy import CLASSES, toy_data, toy_model

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"


def test_radius_level_inverts_the_smoothing_radius():
    assert radius_level(0.0, "gaussian", 0.25) == 0.5
    assert radius_level(0.0, "laplace", 0.3) == 0.5
    assert math.isclose(radius_level(0.25, "gaussian", 0.25), norm.cdf(1.0))
    for r in (0.1, 0.4, 0.9):
        p = radius_level(r, "gaussian", 0.3, sensitivity=0.8)
        assert math.isclose(smoothing_radius_gaussian(p, 0.3, 0.8), r, rel_tol=1e-9)
        p = radius_level(r, "laplace", 0.3, sensitivity=0.8)
        assert math.isclose(smoothing_radius_laplace(p, 0.3, 0.8), r, rel_tol=1e-9)
    with pytest.raises(ValueError, match="noise"):
        radius_level(0.1, "uniform", 0.3)
    with pytest.raises(ValueError, match="radius >= 0"):
        radius_level(-0.1, "gaussian", 0.3)


def test_certification_level_is_the_smallest_share_that_certifies():
    n, alpha = 1000, 0.001
    for level in (0.5, norm.cdf(1.0), 0.99):
        share = certification_level(level, n, alpha)
        k = round(share * n)
        lower = float(clopper_pearson_lower(k, n, alpha))
        below = float(clopper_pearson_lower(k - 1, n, alpha))
        assert (lower > level) if level == 0.5 else (lower >= level)
        assert below <= level if level == 0.5 else below < level
    # 100 draws at alpha 0.001 cannot reach Phi(4): nothing certifies.
    assert certification_level(norm.cdf(4.0), 100, alpha) > 1


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_counts_by_hand():
    shares = [0.4, 0.5, 0.6, 0.9, 1.0]
    s = summarize_shares(shares, draws=10, radii=(0.0, 0.25, 0.5), noise="gaussian", scale=0.25)
    # r = 0: share > 1/2 -> 0.6, 0.9, 1.0; r = 0.25: >= Phi(1) = 0.841 -> 0.9, 1.0; r = 0.5: >= Phi(2) = 0.977 -> 1.0.
    assert s.counts == (3, 2, 1)
    assert s.shares == (0.6, 0.4, 0.2)
    assert s.intervals[0] == wilson_interval(3, 5)
    # Plug-in radii: 0, 0, 0.25 Phi^-1(0.6), 0.25 Phi^-1(0.9), 0.25 Phi^-1(0.95) (1.0 clipped to 9.5 / 10).
    expected = np.array([0, 0, norm.ppf(0.6), norm.ppf(0.9), norm.ppf(0.95)]) * 0.25
    assert math.isclose(s.mean_radius, expected.mean(), rel_tol=1e-12)
    assert math.isclose(s.mean_radius_se, expected.std(ddof=1) / math.sqrt(5), rel_tol=1e-12)
    # Projected to n = 100 at alpha 0.001 the levels rise: 0.6 no longer certifies anything.
    p = summarize_shares(shares, draws=10, radii=(0.0, 0.25), noise="gaussian", scale=0.25, n=100, alpha=0.001)
    assert p.counts == (2, 1) and p.levels[0] > 0.6
    with pytest.raises(ValueError, match="shares"):
        summarize_shares([1.2], draws=10, radii=(0.0,), noise="gaussian", scale=0.25)


def test_plugin_radius_laplace_and_abstention():
    r = plugin_radius(np.array([0.5, 0.75, 1.0]), draws=4, noise="laplace", scale=0.2)
    assert r[0] == 0.0
    assert math.isclose(r[1], -0.2 * math.log(2 * 0.25))
    assert math.isclose(r[2], -0.2 * math.log(2 * (1 - 3.5 / 4)))


def test_vote_shares_equal_a_hand_count_of_the_same_noise():
    model = toy_model().eval()
    classifier = model.classifier
    data = toy_data(6)
    images = torch.stack([data[i][0] for i in range(6)])
    labels = [int(data[i][1]) for i in range(6)]
    draws, seed = 40, 7
    rows = measure_vote_shares(model, classifier, images, labels, draws, seed, batch_size=16, first_index=10)
    with torch.no_grad():
        for j, row in enumerate(rows):
            z = model.pre_noise(images[j:j + 1])
            noise = model.sample_noise((draws, *z.shape[1:]), generator(seed, 10 + j, "screening", 0), z.device)
            votes = model.logits_from_noisy(z + noise, images.shape[-2:]).argmax(1)
            counts = torch.bincount(votes, minlength=CLASSES)
            undefended = int(classifier(images[j:j + 1]).argmax(1))
            assert row["idx"] == 10 + j and row["undefended"] == undefended and row["label"] == labels[j]
            assert row["share_label"] == counts[labels[j]].item() / draws
            assert row["share_undefended"] == counts[undefended].item() / draws
            assert row["share_top"] == counts.max().item() / draws
    assert any(0 < r["share_top"] < 1 for r in rows), "the toy noise should split some votes"
    # The same photo alone gets the same noise (seeded by its index, not its place in the batch).
    alone = measure_vote_shares(model, classifier, images[3:4], labels[3:4], draws, seed, first_index=13)
    assert alone[0] == rows[3]


@pytest.mark.skipif(not DEV.is_dir(), reason="../shared/data/imagenet-samples-dev not present")
def test_screen_tool_end_to_end_and_resume(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "screen_frontends.py"), "--front-end",
           f"u=pretrained/natural-ae-L0.1", "--max", "2", "--draws", "4", "--work", str(tmp_path / "w"),
           "--out", str(tmp_path / "s.md"), "--quiet"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    names = {(r["name"], r["what"]) for r in data["rows"]}
    assert names == {("no front-end (noise on pixels) L0.1", "accuracy"), ("no front-end (noise on pixels) L0.1", "agreement"),
                     ("u", "accuracy"), ("u", "agreement")}
    assert all(r["images"] == 2 for r in data["rows"])
    rows = (tmp_path / "w" / "u.jsonl").read_text().splitlines()
    assert len(rows) == 3  # the key, then one row per photo
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert (tmp_path / "w" / "u.jsonl").read_text().splitlines() == rows  # nothing recomputed
    # A cache made with other settings is refused, not mixed in.
    sys.path.insert(0, str(ROOT / "tools"))
    from screen_frontends import read_rows

    key = json.loads(rows[0])["key"]
    assert set(read_rows(tmp_path / "w" / "u.jsonl", key)) == {0, 1}
    with pytest.raises(SystemExit, match="other settings"):
        read_rows(tmp_path / "w" / "u.jsonl", {**key, "seed": 3})


def test_paired_difference_by_hand():
    from dp_autoencoder.screening import paired_difference

    a, b = [0.9, 0.6, 1.0, 0.3], [0.6, 0.6, 0.9, 0.9]
    d = paired_difference(a, b, draws=10, radius=0.25, noise="gaussian", scale=0.25)
    diff = plugin_radius(np.array(a), 10, "gaussian", 0.25) - plugin_radius(np.array(b), 10, "gaussian", 0.25)
    assert math.isclose(d["mean_radius_difference"], diff.mean())
    assert math.isclose(d["se"], diff.std(ddof=1) / 2)
    # r = 0.25 needs >= Phi(1) = 0.841: a clears photos 0 and 2, b photos 2 and 3.
    assert (d["gained"], d["lost"]) == (1, 1)
    with pytest.raises(ValueError, match="same images"):
        paired_difference([0.5], [0.5, 0.6], draws=10, radius=0.0, noise="gaussian", scale=0.25)
