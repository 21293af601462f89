"""Checkpoints: a directory with safetensors weights, a JSON config and their sha256.

    CKPT/config.json                      the config; names the weights file and its sha256
    CKPT/weights-<sha256[:16]>.safetensors

``config.json`` is the commit point: the weights are written first under a name derived
from their hash, then the config is replaced atomically (temp file + rename), then stale
weight files are removed.  A crash at any moment leaves the previous or the new
checkpoint, never a mix.  Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and safetensors are imported where tensors are read or written: the registry and
    import torch   # `dpae --help` use this module's errors and sha256 without importing torch

FORMAT = "dp_autoencoder/1"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, tampered with, or not ours."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints and results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _save_tensors(directory: Path, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    # Serialized in memory and written like every other file: fsynced before config.json names it, and a
    # full disk is an OSError (safetensors' save_file neither fsyncs nor reports one as an OSError).
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{prefix}-{digest[:16]}.safetensors"
    atomic_write_bytes(directory / name, data)
    return {"file": name, "sha256": digest}


def save_checkpoint(directory, tensors: dict[str, torch.Tensor], config: dict,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write ``tensors`` (and optional named groups such as a training state) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"weights": _save_tensors(directory, "weights", tensors)}
    for name, group in (extra or {}).items():
        files[name] = _save_tensors(directory, name, group)
    atomic_write_json(directory / CONFIG, {**config, "format": FORMAT, "files": files})
    keep = {f["file"] for f in files.values()}
    for stale in directory.glob("*.safetensors"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    # Temporary files of a save that was killed (kill -9 leaves them; any other exit removes its own).
    for prefix in [CONFIG, *files]:
        for leftover in directory.glob(f".{prefix}*.tmp"):
            leftover.unlink(missing_ok=True)
    return directory


def _refuse_non_checkpoint(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is not a dp_autoencoder checkpoint: it has no {CONFIG}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or head == b"PK\x03\x04":
        raise CheckpointError(
            f"{path} looks like a pickle (torch.save) file; refusing to load it, since unpickling "
            "can run arbitrary code. A checkpoint is a directory with config.json and safetensors weights."
        )
    raise CheckpointError(
        f"{path} is a file, not a checkpoint directory (config.json + safetensors weights)"
    )


def _read_manifest(manifest: Path) -> dict[str, str]:
    listed = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if line.strip():
            try:
                digest, name = line.split(None, 1)
            except ValueError:
                raise CheckpointError(f"{manifest}, line {number}, is not 'SHA256  FILE'") from None
            listed[name.strip().lstrip("*")] = digest
    return listed


def check_manifest(directory: Path) -> None:
    """Check the SHA256SUMS that vouch for a checkpoint: the one beside it (shipped checkpoints, pretrained/
    SHA256SUMS, which lists each folder's config.json; the config holds the weights' sha256 in turn) and the
    one inside it (a folder written for upload by dp_autoencoder.hub.write_release_folder: every file)."""
    directory = Path(directory)
    beside = directory.parent / "SHA256SUMS"
    if beside.is_file():
        name = f"{directory.name}/{CONFIG}"
        listed = _read_manifest(beside)
        if name in listed and sha256_file(directory / CONFIG) != listed[name]:
            raise CheckpointError(f"{directory / CONFIG} does not match its sha256 in {beside}; "
                                  "the shipped checkpoint was modified")
    inside = directory / "SHA256SUMS"
    if inside.is_file():
        for name, digest in _read_manifest(inside).items():
            path = directory / name
            if not path.is_file():
                raise CheckpointError(f"{path}, listed in {inside}, is missing")
            if sha256_file(path) != digest:
                raise CheckpointError(f"{path} does not match its sha256 in {inside}; the checkpoint is corrupt "
                                      "or was modified")


def read_config(directory) -> dict:
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.is_file():
        _refuse_non_checkpoint(directory)
    check_manifest(directory)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "files" not in config:
        raise CheckpointError(f"{config_path} is not a {FORMAT} checkpoint config")
    return config


def load_tensors(directory, config: dict, group: str = "weights") -> dict[str, torch.Tensor]:
    """Load one tensor group after checking its sha256 against the config."""
    entry = config["files"].get(group)
    if entry is None:
        raise CheckpointError(f"checkpoint {directory} has no {group!r} tensors")
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"sha256 mismatch for {path}: config says {entry['sha256']}, file is {digest}; "
            "the checkpoint is corrupt or was modified"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def load_checkpoint(directory) -> tuple[dict, dict[str, torch.Tensor]]:
    config = read_config(directory)
    return config, load_tensors(directory, config)


# --- optimizer state as tensors + JSON (no pickle) ---------------------------------------
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    import torch

    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
