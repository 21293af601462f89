"""Bad inputs, tried: one test per row of docs/reliability.md (the table names the tests).

Everything goes through the `dpae` command line (in-process with ``cli.main``, or as a subprocess when a
signal has to kill it) or through the library's public loaders and entry points.  The models are tiny
(16 x 16 images, 4 classes, untrained) so that a command takes well under a second once torch is warm.
"""

import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageFile

from dp_autoencoder.autoencoder import NoiseConfig, PixelDPAutoencoder, load_autoencoder, preset, save_autoencoder
from dp_autoencoder.classifiers import save_classifier
from dp_autoencoder.cli import main
from dp_autoencoder.data import DataError, ImageFolder, RandomCrops
from dp_autoencoder.imagenet import ImageNetFolder, imagenet_synsets
from dp_autoencoder.stack import Preprocessing

SIZE = 16
EVAL_COMMANDS = ("certify", "predict", "attack", "audit")
IMAGE_COMMANDS = ("train", *EVAL_COMMANDS)
DRAWS = {
    "certify": ["--n0", 4, "--n", 8],
    "predict": ["--n", 8],
    "attack": ["--n0", 4, "--n", 8, "--budgets", "0.1", "--steps", 1, "--eot", 1, "--images-per-step", 1],
    # PGD alone: the audit's Carlini-Wagner candidates cost seconds per image even on these models.
    "audit": ["--attacks", "pgd", "--steps", 1, "--restarts", 1, "--eot", 1, "--n-select", 4, "--n", 8],
}


def dpae(*args) -> int:
    return main([str(a) for a in args])



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and two threads on a busy 2-core machine spin for up to
    50x longer (measured).  The subprocesses get OMP_NUM_THREADS=1 too, so their numbers match these."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """ae1/clf1 (grayscale) and ae3/clf3 (RGB): a PixelDP auto-encoder and a classifier at 16 x 16."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for c in (1, 3):
        ae = PixelDPAutoencoder(preset("small", c), NoiseConfig("gaussian", 0.1, 1.0, 0.05))
        ae.constrain_((SIZE, SIZE))
        save_autoencoder(ae, root / f"ae{c}", (SIZE, SIZE))
        kwargs = {"num_classes": 4, "in_chans": c, "channels": [8, 16, 32, 64]}
        save_classifier(timm.create_model("resnet10t", pretrained=False, **kwargs), root / f"clf{c}", "resnet10t",
                        kwargs, Preprocessing(input_size=(c, SIZE, SIZE), mean=(0.5,) * c, std=(0.25,) * c),
                        list("abcd"))
    return root


