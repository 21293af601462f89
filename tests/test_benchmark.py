"""tools/benchmark.py: the --quick run writes its report, and the reference loop it compares against
does the same work as our engine (the same noise gives the same votes)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_autoencoder.sampler import NOISE_BLOCK

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dpae_benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared CPU its waits cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reference_and_ours_give_identical_votes_for_the_same_noise(bench, one_thread):
    stack = bench._tiny_stack(5)
    model, x, ids, n = stack.model, stack.images, [3, 0, 7, 1, 4], 230
    ref = bench.reference_votes(model, x, ids, n, stack.num_classes, NOISE_BLOCK, seed=5)
    assert ref.shape == (5, stack.num_classes) and (ref.sum(1) == n).all()
    assert (np.count_nonzero(ref, axis=1) > 1).any(), "the tiny stack must split its votes, or equality proves little"
    for batch, per_step in ((7, 2), (64, 8), (256, 3)):
        ours = bench.our_votes(model, x, ids, n, stack.num_classes, batch, seed=5, images_per_step=per_step)
        np.testing.assert_array_equal(ours, ref)
    # Another seed or another image index is other noise: the counts must change.
    assert not np.array_equal(bench.reference_votes(model, x, ids, n, stack.num_classes, NOISE_BLOCK, seed=6), ref)
    shifted = bench.our_votes(model, x, [i + 1 for i in ids], n, stack.num_classes, 64, seed=5)
    assert not np.array_equal(shifted, ref)
    # At another batch size the reference draws other noise, but still exactly n votes per image.
    other = bench.reference_votes(model, x, ids, n, stack.num_classes, 64, seed=5)
    assert (other.sum(1) == n).all() and (other >= 0).all()


def test_quick_run_writes_the_report_and_raw_numbers(bench, tmp_path, one_thread):
    out = tmp_path / "docs" / "bench.md"
    result = bench.main(["--quick", "--out", str(out), "--threads", "1"])
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["machine"]["threads"] == 1 and len(raw["load_start"]) == 3
    (st,) = raw["stacks"]
    assert st["name"] == "tiny"
    assert st["identical"]["equal_images"] == st["identical"]["images"] and st["identical"]["sums_ok"]
    assert [r["n"] for r in st["throughput"]] == [25, 100, 300]
    for r in st["throughput"]:
        assert len(r["ours_runs_s"]) == len(r["reference_runs_s"]) == 3
        assert r["ratio"] > 0 and r["efficiency"] > 0 and r["ours_draws_per_s"] > 0
    assert [r["n"] for r in st["latency"]] == [1, 10, 25]
    assert set(st["training"]["step_s"]) == {"none", "parseval", "project", "both"}
    text = out.read_text()
    for needle in ("# Certification speed", "python tools/benchmark.py --quick", "| n | images |",
                   "ours / reference", "efficiency", "Prediction latency", "Training step", "Load average"):
        assert needle in text, needle
    assert result["stacks"][0]["batch_size"] in (32, 64)
    assert bench.main(["--quick", "--from-json", str(out.with_suffix(".json")), "--out", str(tmp_path / "again.md")])
    assert (tmp_path / "again.md").read_text() == text


def test_bad_options_are_refused(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--reps", "2", "--out", str(tmp_path / "b.md")])
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--stacks", "resnet", "--out", str(tmp_path / "b.md")])
    assert not (tmp_path / "b.md").exists()
