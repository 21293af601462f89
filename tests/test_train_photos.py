"""Training on photos: several sources, random-resized crops, the class split, the classifier's losses,
the learning-rate schedule, precision, and exact resume of all of it."""

import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from dp_autoencoder import classifiers
from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.cli import main
from dp_autoencoder.data import DataError, RandomCrops, labelled_files, training_data
from dp_autoencoder.imagenet import imagenet_synsets, split_classes
from dp_autoencoder.stack import Preprocessing
from dp_autoencoder.train import TrainSettings, TrainingError, classification_loss, learning_rate

SYNSETS = imagenet_synsets()[:8:2] + imagenet_synsets()[1:2]  # classes 0, 2, 4, 6 and 1


def dpae(*args) -> int:
    return main([str(a) for a in args])


def write(path, seed, size=(48, 36)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def sources(tmp_path):
    tree, plain = tmp_path / "tree", tmp_path / "plain"
    for k, syn in enumerate(SYNSETS):
        for j in range(3):
            write(tree / syn / f"{syn}_{j}.jpg", 10 * k + j)
    for j in range(6):
        write(plain / "sub" / f"p{j}.png", 100 + j, size=(70, 40))
    return tree, plain


def test_class_split_is_two_disjoint_halves():
    labels = [0, 2, 4, 6, 8, 10, 2, 4]
    train, val = split_classes(labels, "train"), split_classes(labels, "val")
    assert train == [0, 4, 8] and val == [2, 6, 10]
    dev = list(range(0, 1000, 2))  # the even classes of imagenet-samples-dev
    assert split_classes(dev, "train") == list(range(0, 1000, 4))
    with pytest.raises(DataError, match="class split"):
        split_classes(labels, "test")


def test_several_sources_are_pooled_with_their_labels(sources):
    tree, plain = sources
    files, labels = labelled_files(tree, "train")
    assert sorted(set(labels)) == [0, 2, 6]  # classes 0, 1, 2, 4, 6 present: every other one from the lowest
    train, val, channels, size = training_data([str(tree), str(plain), "dead-leaves"], 16, None, 0, num_images=5,
                                               val_images=2, crop="random", epoch_images=40, class_split="train")
    assert channels == 3 and size == 16 and len(train) == 40 + 5 and len(val) == 1 + 2  # a tenth of 15 files, 2 dead leaves
    seen = {train[k][1] for k in range(len(train))}
    assert -1 in seen and seen - {-1} <= {0, 2, 6} and len(seen - {-1}) >= 2
    assert all(train[k][0].shape == (3, 16, 16) for k in range(0, len(train), 7))
    with pytest.raises(DataError, match="mixed"):
        training_data(["fashion-mnist", str(plain)], None, None, 0)


def test_random_crops_are_reproducible_per_epoch_and_sample(sources):
    _, plain = sources
    files = labelled_files(plain)[0]
    crops = RandomCrops(files, [-1] * len(files), 20, length=12, seed=5)
    first = [crops[k][0] for k in range(12)]
    assert all(torch.equal(a, crops[k][0]) for k, a in enumerate(first))
    assert not torch.equal(first[0], first[1])
    crops.set_epoch(1)
    assert not all(torch.equal(a, crops[k][0]) for k, a in enumerate(first))
    crops.set_epoch(0)
    assert torch.equal(first[3], crops[3][0])
    rng = np.random.default_rng(0)
    for _ in range(200):  # boxes stay inside the image and keep their area share
        left, top, right, bottom = crops.crop_box(rng, 70, 40)
        assert 0 <= left < right <= 70 and 0 <= top < bottom <= 40
        assert (right - left) * (bottom - top) >= 0.2 * 70 * 40 or (right - left, bottom - top) == (40, 40)


def test_classification_loss_counts_only_known_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, -1, 2])
    expected = (torch.nn.functional.cross_entropy(logits[[0]], labels[[0]])
                + torch.nn.functional.cross_entropy(logits[[2]], labels[[2]])) / 2
    assert torch.allclose(classification_loss(logits, labels), expected)
    assert float(classification_loss(logits, torch.tensor([-1, -1, -1]))) == 0.0
    with pytest.raises(TrainingError, match="outside"):
        classification_loss(logits, torch.tensor([0, 1, 3]))


def test_learning_rate_schedule_two_cosines():
    s = TrainSettings(data="x", out="y", lr=1.0, finetune_lr=0.1, lr_schedule="cosine", epochs=4, mse_epochs=2,
                      stability_classifier="c", stability_weight=1.0)
    lrs = [learning_rate(s, step, 10) for step in range(40)]
    assert lrs[0] == 1.0 and math.isclose(lrs[10], 0.5) and lrs[19] < 0.01
    assert math.isclose(lrs[20], 0.1) and math.isclose(lrs[30], 0.05) and lrs[39] < 0.001
    constant = TrainSettings(data="x", out="y", lr=0.3)
    assert {learning_rate(constant, step, 10) for step in range(20)} == {0.3}
    with pytest.raises(TrainingError, match="mse-epochs"):
        TrainSettings(data="x", out="y", epochs=2, mse_epochs=2, stability_classifier="c",
                      stability_weight=1.0).check()
    with pytest.raises(TrainingError, match="needs --stability-classifier"):
        TrainSettings(data="x", out="y", classification_weight=1.0).check()