def write_photos(folder: Path, n: int, size=(24, 20), seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"img{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(p)
    return paths


def stack_args(models, channels=3):
    return ["--autoencoder", models / f"ae{channels}", "--classifier", models / f"clf{channels}"]


def train_args(data, out, channels=3, epochs=1):
    return ["train", "--data", data, "--image-size", SIZE, "--arch", "small", "--channels", channels,
            "--batch-size", 2, "--val-images", 1, "--epochs", epochs, "--quiet", "--out", out]


def command(cmd, models, data, out: Path, channels=3) -> list:
    """The arguments of ``cmd`` on ``data``; for audit, ``data`` is certified first (as it is now) into a
    folder beside ``out``."""
    if cmd == "train":
        return train_args(data, out, channels)
    if cmd == "audit":
        certified = out.with_name(out.name + "-certified")
        assert dpae("certify", *stack_args(models, channels), "--data", data, *DRAWS["certify"], "--quiet",
                    "--out", certified) == 0
        return ["audit", "--certify-dir", certified, *stack_args(models, channels), *DRAWS["audit"], "--quiet",
                "--out", out]
    return [cmd, *stack_args(models, channels), "--data", data, *DRAWS[cmd], "--quiet", "--out", out]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_consistent(folder: Path) -> None:
    """Nothing half-written: no temporary file, every JSON line complete, every JSON file whole."""
    if not folder.exists():
        return
    assert not [p.name for p in folder.rglob("*.tmp")]
    for f in folder.glob("*.jsonl"):
        for line in f.read_text().splitlines(keepends=True):
            assert line.endswith("\n"), f"{f} ends in a partial line"
            json.loads(line)
    for f in folder.glob("*.json"):
        json.loads(f.read_text())


def output_records(cmd, out: Path) -> list[dict]:
    return records(out / {"certify": "certify.jsonl", "attack": "attack.jsonl", "audit": "audit.jsonl"}[cmd])


# --- unreadable images -----------------------------------------------------------------------------
def check_unreadable_image(cmd, models, tmp_path, capsys, spoil, reason):
    data, out = tmp_path / "data", tmp_path / "out"
    write_photos(data, 6 if cmd == "train" else 2)  # train: the one validation image must stay readable
    args = command(cmd, models, data, out)
    bad = data / ("img0.png" if cmd == "audit" else "img1.png")  # audit: the first image it attacks
    spoil(bad)
    capsys.readouterr()
    if cmd == "train":  # training skips it, names it, counts it
        with pytest.warns(UserWarning, match=re.escape(f"skipped: cannot read image {bad}: {reason}")):
            assert dpae(*args) == 0
        assert "skipped 1 unreadable images in epoch 1" in capsys.readouterr().out
        load_autoencoder(out)
        return
    assert dpae(*args) == 2
    assert f"dpae {cmd}: error: cannot read image {bad}: {reason}" in capsys.readouterr().err
    assert_consistent(out)
    if cmd == "attack":  # one image per step: the first image's record is kept, whole
        assert [r["idx"] for r in output_records(cmd, out)] == [0]
    if cmd == "predict":
        assert not out.exists()  # predict.tsv is written at the end only


@pytest.mark.parametrize("cmd", IMAGE_COMMANDS)
def test_truncated_image(cmd, models, tmp_path, capsys):
    check_unreadable_image(cmd, models, tmp_path, capsys, lambda p: p.write_bytes(p.read_bytes()[:300]),
                           "image file is truncated")


@pytest.mark.parametrize("cmd", IMAGE_COMMANDS)
def test_zero_byte_image(cmd, models, tmp_path, capsys):
    check_unreadable_image(cmd, models, tmp_path, capsys, lambda p: p.write_bytes(b""), "the file is empty (0 bytes)")


@pytest.mark.parametrize("cmd", IMAGE_COMMANDS)
def test_file_that_is_not_an_image(cmd, models, tmp_path, capsys):
    check_unreadable_image(cmd, models, tmp_path, capsys, lambda p: p.write_bytes(b"<html>404 not found</html>"),
                           "not an image format Pillow recognises")


# --- images that decode: their pixels, through every loader, then through dpae certify ----------------
def png(path: Path, pixels: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow writes 16-bit grey only): color type 0 grey, 2 RGB, 6 RGBA."""
    h, w = pixels.shape[:2]
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def loaded(path: Path, channels: int) -> dict[str, np.ndarray]:
    """The image as each public loader yields it, at its own 20 x 20 size (no resize): (C, H, W) in [0, 1]."""
    out = {"ImageFolder": ImageFolder(None, 20, channels, files=[path])[0][0].numpy()}
    if channels == 3:
        out["ImageNetFolder"] = ImageNetFolder(path.parent, 20, crop_pct=1.0)[0][0].numpy()
    # Training's random crops, here of the whole image (area and aspect ratio 1).
    out["RandomCrops"] = RandomCrops([path], [-1], 20, channels, scale=(1.0, 1.0), ratio=(1.0, 1.0))[0][0].numpy()
    return out


def assert_pixels(path: Path, expected_hwc: np.ndarray, channels: int, tolerance: float) -> None:
    for loader, x in loaded(path, channels).items():
        got = x.transpose(1, 2, 0)
        if loader == "RandomCrops":  # a full-image crop, maybe flipped left-right
            got = min((got, got[:, ::-1]), key=lambda g: np.abs(g - expected_hwc).max())
        assert np.abs(got - expected_hwc).max() <= tolerance, f"{loader}: off by {np.abs(got - expected_hwc).max()}"


def certify_one(models, folder: Path, out: Path, channels=3) -> dict:
    assert dpae("certify", *stack_args(models, channels), "--data", folder, *DRAWS["certify"], "--quiet",
                "--out", out) == 0
    (record,) = records(out / "certify.jsonl")
    assert record["status"] == "ok"
    return record


RNG = np.random.default_rng(7)
GREY16 = (RNG.random((20, 20)) * 65535).astype(np.uint16)
RGB16 = (RNG.random((20, 20, 4)) * 65535).astype(np.uint16)


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_grey_png(models, tmp_path, channels):
    path = tmp_path / "data" / "grey16.png"
    path.parent.mkdir()
    Image.fromarray(GREY16).save(path)
    assert Image.open(path).mode == "I;16"
    assert (np.asarray(Image.open(path).convert("L")) == 255).mean() > 0.9  # a plain convert clips at 255
    grey = GREY16 / 65535
    assert_pixels(path, np.repeat(grey[..., None], channels, 2), channels, tolerance=0.5 / 255 + 1e-6)
    certify_one(models, path.parent, tmp_path / "c", channels)


@pytest.mark.parametrize("color_type, channels", [(2, 3), (6, 3), (2, 1)], ids=["rgb16", "rgba16", "rgb16-to-grey"])
def test_sixteen_bit_colour_png(models, tmp_path, color_type, channels):
    (tmp_path / "data").mkdir()
    path = png(tmp_path / "data" / "colour16.png", RGB16[..., :3] if color_type == 2 else RGB16, color_type)
    rgb = (RGB16[..., :3] >> 8) / 255  # Pillow keeps the high byte of each sample; alpha is dropped
    expected = rgb if channels == 3 else (rgb @ np.array([0.299, 0.587, 0.114]))[..., None]
    assert_pixels(path, expected, channels, tolerance=1.01 / 255)
    certify_one(models, path.parent, tmp_path / "c", channels)


def test_palette_png_with_alpha(models, tmp_path):
    palette = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250]], dtype=np.uint8)
    index = np.random.default_rng(3).integers(0, 4, (20, 20)).astype(np.uint8)
    im = Image.frombytes("P", (20, 20), index.tobytes())
    im.putpalette(palette.flatten().tolist())
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "palette.png"
    im.save(path, transparency=bytes([0, 128, 255, 255]))  # per-entry alpha (a tRNS chunk of bytes)
    assert Image.open(path).info["transparency"]
    # Alpha is dropped: every pixel keeps its palette colour, transparent or not.
    assert_pixels(path, palette[index] / 255, 3, tolerance=1e-6)
    certify_one(models, path.parent, tmp_path / "c")


def test_rgba_and_grey_alpha_png(models, tmp_path):
    rgba = (np.random.default_rng(4).random((20, 20, 4)) * 255).astype(np.uint8)
    for name in ("rgba", "la", "data"):
        (tmp_path / name).mkdir()
    Image.fromarray(rgba).save(tmp_path / "rgba" / "rgba.png")
    Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]])).save(tmp_path / "la" / "la.png")
    assert_pixels(tmp_path / "rgba" / "rgba.png", rgba[..., :3] / 255, 3, tolerance=1e-6)
    assert_pixels(tmp_path / "la" / "la.png", np.repeat(rgba[..., :1], 3, 2) / 255, 3, tolerance=1e-6)
    for name in ("rgba", "la"):
        shutil.copy(tmp_path / name / f"{name}.png", tmp_path / "data")
    assert dpae("certify", *stack_args(models), "--data", tmp_path / "data", *DRAWS["certify"], "--quiet",
                "--out", tmp_path / "c") == 0
    assert [r["status"] for r in records(tmp_path / "c" / "certify.jsonl")] == ["ok", "ok"]


def test_cmyk_jpeg(models, tmp_path):
    blocks = np.kron(np.random.default_rng(5).integers(30, 225, (4, 4, 3)), np.ones((5, 5, 1))).astype(np.uint8)
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "cmyk.jpg"
    Image.fromarray(blocks).convert("CMYK").save(path, quality=98)
    assert Image.open(path).mode == "CMYK"
    # JPEG is lossy: close to the RGB it was made from (an inverted Adobe CMYK would be off by ~0.5).
    for loader, x in loaded(path, 3).items():
        if loader != "RandomCrops":
            assert np.abs(x.transpose(1, 2, 0) - blocks / 255).mean() < 0.03, loader
    certify_one(models, path.parent, tmp_path / "c")


def test_grey_image_for_rgb_model_and_rgb_image_for_grey_model(models, tmp_path):
    grey = (np.random.default_rng(6).random((20, 20)) * 255).astype(np.uint8)
    rgb = (np.random.default_rng(8).random((20, 20, 3)) * 255).astype(np.uint8)
    for name, pixels in (("grey", grey), ("rgb", rgb)):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / f"{name}.png")
    assert_pixels(tmp_path / "grey" / "grey.png", np.repeat(grey[..., None], 3, 2) / 255, 3, tolerance=1e-6)
    luma = np.asarray(Image.fromarray(rgb).convert("L"))  # ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B
    assert np.abs(luma - rgb @ np.array([0.299, 0.587, 0.114])).max() <= 1
    assert_pixels(tmp_path / "rgb" / "rgb.png", luma[..., None] / 255, 1, tolerance=1e-6)
    certify_one(models, tmp_path / "grey", tmp_path / "c3", channels=3)
    certify_one(models, tmp_path / "rgb", tmp_path / "c1", channels=1)


@pytest.mark.parametrize("cmd", IMAGE_COMMANDS)
def test_every_odd_format_in_one_folder(cmd, models, tmp_path, capsys):
    """16-bit grey and RGBA, palette + alpha, CMYK and grey images side by side, through every command."""
    data = tmp_path / "data"
    write_photos(data, 1)
    Image.fromarray(GREY16).save(data / "grey16.png")
    png(data / "rgba16.png", RGB16, 6)
    Image.frombytes("P", (20, 20), bytes(range(200)) * 2).save(data / "palette.png", transparency=0)
    Image.fromarray((RGB16[..., :3] >> 8).astype(np.uint8)).convert("CMYK").save(data / "cmyk.jpg")
    Image.fromarray(GREY16.astype(np.uint8)).save(data / "grey8.png")
    out = tmp_path / "out"
    assert dpae(*command(cmd, models, data, out)) == 0
    if cmd == "train":
        assert "skipped" not in capsys.readouterr().out
    elif cmd == "predict":
        assert len((out / "predict.tsv").read_text().splitlines()) == 1 + 6
    elif cmd == "audit":
        assert records(out / "audit.jsonl")
    else:
        assert [r["status"] for r in output_records(cmd, out)] == ["ok"] * 6


# --- a 10000 x 10000 image --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (10000, 10000)).save(path)  # 100 Mpx, a 12 kB file
    return path


@pytest.mark.parametrize("cmd", IMAGE_COMMANDS)
def test_huge_image_is_refused_unread(cmd, models, tmp_path, capsys, monkeypatch, huge_png):
    data, out = tmp_path / "data", tmp_path / "out"
    write_photos(data, 6 if cmd == "train" else 2)
    args = command(cmd, models, data, out)
    big = data / ("img0.png" if cmd == "audit" else "img1.png")
    shutil.copy(huge_png, big)
    real_load = ImageFile.ImageFile.load

    def load(im):
        assert im.size != (10000, 10000), "the 10000 x 10000 image was decoded"
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    reason = (f"refusing image {big}: it is 10000 x 10000 = 100.0 Mpx, over the 89.5 Mpx decompression-bomb limit "
              "(PIL.Image.MAX_IMAGE_PIXELS); nothing was decoded")
    capsys.readouterr()
    if cmd == "train":
        with pytest.warns(UserWarning, match=re.escape(f"skipped: {reason}")):
            assert dpae(*args) == 0
        assert "skipped 1 unreadable images" in capsys.readouterr().out
        return
    assert dpae(*args) == 2
    assert f"dpae {cmd}: error: {reason}" in capsys.readouterr().err
    assert_consistent(out)


# --- NaN and Inf images through the library --------------------------------------------------------
def nan_inf_data():
    from torch.utils.data import TensorDataset

    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x[1, 0, 3, 3] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    return TensorDataset(x, torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("entry", ["certify_dataset", "attack_dataset", "api"])
def test_nan_and_inf_images_are_refused_per_image(entry, tmp_path):
    from toy import CLASSES, toy_model

    model, data = toy_model(), nan_inf_data()
    refused = "refused: the image has NaN or Inf pixels"
    if entry == "certify_dataset":
        from dp_autoencoder.certify import CertifySettings, certify_dataset

        summary = certify_dataset(model, data, CertifySettings(n0=4, n=8), tmp_path, CLASSES, progress=False)
        assert [r["status"] for r in records(tmp_path / "certify.jsonl")] == ["ok", refused, refused, "ok"]
        assert summary["refused"] == 2 and summary["images"] == 4
    elif entry == "attack_dataset":
        from dp_autoencoder.attacks import AttackSettings, attack_dataset

        settings = AttackSettings(budgets=(0.1,), steps=1, eot=1, n0=4, n=8)
        summary = attack_dataset(model, data, settings, tmp_path, CLASSES, progress=False)
        assert [r["status"] for r in records(tmp_path / "attack.jsonl")] == ["ok", refused, refused, "ok"]
        assert summary["refused"] == 2
    else:
        from dp_autoencoder import api

        stack = api.stack(model.autoencoder, model.classifier, "cpu")
        x = data.tensors[0]
        for method in (stack.certify, stack.predict):
            with pytest.raises(ValueError, match=r"\[1, 2\].*NaN or Inf"):
                method(x, n=8)
            with pytest.raises(ValueError, match="NaN or Inf"):
                method(x[1], n=8)
        assert 0 <= stack.predict(x[0], n=8, abstain=False) < CLASSES


# --- tampered checkpoints ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint written by dpae train (it has a training state to resume) and a certify run of ae3."""
    root = tmp_path_factory.mktemp("trained")
    assert dpae("train", "--data", "dead-leaves", "--image-size", SIZE, "--arch", "small", "--num-images", 8,
                "--val-images", 2, "--batch-size", 4, "--quiet", "--out", root / "ae") == 0
    return root / "ae"


@pytest.fixture(scope="module")
def certified(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("certified")
    write_photos(root / "data", 2)
    assert dpae("certify", *stack_args(models), "--data", root / "data", *DRAWS["certify"], "--quiet",
                "--out", root / "certify") == 0
    return root / "certify"


CHECKPOINT_COMMANDS = ("inspect", "train", *EVAL_COMMANDS)


def run_on_checkpoint(cmd, ae: Path, models, certified: Path, out: Path, classifier=None) -> int:
    """``cmd`` with ``ae`` as its auto-encoder (train: resumes it; inspect: inspects it)."""
    if cmd == "inspect":
        return dpae("inspect", ae)
    if cmd == "train":
        return dpae("train", "--data", "dead-leaves", "--image-size", SIZE, "--arch", "small", "--num-images", 8,
                    "--val-images", 2, "--batch-size", 4, "--quiet", "--out", ae, "--resume", "--epochs", 2)
    models_args = ["--autoencoder", ae, "--classifier", classifier or models / "clf3"]
    if cmd == "audit":
        return dpae("audit", "--certify-dir", certified, *models_args, *DRAWS["audit"], "--quiet", "--out", out)
    data = json.loads((certified / "run.json").read_text())["sources"][2]
    return dpae(cmd, *models_args, "--data", data, *DRAWS[cmd], "--quiet", "--out", out)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def tamper_and_run(cmd, tamper, message, models, trained, certified, tmp_path, capsys):
    ae = tmp_path / "ae"
    shutil.copytree(trained if cmd == "train" else models / "ae3", ae)
    tamper(ae)
    before = snapshot(ae)
    capsys.readouterr()
    assert run_on_checkpoint(cmd, ae, models, certified, tmp_path / "out") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert snapshot(ae) == before


def weights_file(ckpt: Path) -> Path:
    (path,) = ckpt.glob("weights-*.safetensors")
    return path


@pytest.mark.parametrize("cmd", CHECKPOINT_COMMANDS)
def test_swapped_weights_file(cmd, models, trained, certified, tmp_path, capsys):
    def swap(ae):  # the grayscale auto-encoder's weights under this one's file name
        shutil.copy(weights_file(models / "ae1"), weights_file(ae))

    tamper_and_run(cmd, swap, r"sha256 mismatch for .*weights-.*: config says .*, file is .*; the checkpoint is corrupt "
                   "or was modified", models, trained, certified, tmp_path, capsys)


@pytest.mark.parametrize("cmd", CHECKPOINT_COMMANDS)
def test_truncated_weights_file(cmd, models, trained, certified, tmp_path, capsys):
    def truncate(ae):
        w = weights_file(ae)
        w.write_bytes(w.read_bytes()[:1000])

    tamper_and_run(cmd, truncate, r"sha256 mismatch for .*weights-", models, trained, certified, tmp_path, capsys)


def test_swapped_classifier_weights(models, certified, tmp_path, capsys):
    clf = tmp_path / "clf"
    shutil.copytree(models / "clf3", clf)
    shutil.copy(weights_file(models / "clf1"), weights_file(clf))
    for cmd in EVAL_COMMANDS:
        assert run_on_checkpoint(cmd, models / "ae3", models, certified, tmp_path / "out", classifier=clf) == 2
        assert "sha256 mismatch" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


EDITS = {  # config.json field -> (new value, what the loader says)
    "Delta": (("sensitivity", "value"), 0.5, r"stored sensitivity 0.5 differs from .* recomputed from the weights"),
    "sigma": (("noise", "scale"), 0.1, r"noise scale 0.1 does not match the calibration .* for"),
    "eps": (("noise", "eps"), 0.5, r"noise scale .* does not match the calibration"),
    "L": (("noise", "L"), 0.3, r"noise scale .* does not match the calibration"),
}


@pytest.mark.parametrize("field", EDITS)
@pytest.mark.parametrize("cmd", CHECKPOINT_COMMANDS)
def test_edited_config(cmd, field, models, trained, certified, tmp_path, capsys):
    (section, key), value, message = EDITS[field]

    def edit(ae):
        config = json.loads((ae / "config.json").read_text())
        config[section][key] = value
        (ae / "config.json").write_text(json.dumps(config))

    tamper_and_run(cmd, edit, message, models, trained, certified, tmp_path, capsys)


def test_edited_config_of_a_shipped_checkpoint(models, certified, tmp_path, capsys):
    """L and sigma edited together pass the recomputation (the noise drawn is the config's, so the
    certificates stay sound); in pretrained/ the SHA256SUMS beside the checkpoints catches the edit."""
    from dp_autoencoder.checkpoint import sha256_file

    ae = tmp_path / "shipped" / "ae"
    shutil.copytree(models / "ae3", ae)
    (tmp_path / "shipped" / "SHA256SUMS").write_text(f"{sha256_file(ae / 'config.json')}  ae/config.json\n")
    config = json.loads((ae / "config.json").read_text())
    config["noise"]["L"], config["noise"]["scale"] = 0.3, 3 * config["noise"]["scale"]
    (ae / "config.json").write_text(json.dumps(config))
    for cmd in ("inspect", *EVAL_COMMANDS):
        assert run_on_checkpoint(cmd, ae, models, certified, tmp_path / "out") == 2
        assert "does not match its sha256 in" in capsys.readouterr().err
    (tmp_path / "shipped" / "SHA256SUMS").unlink()
    assert dpae("inspect", ae) == 0  # outside pretrained/ nothing signs the config


def test_resume_of_a_checkpoint_train_did_not_write(models, tmp_path, capsys):
    ae = tmp_path / "ae"
    shutil.copytree(models / "ae3", ae)
    before = snapshot(ae)
    assert run_on_checkpoint("train", ae, models, None, None) == 2
    assert "holds an auto-encoder but no training state" in capsys.readouterr().err
    assert snapshot(ae) == before


# --- folders with symlink loops ---------------------------------------------------------------------
@pytest.mark.parametrize("cmd", IMAGE_COMMANDS)
def test_symlink_loop_in_data_folder(cmd, models, tmp_path):
    data = tmp_path / "data"
    write_photos(data, 2)
    write_photos(data / "sub", 1, seed=1)
    (data / "here").symlink_to(".")
    (data / "sub" / "up").symlink_to("..")
    (data / "self.png").symlink_to("self.png")  # ELOOP when opened
    out = tmp_path / "out"
    assert dpae(*command(cmd, models, data, out)) == 0
    if cmd in ("certify", "attack"):
        assert len(output_records(cmd, out)) == 3  # each image once: symlinked folders are not followed
    elif cmd == "predict":
        assert len((out / "predict.tsv").read_text().splitlines()) == 1 + 3


@pytest.mark.parametrize("cmd", ["train", "certify"])
def test_synset_folder_linked_to_its_tree(cmd, models, tmp_path, capsys):
    tree = tmp_path / "tree"
    first, second = imagenet_synsets()[:2]
    write_photos(tree / first, 2)
    (tree / second).symlink_to(".")  # would list every class's images again under `second`
    assert dpae(*command(cmd, models, tree, tmp_path / "out")) == 2
    assert f"synset folder {tree / second} is a symlink to {tree.resolve()}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="a loop"):
        ImageNetFolder(tree)


# --- uninterrupted runs to compare the interrupted ones with ------------------------------------------
RESUMABLE = ("train", "certify", "attack", "audit")
EPOCHS = 4

def is_timing(key: str) -> bool:
    return key in ("time", "seconds", "images_per_s") or key.startswith("time_") or key.endswith("_time")


class Workload:
    """Runs long enough to be interrupted (a few seconds in a subprocess), short enough to repeat."""

    def __init__(self, models: Path, root: Path):
        self.models, self.root = models, root
        self.data = root / "photos"
        write_photos(self.data, 24)
        self.certified = root / "certified"
        assert dpae(*self.args("certify", self.certified)) == 0
        self._baselines: dict[str, Path] = {}

    def args(self, cmd, out: Path) -> list:
        if cmd == "train":  # epochs of 5 steps
            return ["train", "--data", self.data, "--image-size", SIZE, "--arch", "small", "--batch-size", 4,
                    "--val-images", 2, "--epochs", EPOCHS, "--seed", 1, "--quiet", "--out", out]
        stack = stack_args(self.models)
        if cmd == "certify":  # 3 steps of 8 images
            return ["certify", *stack, "--data", self.data, "--n0", 4, "--n", 16, "--quiet", "--out", out]
        if cmd == "attack":
            return ["attack", *stack, "--data", self.data, "--max", 4, *DRAWS["attack"], "--quiet", "--out", out]
        if cmd == "predict":
            return ["predict", *stack, "--data", self.data, "--max", 4, "--n", 8, "--quiet", "--out", out]
        if cmd == "recompute":
            return ["recompute", self.certified, "--alpha", 0.01, "--out", out]
        return ["audit", "--certify-dir", self.certified, *stack, *DRAWS["audit"], "--max", 4, "--quiet", "--out", out]

    def baseline(self, cmd) -> Path:
        if cmd not in self._baselines:
            out = self.root / f"baseline-{cmd}"
            assert dpae(*self.args(cmd, out)) == 0
            self._baselines[cmd] = out
        return self._baselines[cmd]

    def assert_same_result(self, cmd, out: Path) -> None:
        """``out`` holds what an uninterrupted run wrote, timings aside."""
        expected = self.baseline(cmd)
        if cmd == "train":
            a, b = load_autoencoder(expected)[0].state_dict(), load_autoencoder(out)[0].state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a)
            assert [untimed(r) for r in records(out / "train_log.jsonl")] == \
                   [untimed(r) for r in records(expected / "train_log.jsonl")]
        elif cmd == "predict":
            assert [line.split("\t")[:4] for line in (out / "predict.tsv").read_text().splitlines()] == \
                   [line.split("\t")[:4] for line in (expected / "predict.tsv").read_text().splitlines()]
        else:
            name = "certify.jsonl" if cmd == "recompute" else None
            got = records(out / name) if name else output_records(cmd, out)
            want = records(expected / name) if name else output_records(cmd, expected)
            assert [untimed(r) for r in got] == [untimed(r) for r in want]
        assert_consistent(out)


def untimed(record):
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items() if not is_timing(k)}
    return record


