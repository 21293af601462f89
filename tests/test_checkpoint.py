import json
import pickle

import pytest
import torch

from dp_autoencoder.autoencoder import NoiseConfig, PixelDPAutoencoder, load_autoencoder, preset, save_autoencoder
from dp_autoencoder.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint


@pytest.fixture
def ae():
    torch.manual_seed(0)
    model = PixelDPAutoencoder(preset("small", 1), NoiseConfig("gaussian", 0.3, 1.0, 0.05))
    model.constrain_((28, 28))
    return model


def test_round_trip_is_exact(ae, tmp_path):
    save_autoencoder(ae, tmp_path / "ck", (28, 28), note="x")
    loaded, config = load_autoencoder(tmp_path / "ck")
    assert config["note"] == "x"
    assert config["noise"]["scale"] == pytest.approx(2.5373 * 0.3, abs=1e-4)
    for k, v in ae.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(ae(x, torch.Generator().manual_seed(1)), loaded(x, torch.Generator().manual_seed(1)))


def test_overwrite_replaces_and_removes_stale_weights(ae, tmp_path):
    save_autoencoder(ae, tmp_path, (28, 28))
    with torch.no_grad():
        ae.decoder[0].bias.add_(1)
    save_autoencoder(ae, tmp_path, (28, 28))
    assert len(list(tmp_path.glob("weights-*.safetensors"))) == 1
    assert torch.equal(load_autoencoder(tmp_path)[0].decoder[0].bias, ae.decoder[0].bias)


def test_tampered_weights_are_refused(ae, tmp_path):
    save_autoencoder(ae, tmp_path, (28, 28))
    weights = next(tmp_path.glob("weights-*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_autoencoder(tmp_path)


def test_config_that_lies_about_delta_or_sigma_is_refused(ae, tmp_path):
    save_autoencoder(ae, tmp_path, (28, 28))
    config = json.loads((tmp_path / "config.json").read_text())
    config["sensitivity"]["value"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="sensitivity"):
        load_autoencoder(tmp_path)
    config["sensitivity"]["value"] = ae.sensitivity((28, 28))
    config["noise"]["scale"] = 0.01
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        load_autoencoder(tmp_path)


def test_pickles_are_never_unpickled(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: called.append(1))
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"w": 1}))
    for name in ("model.pt", "raw.pkl"):
        with pytest.raises(CheckpointError, match="pickle"):
            load_checkpoint(tmp_path / name)
    assert not called


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_config(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(tmp_path)
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(1)}, {"kind": "something-else"})
    with pytest.raises(CheckpointError, match="not a pixeldp-autoencoder"):
        load_autoencoder(tmp_path / "c")


def test_a_manifest_beside_checkpoints_is_checked(ae, tmp_path):
    from dp_autoencoder.checkpoint import sha256_file

    save_autoencoder(ae, tmp_path / "shipped", (28, 28))
    config = tmp_path / "shipped" / "config.json"
    (tmp_path / "SHA256SUMS").write_text(f"{sha256_file(config)}  shipped/config.json\n")
    load_autoencoder(tmp_path / "shipped")
    config.write_text(config.read_text().replace('"L": 0.3', '"L": 0.30000000001'))
    with pytest.raises(CheckpointError, match="SHA256SUMS"):
        load_autoencoder(tmp_path / "shipped")