def tiny_classifier(path, num_classes=8):
    torch.manual_seed(0)
    clf = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes, in_chans=3,
                            channels=(8, 16, 32, 64))
    classifiers.save_classifier(clf, path, "resnet10t",
                                {"num_classes": num_classes, "in_chans": 3, "channels": [8, 16, 32, 64]},
                                Preprocessing(input_size=(3, 24, 24)), [str(i) for i in range(num_classes)])


def test_u_net_on_two_sources_with_both_losses_resumes_exactly(tmp_path, sources, monkeypatch):
    tree, plain = sources
    tiny_classifier(tmp_path / "clf")
    args = ["--data", tree, plain, "--class-split", "train", "--arch", "unet-cpu", "--noise-placement", "input",
            "--crop", "random", "--image-size", "16", "--batch-size", "4", "--epoch-images", "8",
            "--val-images", "2", "--lr", "1e-3", "--lr-schedule", "cosine", "--mse-epochs", "1",
            "--finetune-lr", "1e-4", "--stability-classifier", tmp_path / "clf", "--stability-weight", "0.5",
            "--classification-weight", "0.5", "--precision", "fp32", "--quiet"]
    assert dpae("train", *args, "--epochs", "3", "--out", tmp_path / "straight") == 0
    # A run killed after its second checkpoint (the cosine schedule is defined by --epochs, so the
    # interrupted run must have been asked for the same 3), then resumed.
    from dp_autoencoder import train as train_module

    real_save, saves = train_module.save_autoencoder, []

    def save_then_die(*a, **k):
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_autoencoder", save_then_die)
    assert dpae("train", *args, "--epochs", "3", "--out", tmp_path / "resumed") != 0  # "interrupted"
    monkeypatch.setattr(train_module, "save_autoencoder", real_save)
    assert dpae("train", *args, "--epochs", "3", "--out", tmp_path / "resumed", "--resume") == 0
    a, config = load_autoencoder(tmp_path / "straight")
    b, _ = load_autoencoder(tmp_path / "resumed")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    log = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["train_loss"] == log[0]["train_mse"]  # MSE alone in the first epoch
    assert log[1]["train_loss"] > log[1]["train_mse"]  # the classifier's losses joined
    assert config["training"]["settings"]["data"] == [str(tree), str(plain)]
    assert config["architecture"]["decoder"] == "unet"
    # Without the classification loss the weights differ: it did something.
    no_cls = [a if a != "0.5" or args[i - 1] != "--classification-weight" else "0" for i, a in enumerate(args)]
    assert dpae("train", *no_cls, "--epochs", "3", "--out", tmp_path / "nocls") == 0
    c, _ = load_autoencoder(tmp_path / "nocls")
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())


def test_resume_refuses_a_changed_source_list(tmp_path, sources, capsys):
    tree, plain = sources
    args = ["--arch", "unet-cpu", "--crop", "random", "--image-size", "16", "--batch-size", "4",
            "--epoch-images", "4", "--val-images", "2", "--quiet", "--out", tmp_path / "ae"]
    assert dpae("train", "--data", tree, *args) == 0
    assert dpae("train", "--data", tree, plain, *args, "--epochs", "2", "--resume") == 2
    assert "data was" in capsys.readouterr().err


def test_bf16_training_runs_and_keeps_delta(tmp_path, sources):
    _, plain = sources
    assert dpae("train", "--data", plain, "--arch", "unet-cpu", "--noise-placement", "latent", "--crop", "random",
                "--image-size", "16", "--batch-size", "4", "--epoch-images", "8", "--val-images", "2",
                "--precision", "bf16", "--quiet", "--out", tmp_path / "ae") == 0
    model, config = load_autoencoder(tmp_path / "ae")
    assert config["sensitivity"]["value"] <= 1.0 + 1e-9 and model.pre_noise_conv is not None


def test_fine_tune_rate_without_an_mse_phase_and_old_checkpoints_keep_their_precision(tmp_path, capsys):
    s = TrainSettings(data="x", out="y", lr=1.0, finetune_lr=0.1, epochs=2, stability_classifier="c",
                      stability_weight=1.0)
    assert {learning_rate(s, step, 10) for step in range(20)} == {0.1}
    # A checkpoint written before --precision existed (trained in fp32 on this CPU) is not resumed in bf16.
    tiny = ["--data", "dead-leaves", "--image-size", "16", "--arch", "small", "--num-images", "16",
            "--val-images", "4", "--batch-size", "8", "--quiet", "--out", tmp_path / "ae"]
    assert dpae("train", *tiny, "--precision", "fp32") == 0
    config_path = tmp_path / "ae" / "config.json"
    config = json.loads(config_path.read_text())
    del config["training"]["settings"]["precision"]
    config_path.write_text(json.dumps(config))
    assert dpae("train", *tiny, "--epochs", "2", "--resume") == 2
    assert "precision was 'fp32', now 'auto'" in capsys.readouterr().err
    assert dpae("train", *tiny, "--epochs", "2", "--resume", "--precision", "fp32") == 0


def test_an_empty_class_split_half_is_a_clear_error(tmp_path):
    from dp_autoencoder.imagenet import ImageNetFolder

    write(tmp_path / SYNSETS[0] / "only.png", 0)
    assert len(ImageNetFolder(tmp_path, 16, class_split="train")) == 1
    with pytest.raises(DataError, match="'val' half of the classes .* is empty"):
        ImageNetFolder(tmp_path, 16, class_split="val")
