"""tools/gpu_train_frontends.py: the reduced CPU mode runs every step of the GPU run (batch choice, calibration,
both trainings, the L = 0.3 one started from the new L = 0.1 one, screening, packing) and writes what comes back."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dp_autoencoder.autoencoder import load_autoencoder

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"


@pytest.mark.skipif(not DEV.is_dir(), reason="../shared/data/imagenet-samples-dev not present")
def test_reduced_mode_writes_everything_the_gpu_run_returns(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_train_frontends.py"), "train", "--reduced", "--device", "cpu",
           "--out", str(out), "--work", str(tmp_path / "work"), "--data", str(DEV)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoints.tar", "screen.json", "screen.md", "summary.json", "train.log"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reduced"] and summary["screen_rc"] == 0
    assert summary["phases"]["L0.1"]["epochs"] == 1 and summary["phases"]["L0.3"]["crops"] > 0
    with tarfile.open(out / "checkpoints.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    for L in ("0.1", "0.3"):
        _, config = load_autoencoder(tmp_path / "unpacked" / f"gpu-natural-ae-L{L}")
        assert config["noise"]["L"] == float(L)
    _, config = load_autoencoder(tmp_path / "unpacked" / "gpu-natural-ae-L0.3")
    assert config["training"]["settings"]["init_from"].endswith("gpu-natural-ae-L0.1")
    screen = json.loads((out / "screen.json").read_text())
    assert {r["name"] for r in screen["rows"]} >= {"gpu L0.1", "gpu L0.3", "shipped natural-ae-L0.1"}
    assert "gpu L0.3" in (out / "train.log").read_text()
