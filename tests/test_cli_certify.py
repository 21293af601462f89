import json

import pytest
import timm
import torch

from conftest import needs_fashion_mnist
from dp_autoencoder.autoencoder import NoiseConfig, PixelDPAutoencoder, preset, save_autoencoder
from dp_autoencoder.classifiers import save_classifier
from dp_autoencoder.cli import main
from dp_autoencoder.pipeline import Preprocessing


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for channels in (1, 3):
        ae = PixelDPAutoencoder(preset("small", channels), NoiseConfig("gaussian", 0.1, 1.0, 0.05))
        ae.constrain_((28, 28))
        save_autoencoder(ae, root / f"ae{channels}", (28, 28))
    clf = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)
    save_classifier(clf, root / "clf", "resnet10t", {"num_classes": 10, "in_chans": 1},
                    Preprocessing(input_size=(1, 28, 28), mean=(0.286,), std=(0.353,)), [str(i) for i in range(10)])
    return root


def dpae(*args) -> int:
    return main([str(a) for a in args])


@needs_fashion_mnist
def test_certify_resume_recompute_predict(models, tmp_path, capsys):
    base = ["certify", "--autoencoder", models / "ae1", "--classifier", models / "clf", "--data", "fashion-mnist",
            "--n0", 10, "--n", 30, "--max", 3, "--batch-size", 16, "--quiet"]
    assert dpae(*base, "--out", tmp_path / "c") == 0
    assert "certified acc." in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "c" / "certify.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in records] == [0, 1, 2]
    before = (tmp_path / "c" / "certify.jsonl").read_bytes()
    assert dpae(*base, "--out", tmp_path / "c") == 0  # resumes: nothing left to do
    assert (tmp_path / "c" / "certify.jsonl").read_bytes() == before
    assert dpae(*base[:-3], "--n", 31, "--quiet", "--out", tmp_path / "c") == 2
    assert "other settings" in capsys.readouterr().err
    assert dpae("recompute", tmp_path / "c", "--alpha", 0.2, "--out", tmp_path / "r") == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["images"] == 3
    assert dpae("recompute", tmp_path / "c", "--out", tmp_path / "c") == 2
    assert dpae("predict", "--autoencoder", models / "ae1", "--classifier", models / "clf", "--data", "fashion-mnist",
                "--n", 20, "--max", 2, "--out", tmp_path / "p") == 0
    assert len((tmp_path / "p" / "predict.tsv").read_text().splitlines()) == 3


def test_certify_refuses_models_that_cannot_be_joined(models, tmp_path, capsys):
    assert dpae("certify", "--autoencoder", models / "ae3", "--classifier", models / "clf", "--data", "fashion-mnist",
                "--out", tmp_path / "c") == 2
    assert "cannot stack" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, words", [(["--n", 0], "--n must be"), (["--alpha", 1.5], "--alpha must be"),
                                         (["--eta", 0], "--eta must be"), (["--n0", 0], "--n0 must be")])
@needs_fashion_mnist
def test_certify_bad_numbers(models, tmp_path, capsys, args, words):
    assert dpae("certify", "--autoencoder", models / "ae1", "--classifier", models / "clf", "--data", "fashion-mnist",
                *args, "--out", tmp_path / "c") == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@needs_fashion_mnist
def test_certify_precision_is_part_of_the_run(models, tmp_path, capsys):
    base = ["certify", "--autoencoder", models / "ae1", "--classifier", models / "clf", "--data", "fashion-mnist",
            "--n0", 10, "--n", 30, "--max", 2, "--quiet", "--out", tmp_path / "c"]
    assert dpae(*base, "--precision", "bf16") == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["precision"] == "bf16"
    assert dpae(*base) == 2  # fp32 votes would not be the same classifier's
    assert "precision" in capsys.readouterr().err
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    del run["precision"]  # a run.json written before the option existed is an fp32 run
    (tmp_path / "c" / "run.json").write_text(json.dumps(run))
    assert dpae(*base, "--no-channels-last") == 0


@needs_fashion_mnist
def test_certify_adaptive_mode(models, tmp_path, capsys):
    base = ["certify", "--autoencoder", models / "ae1", "--classifier", models / "clf", "--data", "fashion-mnist",
            "--max", 3, "--quiet"]
    assert dpae(*base, "--adaptive-radius", 0.05, "--n", 60, "--out", tmp_path / "a") == 0
    assert "adaptive at radius 0.05" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "a" / "certify.jsonl").read_text().splitlines()]
    for r in records:
        a = r["adaptive"]
        assert r["n0"] == 10 and 10 < a["draws"] <= 70 and r["pixeldp_size"] == -1.0
        assert (r["radius"] >= 0.05) == a["certified"]  # certified exactly when the radius reaches R
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["mean_draws"] == sum(r["adaptive"]["draws"] for r in records) / 3
    assert dpae("recompute", tmp_path / "a", "--out", tmp_path / "r") == 2
    assert dpae(*base, "--adaptive-radius", -1, "--out", tmp_path / "b") == 2
    assert "--adaptive-radius must be" in capsys.readouterr().err


def test_certify_class_split_and_draws_per_s(models, tmp_path, capsys):
    from PIL import Image

    from dp_autoencoder.imagenet import imagenet_synsets

    tree = tmp_path / "tree"
    for k, syn in enumerate(imagenet_synsets()[:4]):
        (tree / syn).mkdir(parents=True)
        Image.new("RGB", (40, 30), (60 * k, 20, 200)).save(tree / syn / f"{syn}.png")
    clf = timm.create_model("resnet10t", pretrained=False, num_classes=1000, in_chans=3, channels=(8, 16, 32, 64))
    save_classifier(clf, tmp_path / "clf3", "resnet10t",
                    {"num_classes": 1000, "in_chans": 3, "channels": [8, 16, 32, 64]},
                    Preprocessing(input_size=(3, 28, 28)), [str(i) for i in range(1000)])
    base = ["certify", "--autoencoder", models / "ae3", "--classifier", tmp_path / "clf3", "--data", tree,
            "--n0", 4, "--n", 8, "--quiet"]
    assert dpae(*base, "--class-split", "val", "--out", tmp_path / "val") == 0
    assert "draws/s of the stack" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "val" / "certify.jsonl").read_text().splitlines()]
    assert sorted(r["label"] for r in records) == [1, 3]  # classes 0..3 present: the odd positions
    summary = json.loads((tmp_path / "val" / "summary.json").read_text())
    assert summary["draws_per_s"] > 0
    # The split is part of what a resumed run must match.
    assert dpae(*base, "--class-split", "train", "--out", tmp_path / "val") == 2
    assert "other settings" in capsys.readouterr().err


def test_resume_accepts_another_spelling_of_the_same_classifier():
    from dp_autoencoder.certify import same_sources

    sha = "ab" * 32
    assert same_sources(["ae", f"pretrained/fmnist-classifier:{sha}", "fashion-mnist"],
                        ["ae", f"/abs/path/fmnist-classifier:{sha}", "fashion-mnist"])
    assert not same_sources(["ae", f"x:{sha}", "d"], ["ae", f"x:{'cd' * 32}", "d"])
    assert not same_sources(["ae", "resnet50:hub", "d"], ["ae", "vit_base_patch16_224:hub", "d"])
    assert not same_sources(["ae", f"x:{sha}", "d"], ["ae", f"x:{sha}", "d", "class-split=val"])
    assert not same_sources(["other-ae", f"x:{sha}", "d"], ["ae", f"x:{sha}", "d"])