@pytest.fixture(scope="module")
def workload(models, tmp_path_factory):
    return Workload(models, tmp_path_factory.mktemp("workload"))


# --- a full disk ------------------------------------------------------------------------------------
@pytest.fixture
def disk(monkeypatch):
    """A disk that fills up: every durable write of the project (atomic files, appended records, checkpoint
    tensors, the training log) ends with os.fsync, so a full disk is simulated by an fsync that raises
    ENOSPC once ``fill(when)``'s condition holds, until ``free()``."""
    real_fsync = os.fsync

    class Disk:
        def fill(self, when=lambda: True):
            def fsync(fd):
                if when():
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fsync)

        def free(self):
            monkeypatch.setattr(os, "fsync", real_fsync)

    return Disk()


FULL_DISK_COMMANDS = ("train", "certify", "predict", "recompute", "attack", "audit")


@pytest.mark.parametrize("cmd", FULL_DISK_COMMANDS)
def test_full_disk(cmd, workload, disk, tmp_path, capsys):
    out = tmp_path / "out"
    args = workload.args(cmd, out)
    # Resumable commands fill the disk once they have written something (train: its first checkpoint).
    first = {"train": "config.json", "certify": "run.json", "attack": "run.json", "audit": "run.json"}.get(cmd)
    disk.fill((lambda: (out / first).exists()) if first else (lambda: True))
    capsys.readouterr()
    assert dpae(*args) == 1
    err = capsys.readouterr().err
    assert f"dpae {cmd}: error: No space left on device: {out}" in err
    assert_consistent(out)
    if cmd == "train":
        _, config = load_autoencoder(out)  # the first epoch's checkpoint, whole
        assert config["training"]["epochs_done"] == 1
    elif first is None:
        assert not out.exists() or not list(out.iterdir())
    disk.free()
    assert dpae(*args, *(["--resume"] if cmd == "train" else [])) == 0
    workload.assert_same_result(cmd, out)


