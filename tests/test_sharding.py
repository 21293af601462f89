import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dp_autoencoder.certify import read_records

HERE = Path(__file__).parent


@pytest.mark.slow
def test_torchrun_two_ranks_merge_into_the_single_process_files(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    single = subprocess.run([sys.executable, HERE / "shard_worker.py", tmp_path / "one", "64"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", HERE / "shard_worker.py",
                              tmp_path / "two", "37"], capture_output=True, text=True, env=env, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    one, two = (read_records(tmp_path / d / "certify.jsonl") for d in ("one", "two"))
    assert len(one) == 9 and strip(one) == strip(two)
    assert not list((tmp_path / "two").glob("certify.part*"))
    drop_time = lambda p: [r.split("\t")[:5] + r.split("\t")[6:] for r in p.read_text().splitlines()]
    assert drop_time(tmp_path / "one" / "certify.tsv") == drop_time(tmp_path / "two" / "certify.tsv")


@pytest.mark.slow
def test_kill_minus_9_then_resume_ends_with_the_uninterrupted_files(tmp_path):
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = [sys.executable, HERE / "shard_worker.py"]
    assert subprocess.run(worker + [tmp_path / "full", "64"], env=env, timeout=300).returncode == 0
    jsonl = tmp_path / "cut" / "certify.jsonl"
    proc = subprocess.Popen(worker + [tmp_path / "cut", "64"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and (not jsonl.exists() or jsonl.read_bytes().count(b"\n") < 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert jsonl.read_bytes().count(b"\n") < 9, "the run finished before it could be killed"
    assert subprocess.run(worker + [tmp_path / "cut", "64"], env=env, timeout=300).returncode == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(read_records(jsonl)) == strip(read_records(tmp_path / "full" / "certify.jsonl"))


# --- devices under torchrun, without a GPU: fakes where CUDA would answer -------------------------------
def _torchrun():
    return shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["distinct", "same"])
def test_each_rank_takes_its_local_gpu_and_a_shared_one_is_refused(tmp_path, mode):
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node", "2", HERE / "shard_worker.py", "devices",
                           tmp_path, mode], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, result in enumerate(ranks):
        assert result["set_device"] == [f"cuda:{r}"]  # LOCAL_RANK's GPU, current before the group starts
        assert not result["initialized_after"]  # the group is gone, refused or not
        if mode == "distinct":
            assert result["inside"] and result["world"] == 2 and result["error"] is None
        else:  # every rank refuses alike (no rank left waiting in a collective)
            assert not result["inside"]
            assert "ranks 0 and 1 would share one GPU (GPU-same)" in result["error"]


def test_local_device_follows_local_rank():
    from dp_autoencoder.distributed import local_device

    torchrun = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}
    assert local_device("cuda", torchrun, device_count=2) == torch.device("cuda", 1)
    assert local_device("cuda", {}, device_count=2) == torch.device("cuda")  # no torchrun: as given
    assert local_device("cpu", torchrun, device_count=0) == torch.device("cpu")
    one_per_node = {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "4"}
    assert local_device("cuda:3", one_per_node, device_count=4) == torch.device("cuda", 3)
    # The API resolves cuda to cuda:LOCAL_RANK and process_group resolves it again: the same answer.
    four = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "4"}
    assert local_device(local_device("cuda", four, device_count=4), four, device_count=4) == torch.device("cuda", 1)


def test_more_ranks_than_gpus_or_one_named_gpu_for_all_are_refused():
    from dp_autoencoder.distributed import DistributedError, local_device

    with pytest.raises(DistributedError, match=r"LOCAL_RANK 2 has no GPU of its own: this node shows 2 GPU\(s\) "
                                               r"\(CUDA_VISIBLE_DEVICES=unset\) to 4 ranks.*--nproc_per_node 2"):
        local_device("cuda", {"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4"}, device_count=2)
    with pytest.raises(DistributedError, match="--device cuda:0 names one GPU for all 2 ranks"):
        local_device("cuda:0", {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, device_count=2)


def test_bf16_is_native_asks_torch_without_emulation(monkeypatch):
    from dp_autoencoder import distributed

    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # a GPU that emulates bf16: supported only when emulation counts

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert distributed.bf16_is_native("cuda") is False and asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert distributed.bf16_is_native(torch.device("cuda", 0)) is True
    # An older torch without the argument: the compute capability decides (Ampere, 8.0, and later).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert distributed.bf16_is_native("cuda") is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert distributed.bf16_is_native("cuda") is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.bf16_is_native("cuda") is False
    monkeypatch.setattr(distributed, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert distributed.bf16_is_native("cpu") is True
    monkeypatch.setattr(distributed, "_cpu_flags", lambda: {"avx2"})
    assert distributed.bf16_is_native("cpu") is False
    assert distributed.bf16_is_native("meta") is False


def test_device_identity_and_the_resume_rule():
    from dp_autoencoder.distributed import device_difference, device_identity

    cpu = device_identity("cpu")
    assert cpu["type"] == "cpu" and cpu["name"]
    h100, a100 = {"type": "cuda", "name": "NVIDIA H100"}, {"type": "cuda", "name": "NVIDIA A100"}
    assert device_difference(None, cpu) == (None, None)  # a run.json from before the key
    assert device_difference(cpu, {**cpu, "name": "another CPU"}) == (None, None)  # CPU noise is the same
    refusal, warning = device_difference(h100, cpu)
    assert "made on cuda (NVIDIA H100)" in refusal and "--device cuda" in refusal and warning is None
    refusal, warning = device_difference(h100, a100)
    assert refusal is None and "NVIDIA H100 on NVIDIA A100" in warning
