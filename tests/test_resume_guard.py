"""A resumed run cannot mix data or devices (run.json records both), photos are read upright (EXIF), and
accuracies count labelled images only."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dp_autoencoder.attacks import AttackError, prepare_run
from dp_autoencoder.certify import (CertifyError, CertifySettings, certify_dataset, check_run_context, read_records,
                                    summarize)
from dp_autoencoder.checkpoint import atomic_write_json
from dp_autoencoder.data import FashionMNIST, ImageFolder, dataset_fingerprint, fingerprint_difference, read_image
from toy import CLASSES, SIZE, toy_model

ROOT = Path(__file__).resolve().parents[1]


def settings(**kw):
    return CertifySettings(**{**dict(n0=5, n=10, alpha=0.01, batch_size=50, images_per_step=4), **kw})


def write_images(folder: Path, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / name)
    return folder


def certify_folder(folder, out, **kw):
    return certify_dataset(toy_model(), ImageFolder(folder, SIZE, channels=1), settings(**kw), out, CLASSES,
                           progress=False)


# --- the data ------------------------------------------------------------------------------------
def test_run_json_records_the_device_and_the_data(tmp_path):
    data = write_images(tmp_path / "data", ["a.png", "b.png", "c.png"])
    certify_folder(data, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["device"]["type"] == "cpu" and run["device"]["name"]
    assert run["data"]["images"] == 3 and len(run["data"]["files_sha256"]) == 64


def test_a_rerun_on_the_same_folder_resumes_and_on_a_changed_one_is_refused(tmp_path):
    data = write_images(tmp_path / "data", ["a.png", "b.png", "c.png"])
    out = tmp_path / "run"
    certify_folder(data, out, max=2)
    certify_folder(data, out, max=2)  # the same folder: resumes, nothing to add
    assert [r["idx"] for r in read_records(out / "certify.jsonl")] == [0, 1]
    before = (out / "certify.jsonl").read_bytes()

    write_images(data, ["d.png"], seed=1)
    with pytest.raises(CertifyError, match="4 images now, 3 when the run was made"):
        certify_folder(data, out, max=2)
    (data / "d.png").unlink()
    (data / "c.png").rename(data / "0.png")  # same count, another listing: image 0 is another file now
    with pytest.raises(CertifyError, match="list of files, sizes and labels .* changed"):
        certify_folder(data, out, max=2)
    (data / "0.png").rename(data / "c.png")
    certify_folder(data, out, max=2)  # the folder as it was: resumes again
    assert (out / "certify.jsonl").read_bytes() == before  # nothing was written by the refused runs


def test_a_moved_data_folder_has_the_same_fingerprint_and_another_file_list_another(tmp_path):
    a = write_images(tmp_path / "one", ["a.png", "b.png"])
    moved = Path(shutil.copytree(a, tmp_path / "elsewhere" / "two"))
    fa, fm = dataset_fingerprint(ImageFolder(a, SIZE, 1)), dataset_fingerprint(ImageFolder(moved, SIZE, 1))
    assert fa == fm and fa["images"] == 2
    relabelled = ImageFolder(a, SIZE, 1, labels=[0, 1])
    assert dataset_fingerprint(relabelled)["files_sha256"] != fa["files_sha256"]
    subset = torch.utils.data.Subset(ImageFolder(a, SIZE, 1), [1])
    assert dataset_fingerprint(subset)["images"] == 1 and dataset_fingerprint(subset)["files_sha256"] != fa["files_sha256"]


def test_a_rewritten_file_of_another_size_is_refused(tmp_path):
    data = write_images(tmp_path / "data", ["a.png", "b.png"])
    out = tmp_path / "run"
    certify_folder(data, out)
    Image.new("L", (SIZE, SIZE), 128).save(data / "b.png")  # a flat image compresses to far fewer bytes
    with pytest.raises(CertifyError, match="list of files, sizes and labels"):
        certify_folder(data, out)


def test_fashion_mnist_is_recorded_by_its_split():
    fake = FashionMNIST.__new__(FashionMNIST)  # no idx files needed: the fingerprint reads no pixel
    fake.images, fake.labels, fake.split = torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5), "test"
    fp = dataset_fingerprint(fake)
    assert fp == {"images": 5, "fashion_mnist": "test"}
    assert "split is 'train' now, 'test'" in fingerprint_difference(fp, {**fp, "fashion_mnist": "train"})
    assert fingerprint_difference(fp, fp) is None


def test_the_bundled_photos_are_recorded_by_name():
    from dp_autoencoder.samples import SamplePhotos

    photos = SamplePhotos.__new__(SamplePhotos)  # the names and labels are all the fingerprint reads
    photos.names, photos.labels, photos.images = ["chelsea", "coffee"], [281, 967], [None, None]
    fp = dataset_fingerprint(photos)
    photos.labels = [281, -1]
    assert fp["images"] == 2 and dataset_fingerprint(photos)["files_sha256"] != fp["files_sha256"]


def test_run_json_from_before_the_fingerprint_still_resumes(tmp_path):
    data = write_images(tmp_path / "data", ["a.png", "b.png", "c.png"])
    out = tmp_path / "run"
    certify_folder(data, out, max=2)
    first = (out / "certify.jsonl").read_bytes().splitlines(keepends=True)[0]
    (out / "certify.jsonl").write_bytes(first)  # as if stopped after one image
    run = json.loads((out / "run.json").read_text())
    del run["device"], run["data"]
    atomic_write_json(out / "run.json", run)
    write_images(data, ["d.png"], seed=1)  # unknowable for an old run: not refused
    certify_folder(data, out, max=2)
    assert [r["idx"] for r in read_records(out / "certify.jsonl")] == [0, 1]
    assert "device" not in json.loads((out / "run.json").read_text())  # an old run.json is left as it was


@pytest.mark.parametrize("run", sorted((ROOT / "docs" / "results").glob("**/certify/*/run.json")) +
                         sorted((ROOT / "docs" / "results").glob("audit-runs/certify-*/run.json")), ids=str)
def test_the_committed_runs_have_nothing_that_refuses_a_resume(run):
    previous = json.loads(run.read_text())
    check_run_context(run.parent, previous, {"device": {"type": "cpu", "name": "x"}, "data": {"images": 1}})


# --- the device ----------------------------------------------------------------------------------
def test_a_resume_on_another_device_type_is_refused(tmp_path):
    data = write_images(tmp_path / "data", ["a.png", "b.png"])
    out = tmp_path / "run"
    certify_folder(data, out)
    (out / "certify.jsonl").write_bytes((out / "certify.jsonl").read_bytes().splitlines(keepends=True)[0])
    run = json.loads((out / "run.json").read_text())
    run["device"] = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}  # as a GPU run would have written it
    atomic_write_json(out / "run.json", run)
    with pytest.raises(CertifyError, match=r"made on cuda \(NVIDIA H100 80GB HBM3\) and this one is on cpu"):
        certify_folder(data, out)
    assert len(read_records(out / "certify.jsonl")) == 1  # nothing drawn on the other device


def test_another_gpu_model_warns_and_another_type_names_the_fix(tmp_path):
    h100 = {"device": {"type": "cuda", "name": "NVIDIA H100"}}
    with pytest.warns(UserWarning, match="may differ between GPU models"):
        check_run_context(tmp_path, h100, {"device": {"type": "cuda", "name": "NVIDIA A100"}})
    with pytest.raises(CertifyError, match="--device cuda"):
        check_run_context(tmp_path, h100, {"device": {"type": "cpu", "name": "x"}})


def test_attack_runs_are_guarded_the_same_way(tmp_path):
    wanted = {"budgets": [0.0, 0.5], "seed": 0}
    here = {"device": {"type": "cpu", "name": "x"}, "data": {"images": 10, "files_sha256": "a" * 64}}
    prepare_run(tmp_path, wanted, context=here)
    assert json.loads((tmp_path / "run.json").read_text())["data"]["images"] == 10
    prepare_run(tmp_path, wanted, context=here)  # the same: resumes
    with pytest.raises(AttackError, match="12 images now, 10 when"):
        prepare_run(tmp_path, wanted, context={**here, "data": {"images": 12}})
    with pytest.raises(AttackError, match="made on cpu"):
        prepare_run(tmp_path, wanted, context={**here, "device": {"type": "cuda", "name": "GPU"}})


# --- EXIF orientation ----------------------------------------------------------------------------
def test_photos_are_read_with_their_exif_orientation_applied(tmp_path):
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high: left half red, right half blue
    arr[:, :2, 0] = 255
    arr[:, 2:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a camera held upright writes it
    Image.fromarray(arr).save(tmp_path / "portrait.png", exif=exif)
    Image.fromarray(arr).save(tmp_path / "plain.png")
    with read_image(tmp_path / "portrait.png", "RGB") as im:
        upright = np.asarray(im)
    assert upright.shape == (4, 2, 3)  # turned: 2 wide, 4 high
    assert (upright[:2, :, 0] == 255).all() and (upright[2:, :, 2] == 255).all()  # the left side is on top now
    with read_image(tmp_path / "plain.png", "RGB") as im:
        np.testing.assert_array_equal(np.asarray(im), arr)
    gray = ImageFolder(tmp_path, 4, channels=1, files=[tmp_path / "portrait.png"])[0][0]
    assert gray.shape == (1, 4, 4)


def test_a_jpeg_with_orientation_3_is_turned_half_around(tmp_path):
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:8] = 255  # white top half
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(arr).save(tmp_path / "upside-down.jpg", exif=exif, quality=95)
    with read_image(tmp_path / "upside-down.jpg", "L") as im:
        a = np.asarray(im)
    assert a[:8].mean() < 30 and a[8:].mean() > 225


# --- accuracies over labelled images -------------------------------------------------------------
def record(label, undefended, predict, radius=0.3, status="ok"):
    return {"idx": 0, "label": label, "undefended_predict": undefended, "predict": predict, "radius": radius,
            "correct": int(label >= 0 and predict == label), "pixeldp_predict": predict, "pixeldp_size": radius / 2,
            "pixeldp_correct": int(label >= 0 and predict == label), "status": status, "time": 1.0, "n0": 1, "n": 2}


def test_accuracies_divide_by_the_labelled_images_only():
    # The README's main job: 7 photos, 3 labelled, the undefended classifier right on 1 of them.
    records = [record(281, 281, 281), record(967, 5, 967), record(409, 7, 7)] + \
              [record(-1, k, k) for k in (1, 2, 3, 4)]
    s = summarize(records)
    assert s["images"] == 7 and s["labeled"] == 3 and s["accuracy_denominator"] == 3
    assert s["undefended_accuracy"] == pytest.approx(1 / 3)  # not 1/7 = 0.143
    assert s["smoothed_accuracy"] == pytest.approx(2 / 3) and s["pixeldp_accuracy"] == pytest.approx(2 / 3)
    assert s["certified_accuracy_smoothing"]["0.25"] == pytest.approx(2 / 3)
    assert s["certified_accuracy_pixeldp"]["0.1"] == pytest.approx(2 / 3)
    assert s["certified_accuracy_pixeldp"]["0.2"] == 0
    assert s["agreement_smoothed"] == pytest.approx(6 / 7)  # agreement stays over every image
    assert s["abstention_rate"] == 0


def test_fully_labelled_and_fully_unlabelled_runs():
    labelled = summarize([record(1, 1, 1), record(2, 1, -1, radius=-1.0)])
    assert "accuracy_denominator" not in labelled and labelled["undefended_accuracy"] == 0.5
    assert labelled["smoothed_accuracy"] == 0.5 and labelled["abstention_rate"] == 0.5
    unlabelled = summarize([record(-1, 1, 1), record(-1, 2, 2)])
    assert unlabelled["accuracy_denominator"] == 2 and unlabelled["labeled"] == 0  # no label: over all, and all 0
    assert unlabelled["undefended_accuracy"] == 0
    assert unlabelled["agreement_smoothed"] == 1


@pytest.mark.parametrize("run", ["audit-runs/certify-fmnist-L0.1", "audit-runs/certify-natural-L0.1-first96"])
def test_a_committed_fully_labelled_summary_is_reproduced_byte_for_byte(run, tmp_path):
    folder = ROOT / "docs" / "results" / run
    records = read_records(folder / "certify.jsonl")
    assert all(r["label"] >= 0 for r in records)
    atomic_write_json(tmp_path / "summary.json", summarize(records))
    assert (tmp_path / "summary.json").read_bytes() == (folder / "summary.json").read_bytes()


def test_report_tables_read_the_same_denominator(tmp_path):
    from dp_autoencoder.report import certified_curves, load_run

    data = write_images(tmp_path / "data", ["a.png", "b.png", "c.png"])
    out = tmp_path / "run"
    summary = certify_dataset(toy_model(), ImageFolder(data, SIZE, 1, labels=[0, -1, -1]), settings(), out,
                              CLASSES, progress=False)
    assert summary["accuracy_denominator"] == 1
    curves = certified_curves(load_run(out), (0.0,))
    assert curves["smoothing"]["0"] == summary["certified_accuracy_smoothing"]["0"]
    assert curves["smoothing"]["0"] in (0.0, 1.0)  # one labelled image: right or wrong, never a third
