import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_fashion_mnist
from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.cli import main

TINY = ["--data", "dead-leaves", "--image-size", "16", "--arch", "small", "--num-images", "48",
        "--val-images", "8", "--batch-size", "8", "--quiet"]


def dpae(*args) -> int:
    return main([str(a) for a in args])


def weights(path):
    model, _ = load_autoencoder(path)
    return model.state_dict()


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_train_writes_checkpoint_log_and_bounded_delta(tmp_path):
    assert dpae("train", *TINY, "--epochs", "2", "--out", tmp_path / "ae") == 0
    log = [json.loads(line) for line in (tmp_path / "ae" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(r["sensitivity"] <= 1.0 and r["val_psnr"] > 0 for r in log)
    _, config = load_autoencoder(tmp_path / "ae")
    assert config["training"]["epochs_done"] == 2 and config["training"]["steps"] == 12
    assert config["sensitivity"]["value"] <= 1.0


def test_resume_continues_exactly(tmp_path):
    assert dpae("train", *TINY, "--epochs", "2", "--seed", "3", "--out", tmp_path / "straight") == 0
    assert dpae("train", *TINY, "--epochs", "1", "--seed", "3", "--out", tmp_path / "resumed") == 0
    assert dpae("train", *TINY, "--epochs", "2", "--seed", "3", "--out", tmp_path / "resumed", "--resume") == 0
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert dpae("train", *TINY, "--seed", seed, "--out", tmp_path / name) == 0
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_existing_checkpoint_is_not_overwritten_and_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "ae"
    assert dpae("train", *TINY, "--out", out) == 0
    before = snapshot(out)
    assert dpae("train", *TINY, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert dpae("train", *TINY, "--out", out, "--resume", "--epochs", "2", "--L", "0.3") == 2
    assert "L was 0.1, now 0.3" in capsys.readouterr().err
    assert dpae("train", *TINY, "--out", tmp_path / "none", "--resume") == 2
    assert snapshot(out) == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ae"
    assert dpae("train", *TINY, "--out", out) == 0
    before = snapshot(out)
    real = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda a, b, **k: real(a, b, **k) * float("nan"))
    assert dpae("train", *TINY, "--out", out, "--resume", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert "nan" in err and "last good checkpoint" in err
    assert snapshot(out) == before


def write_images(folder: Path, n: int, size=20, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).convert(mode).save(folder / f"img{i}.png")


def test_folder_training_skips_corrupt_files(tmp_path, capsys):
    data = tmp_path / "imgs"
    write_images(data / "class_a", 20)
    (data / "class_a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (data / "class_a" / "truncated.png").write_bytes((data / "class_a" / "img0.png").read_bytes()[:40])
    args = ["--data", data, "--image-size", "16", "--arch", "small", "--batch-size", "4", "--quiet"]
    assert dpae("train", *args, "--out", tmp_path / "ae") == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "no image files"),
    (lambda d: (d.mkdir(), (d / "a.png").write_bytes(b"garbage"), (d / "b.jpg").write_bytes(b"")), "no readable"),
])
def test_bad_data_folders(tmp_path, capsys, make, message):
    data = tmp_path / "data"
    make(data)
    assert dpae("train", "--data", data, "--image-size", "16", "--arch", "small", "--quiet",
                "--out", tmp_path / "ae") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ae").exists()


def test_channels_that_do_not_match_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "ae"
    assert dpae("train", *TINY, "--channels", "3", "--out", out) == 0
    assert dpae("train", *TINY, "--channels", "1", "--out", out, "--resume", "--epochs", "2") == 2
    assert "channels was 3, now 1" in capsys.readouterr().err


def test_inspect_recomputes_delta_and_detects_tampering(tmp_path, capsys):
    out = tmp_path / "ae"
    assert dpae("train", *TINY, "--out", out) == 0
    capsys.readouterr()
    assert dpae("inspect", out, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sensitivity_recomputed"] == pytest.approx(info["sensitivity_stored"], rel=1e-9)
    assert info["noise"]["scale"] == pytest.approx(0.25373, abs=1e-5)
    weights_file = next(out.glob("weights-*"))
    weights_file.write_bytes(weights_file.read_bytes()[:-1] + b"\0")
    assert dpae("inspect", out) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    torch.save({}, tmp_path / "x.pt")
    assert dpae("inspect", tmp_path / "x.pt") == 2
    assert "pickle" in capsys.readouterr().err


@needs_fashion_mnist
def test_fashion_mnist_short_run(tmp_path):
    assert dpae("train", "--data", "fashion-mnist", "--steps-per-epoch", "20", "--val-images", "100",
                "--quiet", "--out", tmp_path / "ae") == 0
    _, config = load_autoencoder(tmp_path / "ae")
    assert config["image_size"] == [28, 28] and config["architecture"]["in_channels"] == 1


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dp_autoencoder.cli", "train", *TINY,
           "--epochs", "2", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _, config = load_autoencoder(tmp_path / "ddp")
    assert config["training"]["world_size"] == 2
    # 48 images over 2 ranks of batch 8: 3 steps per epoch on each rank.
    assert config["training"]["steps"] == 6
    log = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[-1]["sensitivity"] <= 1.0


def test_stability_objective_trains_the_autoencoder_and_never_the_classifier(tmp_path, monkeypatch):
    import timm

    from dp_autoencoder import classifiers
    from dp_autoencoder.stack import Preprocessing, state_fingerprint

    torch.manual_seed(0)
    clf = timm.create_model("resnet10t", pretrained=False, num_classes=4, in_chans=3, channels=(8, 16, 32, 64))
    classifiers.save_classifier(clf, tmp_path / "clf", "resnet10t",
                                {"num_classes": 4, "in_chans": 3, "channels": [8, 16, 32, 64]},
                                Preprocessing(input_size=(3, 16, 16)), ["a", "b", "c", "d"])
    loaded = {}
    real_load = classifiers.load_classifier

    def spy(*a, **k):
        loaded["model"] = real_load(*a, **k)
        loaded["before"] = state_fingerprint(loaded["model"])
        return loaded["model"]

    monkeypatch.setattr(classifiers, "load_classifier", spy)
    args = [*TINY, "--channels", "3", "--stability-classifier", tmp_path / "clf", "--stability-weight", "1.0"]
    assert dpae("train", *args, "--out", tmp_path / "ae") == 0
    after = loaded["model"].state_dict()  # the very object the loss ran through, batch-norm buffers included
    assert all(torch.equal(loaded["before"][k], after[k]) for k in after)
    assert dpae("train", *args[:-4], "--out", tmp_path / "plain") == 0
    a, b = weights(tmp_path / "ae"), weights(tmp_path / "plain")
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the objective changed the auto-encoder
    assert dpae("train", *TINY, "--stability-weight", "1.0", "--out", tmp_path / "bad") == 2
