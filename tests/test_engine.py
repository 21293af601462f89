import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from dp_autoencoder.certify import (CertifyError, CertifySettings, certify_dataset, read_records,
                                    recompute_record, selected_indices)
from dp_autoencoder.sampler import sample_votes
from toy import CLASSES, SIZE, toy_data, toy_model


def votes(model, x, ids, num, batch_size):
    with torch.inference_mode():
        z = model.pre_noise(x)
    return sample_votes(model, z, ids, num, CLASSES, (SIZE, SIZE), seed=5, purpose="estimation",
                        batch_size=batch_size).counts


def test_votes_do_not_depend_on_batch_size_order_or_neighbours():
    model, data = toy_model(), toy_data(6)
    x = data.tensors[0]
    ids = list(range(6))
    reference = votes(model, x, ids, 230, 1000)
    assert reference.sum(1).tolist() == [230] * 6
    for batch_size in (7, 64, 230):
        assert torch.equal(votes(model, x, ids, 230, batch_size), reference)
    perm = [4, 1, 5, 0, 3, 2]
    assert torch.equal(votes(model, x[perm], [ids[p] for p in perm], 230, 50), reference[perm])
    assert torch.equal(votes(model, x[2:3], [2], 230, 33), reference[2:3])
    assert not torch.equal(votes(model, x[2:3], [3], 230, 33), reference[2:3])  # the index seeds the noise


def test_scores_are_softmax_sums():
    model, data = toy_model(), toy_data(2)
    with torch.inference_mode():
        z = model.pre_noise(data.tensors[0])
    v = sample_votes(model, z, [0, 1], 50, CLASSES, (SIZE, SIZE), 0, "x", batch_size=16, with_scores=True)
    assert torch.allclose(v.score_sum.sum(1), torch.full((2,), 50.0, dtype=torch.float64))
    assert (v.score_sq_sum <= v.score_sum + 1e-9).all()


def settings(**kw):
    base = dict(n0=20, n=60, alpha=0.01, eta=0.95, batch_size=50, seed=0, images_per_step=3)
    return CertifySettings(**{**base, **kw})


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_certify_writes_cohen_compatible_files(tmp_path):
    summary = certify_dataset(toy_model(), toy_data(7), settings(), tmp_path, CLASSES, progress=False)
    rows = (tmp_path / "certify.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert "pixeldp_size" in rows[0].split("\t")
    assert len(rows) == 8
    records = read_records(tmp_path / "certify.jsonl")
    assert [r["idx"] for r in records] == list(range(7))
    for r in records:
        assert sum(r["counts"].values()) == 60 and sum(r["selection_counts"].values()) == 20
        for key in ("sigma", "noise", "sensitivity", "L", "eps", "delta", "alpha", "eta", "radius",
                    "pixeldp_size", "num_classes", "n0", "n"):
            assert key in r
        assert (r["predict"] == -1) == (r["radius"] < 0)
    assert summary["images"] == 7
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_resume_after_a_kill_mid_line_gives_the_same_results(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    certify_dataset(toy_model(), toy_data(9), settings(), full, CLASSES, progress=False)
    cut.mkdir()
    (cut / "run.json").write_bytes((full / "run.json").read_bytes())
    lines = (full / "certify.jsonl").read_bytes().splitlines(keepends=True)
    (cut / "certify.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:37])  # killed mid-write
    certify_dataset(toy_model(), toy_data(9), settings(batch_size=17), cut, CLASSES, progress=False)
    assert strip_time(read_records(cut / "certify.jsonl")) == strip_time(read_records(full / "certify.jsonl"))
    cols = lambda p: [row.split("\t")[:5] + row.split("\t")[6:] for row in p.read_text().splitlines()]
    assert cols(cut / "certify.tsv") == cols(full / "certify.tsv")


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    certify_dataset(toy_model(), toy_data(3), settings(), tmp_path, CLASSES, progress=False)
    before = (tmp_path / "certify.jsonl").read_bytes()
    with pytest.raises(CertifyError, match="n: 60 there, 61 now"):
        certify_dataset(toy_model(), toy_data(3), settings(n=61), tmp_path, CLASSES, progress=False)
    assert (tmp_path / "certify.jsonl").read_bytes() == before


def test_nan_images_are_refused_in_their_row_and_the_run_goes_on(tmp_path):
    data = toy_data(5)
    x = data.tensors[0].clone()
    x[1, 0, 3, 3] = float("nan")
    x[3, 0, 0, 0] = float("inf")
    certify_dataset(toy_model(), TensorDataset(x, data.tensors[1]), settings(), tmp_path, CLASSES, progress=False)
    records = read_records(tmp_path / "certify.jsonl")
    assert [r["status"].startswith("refused") for r in records] == [False, True, False, True, False]
    assert records[1]["predict"] == -1 and records[1]["correct"] == 0
    assert "NaN or Inf" in (tmp_path / "certify.tsv").read_text()


@pytest.mark.parametrize("bad", [dict(n0=0), dict(n=0), dict(alpha=0.0), dict(alpha=1.0), dict(eta=1.5),
                                 dict(skip=0), dict(max=0)])
def test_bad_settings(tmp_path, bad):
    with pytest.raises(CertifyError):
        certify_dataset(toy_model(), toy_data(2), settings(**bad), tmp_path, CLASSES, progress=False)
    assert not (tmp_path / "certify.jsonl").exists()


def test_empty_data_is_refused(tmp_path):
    empty = TensorDataset(torch.zeros(0, 1, SIZE, SIZE), torch.zeros(0, dtype=torch.long))
    with pytest.raises(CertifyError, match="no image"):
        certify_dataset(toy_model(), empty, settings(), tmp_path, CLASSES, progress=False)


def test_skip_and_max_follow_cohen():
    assert selected_indices(10, 3, None) == [0, 3, 6, 9]
    assert selected_indices(10, 3, 2) == [0, 3]


def test_recompute_matches_a_run_at_other_confidence(tmp_path):
    certify_dataset(toy_model(), toy_data(4), settings(), tmp_path / "a", CLASSES, progress=False)
    certify_dataset(toy_model(), toy_data(4), settings(alpha=0.2, eta=0.8), tmp_path / "b", CLASSES, progress=False)
    recomputed = [recompute_record(r, alpha=0.2, eta=0.8) for r in read_records(tmp_path / "a" / "certify.jsonl")]
    assert strip_time(recomputed) == strip_time(read_records(tmp_path / "b" / "certify.jsonl"))
