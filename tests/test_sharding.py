import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
