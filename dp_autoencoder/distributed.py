"""Devices and torchrun: which device a process uses, what run.json records of it, and the process group.

Under torchrun every rank of a node sees the same GPUs; ``--device cuda`` then means ``cuda:LOCAL_RANK``
(:func:`local_device`), :func:`process_group` makes that the current device before NCCL starts, and two ranks
that would share one GPU (more ranks per node than GPUs, or ``--device cuda:0`` given to all of them) are
refused with a :class:`DistributedError` naming them (NCCL itself refuses a shared GPU, with a message about
duplicate devices, or hangs).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import platform
import socket
from pathlib import Path

import torch
import torch.distributed as dist


class DistributedError(ValueError):
    """A launch that cannot work: ranks that would share a GPU, a rank without one."""


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device, environ=None, device_count: int | None = None) -> torch.device:
    """The device of this process: under torchrun (LOCAL_RANK set) ``cuda`` is ``cuda:LOCAL_RANK``.

    Refused with a :class:`DistributedError`: a local rank beyond the visible GPUs (more ranks per node than
    GPUs: two would share one), and an explicit ``cuda:K`` other than ``cuda:LOCAL_RANK`` while the node runs
    several ranks (all would use GPU K); ``cuda:LOCAL_RANK`` itself is this function's own answer, so resolving
    twice is harmless.  ``environ`` and ``device_count`` default to the process's own (tests pass fakes)."""
    env = os.environ if environ is None else environ
    device = torch.device(device)
    if device.type != "cuda" or "LOCAL_RANK" not in env:
        return device
    local_rank = int(env["LOCAL_RANK"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if device.index is not None:
        if local_world > 1 and device.index != local_rank:
            raise DistributedError(
                f"--device {device} names one GPU for all {local_world} ranks on this node, so they would share "
                "it; pass --device cuda and each rank takes cuda:LOCAL_RANK")
        return device
    count = torch.cuda.device_count() if device_count is None else device_count
    if local_rank >= count:
        raise DistributedError(
            f"rank with LOCAL_RANK {local_rank} has no GPU of its own: this node shows {count} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}) to {local_world} ranks, and two "
            f"ranks cannot share one; run torchrun --nproc_per_node {max(count, 1)} or fewer")
    return torch.device("cuda", local_rank)


def gpu_identity(device: torch.device) -> str:
    """A name of the physical GPU behind ``device`` that differs between GPUs of one machine (its UUID)."""
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return str(uuid)
    return f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')} index {device.index}"


def check_distinct_devices(identity: str, group=None) -> None:
    """Refuse, on every rank alike, a group in which two ranks of one host hold the same ``identity`` (a GPU).

    A collective over ``group`` (gloo works, so the check runs before any NCCL communicator exists)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered = [None] * world
    dist.all_gather_object(gathered, (socket.gethostname(), str(identity)), group=group)
    first: dict[tuple, int] = {}
    for r, key in enumerate(gathered):
        if key in first:
            raise DistributedError(
                f"ranks {first[key]} and {r} would share one GPU ({key[1]}) on host {key[0]}: NCCL refuses that "
                "and two processes on one GPU gain nothing; start at most one rank per GPU "
                "(torchrun --nproc_per_node <= the number of GPUs) and pass --device cuda")
        first[key] = r


@contextlib.contextmanager
def process_group(device):
    """Join the torchrun group (gloo on CPU, nccl on CUDA) for the duration of the block.

    On CUDA the rank's own GPU (:func:`local_device`) becomes the current device first, so that NCCL, pinned
    memory and every ``cuda`` tensor without an index use it; ranks sharing a GPU are refused before NCCL
    starts."""
    device = torch.device(device)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if launched:
        if device.type == "cuda":
            device = local_device(device)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl")
            check = dist.new_group(backend="gloo")
            try:
                check_distinct_devices(gpu_identity(device), group=check)
            except DistributedError:
                dist.destroy_process_group()
                raise
            dist.destroy_process_group(check)
        else:
            dist.init_process_group("gloo")
    try:
        yield
    finally:
        if launched:
            dist.destroy_process_group()


# --- what run.json records of the device ------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_identity(device) -> dict:
    """``{"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}`` or ``{"type": "cpu", "name": <CPU model>}``.

    The noise of a seed is another stream on a CUDA generator than on the CPU's (and may differ between GPU
    models), so run folders record this and a resume on another device type is refused."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    if device.type == "cpu":
        return {"type": "cpu", "name": cpu_name()}
    return {"type": device.type, "name": str(device)}


def device_difference(recorded: dict | None, current: dict) -> tuple[str | None, str | None]:
    """(refusal, warning) for resuming a run made on ``recorded`` on ``current``: another device type is a
    refusal (other noise for the same seeds); another GPU model a warning (its noise may differ too); a
    run.json without a device (older runs) neither."""
    if not recorded or not recorded.get("type"):
        return None, None
    if recorded["type"] != current["type"]:
        return (f"the run there was made on {recorded['type']} ({recorded.get('name')}) and this one is on "
                f"{current['type']} ({current.get('name')}): the same seed draws other noise on another device "
                f"type, so its records would mix two noise streams; rerun with --device {recorded['type']}, or "
                "choose another --out"), None
    if current["type"] == "cuda" and recorded.get("name") and recorded.get("name") != current.get("name"):
        return None, (f"resuming a run made on {recorded['name']} on {current['name']}: the CUDA noise of a seed "
                      "may differ between GPU models, so the records may mix two noise streams")
    return None, None


# --- precision --------------------------------------------------------------------------------------
def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_is_native(device) -> bool:
    """Whether ``device`` computes in bfloat16 in hardware, so that bf16 autocast is a speed-up.

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` where torch has that argument, else compute
    capability >= 8.0 (Ampere and later); older GPUs emulate bf16 (torch's default answer counts emulation) and
    run it slower than fp16.  CPU: the AMX or AVX-512 BF16 instructions.  Anything else: False."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        check = torch.cuda.is_bf16_supported
        try:
            takes_emulation = "including_emulation" in inspect.signature(check).parameters
        except (TypeError, ValueError):
            takes_emulation = False
        if takes_emulation:
            return bool(check(including_emulation=False))
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())
    return False
