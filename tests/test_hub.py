"""hf-hub:ORG/NAME[@REV] names, offline: a Hugging Face cache filled here, HF_HUB_OFFLINE=1; the download is
verified by sha256 before anything is loaded, and a tampered file in the cache is refused."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
import huggingface_hub.constants  # noqa: E402

import dp_autoencoder  # noqa: E402
from dp_autoencoder._registry import get_pretrained_cfg, shipped_path  # noqa: E402
from dp_autoencoder.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from dp_autoencoder.hub import verify_folder, write_release_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """The layout snapshot_download leaves: blobs named by hash, snapshots/<commit>/ links to them,
    refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def release(tmp_path, name: str) -> Path:
    source = shipped_path(get_pretrained_cfg(name))
    return write_release_folder(source, tmp_path / f"release-{name}", source / "MODEL_CARD.md")


def test_release_folder_is_ready_to_upload(tmp_path):
    cfg = get_pretrained_cfg("fmnist-ae-L0.1")
    folder = release(tmp_path, "fmnist-ae-L0.1")
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", cfg.weights_file, "MODEL_CARD.md",
                                                               "SHA256SUMS"])
    sums = dict(reversed(line.split()) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sums[cfg.weights_file] == cfg.sha256[cfg.weights_file] and set(sums) == {"config.json", cfg.weights_file,
                                                                                   "MODEL_CARD.md"}
    assert verify_folder(folder)["noise"]["L"] == 0.1
    assert dp_autoencoder.load_autoencoder(str(folder)).config["noise"]["L"] == 0.1  # also a local checkpoint
    with pytest.raises(CheckpointError, match="exists"):
        release(tmp_path, "fmnist-ae-L0.1")


def test_release_folder_drops_the_training_state(tmp_path):
    import torch

    from dp_autoencoder.checkpoint import load_checkpoint, read_config

    src = shipped_path(get_pretrained_cfg("fmnist-ae-L0.1"))
    config, tensors = load_checkpoint(src)
    config["training"] = {**config.get("training", {}), "optimizer": {"param_groups": []}}
    save_checkpoint(tmp_path / "run", tensors, config, extra={"optimizer": {"0.exp_avg": torch.zeros(3)}})
    (tmp_path / "card.md").write_text("# a card\n")
    out = write_release_folder(tmp_path / "run", tmp_path / "up", tmp_path / "card.md")
    shipped = read_config(out)
    assert list(shipped["files"]) == ["weights"] and "optimizer" not in shipped["training"]
    assert not list(out.glob("optimizer-*"))


def test_hub_name_loads_from_the_offline_cache_in_a_fresh_process(tmp_path):
    cache = tmp_path / "hf-cache"
    fill_cache(cache, "test-org/fmnist-ae-L0.1", release(tmp_path, "fmnist-ae-L0.1"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    code = ("import json, dp_autoencoder as d\n"
            "for name in ('hf-hub:test-org/fmnist-ae-L0.1', 'hf-hub:test-org/fmnist-ae-L0.1@" + COMMIT + "'):\n"
            "    m = d.load_autoencoder(name)\n"
            "    print(json.dumps([m.config['files']['weights']['sha256'], m.noise.L, m.pretrained_cfg]))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    sha = get_pretrained_cfg("fmnist-ae-L0.1").sha256[get_pretrained_cfg("fmnist-ae-L0.1").weights_file]
    assert [json.loads(line) for line in done.stdout.splitlines()] == [[sha, 0.1, None]] * 2


def test_hub_classifier_and_the_cli(offline_cache, tmp_path, capsys):
    from dp_autoencoder.cli import main

    fill_cache(offline_cache, "test-org/fmnist-classifier", release(tmp_path, "fmnist-classifier"))
    fill_cache(offline_cache, "test-org/ae", release(tmp_path, "fmnist-ae-L0.3"))
    clf = dp_autoencoder.load_classifier("hf-hub:test-org/fmnist-classifier")
    assert clf.spec == "hf-hub:test-org/fmnist-classifier" and clf.prep.input_size == (1, 28, 28)
    assert clf.weights_sha256 == get_pretrained_cfg("fmnist-classifier").files[1][1]
    assert main(["inspect", "hf-hub:test-org/ae", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["noise"]["L"] == 0.3


def test_a_tampered_weights_file_in_the_cache_is_refused(offline_cache, tmp_path):
    snapshot = fill_cache(offline_cache, "test-org/ae", release(tmp_path, "fmnist-ae-L0.1"))
    assert dp_autoencoder.load_autoencoder("hf-hub:test-org/ae").noise.L == 0.1
    weights = next(snapshot.glob("weights-*.safetensors"))
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch .*refusing to load a corrupt or modified download"):
        dp_autoencoder.load_autoencoder("hf-hub:test-org/ae")


def test_a_tampered_config_in_the_cache_is_refused(offline_cache, tmp_path):
    snapshot = fill_cache(offline_cache, "test-org/ae", release(tmp_path, "fmnist-ae-L0.1"))
    blob = (snapshot / "config.json").resolve()
    blob.write_text(blob.read_text().replace('"L": 0.1', '"L": 0.05'))  # a smaller claimed attack bound
    with pytest.raises(CheckpointError, match="config.json does not match its sha256 in .*SHA256SUMS"):
        dp_autoencoder.load_autoencoder("hf-hub:test-org/ae")


def test_a_hub_folder_that_is_not_ours_or_not_cached_is_refused(offline_cache, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architecture": "resnet50"}))  # a timm/transformers repo
    fill_cache(offline_cache, "test-org/other", other)
    with pytest.raises(CheckpointError, match="not a dp_autoencoder/1 checkpoint config"):
        dp_autoencoder.load_autoencoder("hf-hub:test-org/other")
    with pytest.raises(CheckpointError, match="could not get hf-hub:test-org/missing@v2 .*cache"):
        dp_autoencoder.load_autoencoder("hf-hub:test-org/missing@v2")
