"""`dpae report` on real small runs: the figures exist, the tables equal summary.json, bad runs are refused."""

import json
import shutil

import pytest

from dp_autoencoder.cli import main
from dp_autoencoder.report import load_run, markdown_table
from conftest import needs_fashion_mnist as needs_fmnist

COMMON = ["--autoencoder", "fmnist-ae-L0.3", "--classifier", "fmnist-classifier", "--data", "fashion-mnist",
          "--max", "4", "--skip", "9", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["certify", *COMMON, "--n0", "20", "--n", "100", "--out", str(root / "cert")]) == 0
    assert main(["certify", *COMMON, "--adaptive-radius", "0.1", "--n", "200", "--out", str(root / "adaptive")]) == 0
    assert main(["attack", *COMMON, "--budgets", "0,0.5", "--steps", "2", "--eot", "2", "--n0", "10", "--n", "20",
                 "--out", str(root / "attack")]) == 0
    return root


def _table_rows(path):
    lines = path.read_text().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


@needs_fmnist
def test_certify_writes_its_own_curve(runs):
    assert (runs / "cert" / "certified-accuracy.png").stat().st_size > 10_000
    assert (runs / "cert" / "certified-accuracy.svg").is_file()


@needs_fmnist
def test_report_tables_equal_the_summaries(runs, tmp_path, capsys):
    radii = "0,0.1,0.2,0.5"
    assert main(["report", str(runs / "cert"), str(runs / "adaptive"), str(runs / "attack"), "--radii", radii,
                 "--out", str(tmp_path), "--quiet"]) == 0
    for stem in ("certified-accuracy", "accuracy-under-attack"):
        for suffix in (".png", ".svg", ".md", ".tex"):
            assert (tmp_path / f"{stem}{suffix}").stat().st_size > 100
    rows = _table_rows(tmp_path / "certified-accuracy.md")
    summary = json.loads((runs / "cert" / "summary.json").read_text())
    adaptive = json.loads((runs / "adaptive" / "summary.json").read_text())
    by_bound = {(r[0].split(",")[1].strip().startswith("adaptive"), r[1]): r[2:] for r in rows}
    assert set(by_bound) == {(False, "smoothing"), (False, "PixelDP"), (True, "smoothing")}  # adaptive: no PixelDP
    for (is_adaptive, bound), cells in by_bound.items():
        source = adaptive if is_adaptive else summary
        key = "certified_accuracy_smoothing" if bound == "smoothing" else "certified_accuracy_pixeldp"
        assert [float(c) for c in cells] == [round(source[key][r], 3) for r in radii.split(",")]
    assert "fmnist-ae-L0.3 (L = 0.3) + fmnist-classifier, n = 100, alpha = 0.001" in rows[0][0]
    attack = json.loads((runs / "attack" / "summary.json").read_text())
    attack_rows = _table_rows(tmp_path / "accuracy-under-attack.md")
    assert [float(r[3]) for r in attack_rows] == [round(s["defended_accuracy"], 3) for s in attack["budgets"].values()]
    assert attack_rows[0][0].startswith("fmnist-ae-L0.3 + fmnist-classifier, PGD-L2")
    tex = (tmp_path / "certified-accuracy.tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "\\alpha" in tex and tex.count("\\\\") == len(rows) + 1


@needs_fmnist
def test_runs_in_other_norms_are_not_overlaid(runs, tmp_path, capsys):
    laplace = tmp_path / "laplace"
    shutil.copytree(runs / "cert", laplace)
    lines = [json.loads(line) for line in (laplace / "certify.jsonl").read_text().splitlines()]
    (laplace / "certify.jsonl").write_text("".join(json.dumps({**r, "noise": "laplace"}) + "\n" for r in lines))
    assert main(["report", str(runs / "cert"), str(laplace), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different norms" in err and "(L2)" in err and "(L1)" in err
    assert not (tmp_path / "r" / "certified-accuracy.png").exists()
    assert main(["report", str(laplace), "--out", str(tmp_path / "r1"), "--quiet"]) == 0  # alone: an L1 axis
    assert "L1 r = 0" in (tmp_path / "r1" / "certified-accuracy.md").read_text()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "summary.json").write_text("{}")
    assert main(["report", str(tmp_path / "notes"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "is not a dpae run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@needs_fmnist
def test_labels_and_radii_are_checked(runs, tmp_path, capsys):
    assert main(["report", str(runs / "cert"), "--labels", "a", "b", "--out", str(tmp_path), "--quiet"]) == 2
    assert "2 labels for 1 runs" in capsys.readouterr().err
    assert main(["report", str(runs / "cert"), "--radii", "0,x", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--radii" in capsys.readouterr().err
    assert main(["report", str(runs / "cert"), "--labels", "mine", "--out", str(tmp_path), "--quiet"]) == 0
    assert _table_rows(tmp_path / "certified-accuracy.md")[0][0] == "mine"
    assert load_run(runs / "cert").kind == "certify" and load_run(runs / "attack").kind == "attack"


def test_markdown_table_shape():
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"
