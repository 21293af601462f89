"""torchrun support: a process group when launched with WORLD_SIZE > 1, nothing otherwise."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join the torchrun group (gloo on CPU, nccl on CUDA) for the duration of the block."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if launched:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if launched:
            dist.destroy_process_group()
