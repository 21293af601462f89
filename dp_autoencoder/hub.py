"""Checkpoints on the Hugging Face Hub: ``hf-hub:ORG/NAME[@REV]`` names, and folders ready to upload.

:func:`download` fetches a checkpoint folder with ``huggingface_hub.snapshot_download`` into the Hub's
cache (``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` only the cache is read) and verifies it before anything
is loaded: config.json must be a dp_autoencoder checkpoint config, every file it names must have the
sha256 it records, and every file of the folder's SHA256SUMS (config.json included) must match it.  Only
config.json, SHA256SUMS, markdown and safetensors files are fetched: nothing that could be unpickled.
A revision pinned to a commit (``@<40 hex>``) also pins config.json, and with it the weights' sha256.

:func:`write_release_folder` writes a trained checkpoint as such a folder (config.json without the
optimizer state, the weights, MODEL_CARD.md, SHA256SUMS): upload it with
``huggingface-cli upload ORG/NAME FOLDER`` and load it as ``hf-hub:ORG/NAME``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .checkpoint import CONFIG, FORMAT, CheckpointError, atomic_write_bytes, atomic_write_json, check_manifest, \
    read_config, sha256_file

MANIFEST = "SHA256SUMS"
CARD = "MODEL_CARD.md"
ALLOW_PATTERNS = [CONFIG, MANIFEST, "*.md", "*.safetensors"]


def verify_folder(folder, name: str | None = None) -> dict:
    """Check a downloaded (or about to be uploaded) checkpoint folder; return its config."""
    folder = Path(folder)
    name = name or str(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{name} is not a dp_autoencoder checkpoint: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: {CONFIG} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("files"), dict):
        raise CheckpointError(f"{name}: {CONFIG} is not a {FORMAT} checkpoint config")
    for group, entry in config["files"].items():
        file = folder / str(entry.get("file", ""))
        if not file.is_file():
            raise CheckpointError(f"{name}: {entry.get('file')!r} ({group}), named in {CONFIG}, is missing")
        digest = sha256_file(file)
        if digest != entry.get("sha256"):
            raise CheckpointError(f"{name}: sha256 mismatch for {entry['file']}: {CONFIG} says {entry.get('sha256')}, "
                                  f"the file is {digest}; refusing to load a corrupt or modified download")
    check_manifest(folder)  # SHA256SUMS inside the folder: every file it lists, config.json included
    return config


def download(repo_id: str, revision: str | None = None, cache_dir=None) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` in the Hub's cache, fetched if needed, verified."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError("hf-hub: names need the package huggingface_hub (pip install huggingface_hub)") from None
    spec = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW_PATTERNS)
    except Exception as e:  # offline and not cached, no such repo or revision, no network, gated
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"could not get {spec} from the Hugging Face Hub or its cache "
                              f"({type(e).__name__}: {first})") from None
    verify_folder(folder, spec)
    return Path(folder)


def write_release_folder(source, target, card, exist_ok: bool = False) -> Path:
    """Write the checkpoint ``source`` as a folder ready to upload: its config.json (the optimizer state and
    any other tensor group dropped), the weights, ``card`` as MODEL_CARD.md and a SHA256SUMS of them all.
    The folder is verified as :func:`download` verifies it before this returns."""
    source, target = Path(source), Path(target)
    config = read_config(source)
    weights = config["files"].get("weights")
    if weights is None:
        raise CheckpointError(f"{source} has no weights to ship")
    if not Path(card).is_file():
        raise CheckpointError(f"model card {card} does not exist")
    if target.exists() and (not exist_ok or any(target.iterdir())):
        raise CheckpointError(f"{target} exists; remove it first or choose another folder")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / weights["file"], target / weights["file"])
    config["files"] = {"weights": weights}
    training = config.get("training")
    if isinstance(training, dict):
        training.pop("optimizer", None)
    atomic_write_json(target / CONFIG, config)
    atomic_write_bytes(target / CARD, Path(card).read_bytes())
    write_manifest(target)
    verify_folder(target)
    return target


def write_manifest(root, exclude=(MANIFEST,)) -> Path:
    """``root``/SHA256SUMS: 'sha256  relative/path' for every file below ``root`` (sorted)."""
    root = Path(root)
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name not in exclude and not p.name.startswith(".")]
    atomic_write_bytes(root / MANIFEST, "".join(lines).encode())
    return root / MANIFEST