def unshare_can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=4k none /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


REAL_DISK_DRIVER = """
import json, shutil, subprocess, sys
from dp_autoencoder.cli import main
mount_point, jobs = sys.argv[1], json.loads(sys.argv[2])
for size, args, keep in jobs:  # each command on a fresh tmpfs of `size`, its output then copied to `keep`
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", mount_point], check=True)
    print(json.dumps({"rc": main(args)}), flush=True)
    shutil.copytree(args[-1], keep)
    subprocess.run(["umount", mount_point], check=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(not unshare_can_mount(), reason="no `unshare -Urm` here to mount a private tmpfs")
def test_full_disk_on_a_real_tmpfs(workload, tmp_path):
    """The same as test_full_disk, on a real full file system: a tmpfs mounted in a private mount namespace
    (certify: 12 KiB, filled mid-record; train: room for one checkpoint, not for the next)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    checkpoint_bytes = sum(p.stat().st_size for p in workload.baseline("train").glob("*.safetensors"))
    jobs = [("12k", workload.args("certify", mount_point / "certify"), str(tmp_path / "certify")),
            (f"{int(1.3 * checkpoint_bytes) // 1024}k", workload.args("train", mount_point / "train"),
             str(tmp_path / "train"))]
    jobs = [(size, [str(a) for a in args], keep) for size, args, keep in jobs]
    driver = subprocess.run(["unshare", "-Urm", sys.executable, "-c", REAL_DISK_DRIVER, str(mount_point),
                             json.dumps(jobs)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert [json.loads(line)["rc"] for line in driver.stdout.splitlines() if line.startswith('{"rc"')] == [1, 1]
    for cmd in ("certify", "train"):
        assert f"dpae {cmd}: error: No space left on device: {mount_point / cmd}" in driver.stderr
        out = tmp_path / cmd
        assert not list(out.rglob("*.tmp"))
    # certify: the disk filled in the middle of a record, whose start is there; a rerun drops it and resumes.
    assert not (tmp_path / "certify" / "certify.jsonl").read_bytes().endswith(b"\n")
    assert load_autoencoder(tmp_path / "train")[1]["training"]["epochs_done"] == 1
    for cmd in ("certify", "train"):
        assert dpae(*workload.args(cmd, tmp_path / cmd), *(["--resume"] if cmd == "train" else [])) == 0
        workload.assert_same_result(cmd, tmp_path / cmd)


def test_abstentions_on_unlabelled_images_are_not_correct(models, tmp_path, capsys):
    write_photos(tmp_path / "data", 3)
    assert dpae("predict", *stack_args(models), "--data", tmp_path / "data", "--n", 8, "--quiet",
                "--out", tmp_path / "p") == 0
    rows = [line.split("\t") for line in (tmp_path / "p" / "predict.tsv").read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == ["-1"] * 3 and "-1" in [r[2] for r in rows]  # unlabelled; some abstained
    assert [r[3] for r in rows] == ["0"] * 3
    assert "accuracy 0.0000 over 3 images" in capsys.readouterr().out


# --- a corrupt line in a results file ------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["certify", "recompute", "audit", "attack"])
def test_corrupt_line_in_results(cmd, workload, tmp_path, capsys):
    folder = tmp_path / "results"
    source = workload.baseline("attack") if cmd == "attack" else workload.certified
    shutil.copytree(source, folder)
    jsonl = folder / ("attack.jsonl" if cmd == "attack" else "certify.jsonl")
    lines = jsonl.read_text().splitlines(keepends=True)
    jsonl.write_text(lines[0] + '{"idx": 1, "label": -\n' + "".join(lines[2:]))
    before = jsonl.read_bytes()
    if cmd in ("certify", "attack"):  # a rerun into the folder, which would resume it
        args = workload.args(cmd, folder)
    elif cmd == "recompute":
        args = ["recompute", folder, "--out", tmp_path / "out"]
    else:
        args = ["audit", "--certify-dir", folder, *stack_args(workload.models), *DRAWS["audit"], "--quiet",
                "--out", tmp_path / "out"]
    assert dpae(*args) == 2
    assert f"{jsonl}, line 2, is not a JSON record" in capsys.readouterr().err
    assert jsonl.read_bytes() == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --- SIGTERM and kill -9, then a resume -------------------------------------------------------------
def progressed(cmd, out: Path) -> bool:
    if cmd == "train":
        return (out / "config.json").exists()
    results = out / f"{cmd}.jsonl"
    return results.exists() and b"\n" in results.read_bytes()  # a complete record


def interrupt_then_resume(cmd, sig, workload, tmp_path) -> str:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dp_autoencoder.cli", *map(str, workload.args(cmd, out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    try:
        while not progressed(cmd, out):
            assert proc.poll() is None, f"dpae {cmd} exited ({proc.returncode}) before any progress"
            assert time.monotonic() < deadline, f"dpae {cmd} made no progress in 300 s"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), stderr[-3000:]
    if sig == signal.SIGTERM:  # unwound: no temporary file left, no partial line (kill -9 may leave either)
        assert_consistent(out)
    if cmd == "train":
        assert load_autoencoder(out)[1]["training"]["epochs_done"] < EPOCHS  # cut short
    else:
        assert len(output_records(cmd, out)) < len(output_records(cmd, workload.baseline(cmd)))
    return stderr


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RESUMABLE)
def test_sigterm_then_resume(cmd, workload, tmp_path):
    stderr = interrupt_then_resume(cmd, signal.SIGTERM, workload, tmp_path)
    hint = "rerun with --resume" if cmd == "train" else "rerun the same command to resume"
    assert f"dpae {cmd}: terminated (SIGTERM); {hint}" in stderr
    out = tmp_path / "out"
    assert dpae(*workload.args(cmd, out), *(["--resume"] if cmd == "train" else [])) == 0
    workload.assert_same_result(cmd, out)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RESUMABLE)
def test_kill9_then_resume(cmd, workload, tmp_path):
    interrupt_then_resume(cmd, signal.SIGKILL, workload, tmp_path)
    out = tmp_path / "out"
    # A torn last line, as a power cut (or a kill in the middle of a write) leaves it: resumption drops it.
    torn = out / ("train_log.jsonl" if cmd == "train" else f"{cmd}.jsonl")
    with open(torn, "a") as f:
        f.write('{"epoch": 9, "idx": 9999, "torn')
    assert dpae(*workload.args(cmd, out), *(["--resume"] if cmd == "train" else [])) == 0
    workload.assert_same_result(cmd, out)
