"""The public API: the same numbers as `dpae certify` / `dpae predict`, its doctest, its errors."""

import doctest
import json
import tomllib
from pathlib import Path

import pytest
import torch

import dp_autoencoder
from dp_autoencoder import api
from dp_autoencoder.cli import main
from dp_autoencoder.data import DataError
from conftest import needs_fashion_mnist as needs_fmnist

ROOT = Path(__file__).resolve().parent.parent


def test_all_names_resolve_and_version_matches_pyproject():
    for name in dp_autoencoder.__all__:
        assert getattr(dp_autoencoder, name) is not None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert dp_autoencoder.__version__ == project["version"]
    with pytest.raises(AttributeError):
        dp_autoencoder.no_such_thing


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"dpae {dp_autoencoder.__version__}"


@pytest.mark.slow
def test_docstring_example_runs():
    failures, tried = doctest.testmod(dp_autoencoder, verbose=False)
    assert tried >= 4 and failures == 0


@needs_fmnist
def test_certify_and_predict_equal_the_cli(tmp_path):
    out = tmp_path / "run"
    common = ["--autoencoder", "fmnist-ae-L0.3", "--classifier", "fmnist-classifier", "--data", "fashion-mnist",
              "--max", "6", "--skip", "5", "--seed", "3", "--quiet"]
    assert main(["certify", *common, "--n0", "20", "--n", "80", "--out", str(out)]) == 0
    assert main(["predict", *common, "--n", "40", "--out", str(out / "predict")]) == 0
    records = [json.loads(line) for line in (out / "certify.jsonl").read_text().splitlines()]
    predicted = [line.split("\t") for line in (out / "predict" / "predict.tsv").read_text().splitlines()[1:]]

    stack = dp_autoencoder.load_stack("fmnist-ae-L0.3", "fmnist-classifier", seed=3)
    data = dp_autoencoder.open_dataset("fashion-mnist", stack)
    ids = [r["idx"] for r in records]
    x = torch.stack([data[i][0] for i in ids])
    certs = stack.certify(x, n0=20, n=80, alpha=0.001, index=ids)
    for r, c in zip(records, certs):
        assert (c.predict, c.radius, c.pixeldp_predict, c.pixeldp_size) == \
            (r["predict"], r["radius"], r["pixeldp_predict"], r["pixeldp_size"])
        assert c.record["counts"] == r["counts"] and c.record["selection_counts"] == r["selection_counts"]
        assert c.undefended_predict == r["undefended_predict"]
    assert stack.predict(x, n=40, index=ids) == [int(row[2]) for row in predicted]
    one = stack.certify(x[2], n0=20, n=80, index=ids[2])  # one image gives one result, not a list
    assert isinstance(one, api.Certificate) and one.radius == records[2]["radius"]
    assert sum(r["radius"] > 0 for r in records) >= 1  # the comparison covers certified images


@needs_fmnist
def test_bad_input_is_refused_with_a_message():
    stack = dp_autoencoder.load_stack("fmnist-ae-L0.1", "fmnist-classifier")
    x = torch.rand(2, 1, 28, 28)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\].*NaN or Inf"):
        stack.certify(x, n0=10, n=10)
    with pytest.raises(ValueError, match="expected an image"):
        stack.predict(torch.rand(28, 28))
    with pytest.raises(ValueError, match="2 indices for 1 images"):
        stack.predict(torch.rand(1, 1, 28, 28), index=[0, 1])
    from dp_autoencoder.certify import CertifyError

    with pytest.raises(CertifyError, match="alpha"):
        stack.certify(torch.rand(1, 28, 28), alpha=2)
    with pytest.raises(DataError, match="bundled photos are RGB but the model takes 1 channels"):
        dp_autoencoder.open_dataset("samples", stack)


def test_deprecated_resolve_shipped_still_works_with_a_warning():
    from dp_autoencoder._registry import pretrained_root

    with pytest.warns(DeprecationWarning, match="resolve_model"):
        resolve = api.resolve_shipped
    assert resolve("natural-ae-L0.1") == str(pretrained_root() / "natural-ae-L0.1")
    assert resolve("resnet50") == "resnet50"  # a timm name stays a timm name
    with pytest.warns(DeprecationWarning):
        assert api.PRETRAINED == pretrained_root()
    with pytest.raises(AttributeError):
        api.no_such_thing
