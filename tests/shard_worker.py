"""Run by test_sharding under torchrun.

``shard_worker.py OUT BATCH``: certify the toy data set into OUT.
``shard_worker.py devices OUT same|distinct``: enter ``process_group(cuda)`` on a machine without a GPU, with
fakes where CUDA would answer (2 GPUs, set_device recorded, gloo instead of NCCL, each rank's GPU identity
the same or its own), and write what each rank did to OUT/rank<R>.json.
"""

import json
import os
import sys
from pathlib import Path

import torch

if __name__ == "__main__" and sys.argv[1] == "devices":
    import torch.distributed as dist

    import dp_autoencoder.distributed as d

    out, mode = Path(sys.argv[2]), sys.argv[3]
    rank = int(os.environ["RANK"])
    calls = []
    torch.cuda.set_device = lambda device: calls.append(str(device))
    torch.cuda.device_count = lambda: 2
    real_init = dist.init_process_group
    dist.init_process_group = lambda backend=None, **kw: real_init("gloo", **kw)
    d.gpu_identity = lambda device: "GPU-same" if mode == "same" else f"GPU-{device.index}"
    result = {"rank": rank, "set_device": calls, "error": None, "inside": False}
    try:
        with d.process_group(torch.device("cuda")):
            result["inside"] = True
            result["world"] = d.rank_world()[1]
    except d.DistributedError as e:
        result["error"] = str(e)
    result["initialized_after"] = dist.is_initialized()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    sys.exit(0)

if __name__ == "__main__":
    from dp_autoencoder.certify import CertifySettings, certify_dataset
    from dp_autoencoder.distributed import process_group
    from toy import CLASSES, toy_data, toy_model

    torch.set_num_threads(1)
    settings = CertifySettings(n0=20, n=60, alpha=0.01, eta=0.95, batch_size=int(sys.argv[2]), images_per_step=2)
    with process_group(torch.device("cpu")):
        certify_dataset(toy_model(), toy_data(9), settings, sys.argv[1], CLASSES, progress=False)
