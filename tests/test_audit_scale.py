"""tools/audit_at_scale.py in its reduced form: it runs, resumes, and its report says what the runs hold."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import audit_at_scale  # noqa: E402


@pytest.fixture
def tool():
    threads = torch.get_num_threads()
    yield lambda *args: audit_at_scale.main([str(a) for a in args])
    torch.set_num_threads(threads)  # the tool sets its own


@needs_fashion_mnist
def test_quick_fashion_mnist_report(tmp_path, tool):
    args = ["--quick", "--quiet", "--parts", "fmnist-L0.3", "--report-parts", "fmnist-L0.3", "--work", tmp_path,
            "--out", tmp_path / "docs"]
    assert tool(*args) == 0
    report = json.loads((tmp_path / "docs" / "audit.json").read_text())
    (st,) = report["sets"]
    certify = [json.loads(x) for x in (tmp_path / "certify-fmnist-L0.3" / "certify.jsonl").read_text().splitlines()]
    assert st["certify"]["images"] == len(certify) == 6
    for bound, key in (("smoothing", "radius"), ("pixeldp", "pixeldp_size")):
        s = st["bounds"][bound]
        assert st["certify"]["certified"][bound] == sum(r[key] > 0 for r in certify)
        assert s["audited"] == min(2, st["certify"]["certified"][bound]) and s["finished"]
        rows = [json.loads(x) for x in (tmp_path / f"audit-fmnist-L0.3-{bound}" / "audit.jsonl").read_text().splitlines()]
        assert s["violations"] == sum(r["violation"] for r in rows)
        rate = 0.001 + (0.001 if bound == "smoothing" else 0.05)  # certify failure rate + the audit's alpha
        assert s["expected_false_certificates"] + s["expected_false_alarms"] == pytest.approx(rate * s["audited"])
        assert s["precision"] == "fp32" and all(r["precision"] == "fp32" for r in rows)
    md = (tmp_path / "docs" / "audit.md").read_text()
    assert "python tools/audit_at_scale.py --quick" in md and "no GPU" in md and "C&W" in md
    assert "| Fashion-MNIST, L = 0.3 | PixelDP |" in md
    before = (tmp_path / "audit-fmnist-L0.3-smoothing" / "audit.jsonl").read_bytes()
    assert tool(*args) == 0  # resumes: nothing left to attack
    assert (tmp_path / "audit-fmnist-L0.3-smoothing" / "audit.jsonl").read_bytes() == before


def test_quick_natural_images_and_an_unfinished_certify_folder(tmp_path, tool, capsys):
    """The bundled photos (shipped with the package's dependencies, no ../shared/data needed), bf16 as certified."""
    assert tool("--quick", "--quiet", "--parts", "natural", "--report-parts", "natural", "--work", tmp_path,
                "--out", tmp_path / "docs") == 0
    (st,) = json.loads((tmp_path / "docs" / "audit.json").read_text())["sets"]
    assert st["certify"]["precision"] == "bf16"
    audited = [b for b in st["bounds"].values() if b["audited"]]
    assert audited and all(b["precision"] == "bf16" for b in audited)
    # a certify folder still being written (no summary.json) is skipped, and the report says so
    unfinished = tmp_path / "running"
    unfinished.mkdir()
    (unfinished / "run.json").write_text((tmp_path / "certify-natural-quick" / "run.json").read_text())
    (unfinished / "certify.jsonl").write_text((tmp_path / "certify-natural-quick" / "certify.jsonl").read_text())
    capsys.readouterr()
    assert tool("--quick", "--quiet", "--parts", "natural", "--report-parts", "natural", "--natural-certify",
                unfinished, "--work", tmp_path / "w2", "--out", tmp_path / "docs2") == 0
    assert "has not finished" in capsys.readouterr().out
    (st,) = json.loads((tmp_path / "docs2" / "audit.json").read_text())["sets"]
    assert "had not finished" in st["missing"] and "--parts natural" in st["missing"]
    assert "not run (its certify run" in (tmp_path / "docs2" / "audit.md").read_text()


def test_unknown_part_is_refused(tool):
    with pytest.raises(SystemExit) as e:
        tool("--parts", "cifar10", "--report-only")
    assert e.value.code == 2
