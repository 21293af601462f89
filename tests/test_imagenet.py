import numpy as np
import pytest
import torch
from PIL import Image

from dp_autoencoder.data import DataError
from dp_autoencoder.imagenet import (ImageNetFolder, imagenet_synsets, is_imagenet_tree, read_labels_file,
                                     synset_to_index)

S = 32
TABBY, TENCH, LAST = "n02123045", "n01440764", "n15075141"


def _write(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _check_item(ds, i):
    x, y = ds[i]
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    return y


def test_synset_order():
    syn = imagenet_synsets()
    assert len(syn) == 1000 and syn == sorted(syn) and len(set(syn)) == 1000
    assert syn[0] == TENCH and syn[999] == LAST and syn[281] == TABBY
    idx = synset_to_index()
    assert idx[TABBY] == 281 and idx[TENCH] == 0 and idx[LAST] == 999


def test_synset_folders_use_classifier_order(tmp_path):
    # created out of order, and only 3 of the 1000 classes present
    _write(tmp_path / TABBY / "b.png", 1)
    _write(tmp_path / TABBY / "a.jpg", 2)
    _write(tmp_path / LAST / "z.JPEG", 3)
    _write(tmp_path / TENCH / "sub" / "c.png", 4)
    (tmp_path / ".hidden").mkdir()
    assert is_imagenet_tree(tmp_path)
    ds = ImageNetFolder(tmp_path, image_size=S)
    assert ds.layout == "synset-folders"
    assert [p.relative_to(tmp_path).as_posix() for p in ds.files] == [
        f"{TENCH}/sub/c.png", f"{TABBY}/a.jpg", f"{TABBY}/b.png", f"{LAST}/z.JPEG"]
    assert ds.labels == [0, 281, 281, 999]
    assert ds.names == ["c", "a", "b", "z"]
    assert [_check_item(ds, i) for i in range(len(ds))] == [0, 281, 281, 999]


def test_non_synset_folder_is_named(tmp_path):
    _write(tmp_path / TENCH / "a.png")
    _write(tmp_path / "cats" / "b.png")
    with pytest.raises(DataError, match="cats"):
        ImageNetFolder(tmp_path, image_size=S)
    assert not is_imagenet_tree(tmp_path / "cats")


def test_loose_images_beside_synset_folders(tmp_path):
    _write(tmp_path / TENCH / "a.png")
    _write(tmp_path / "stray.png")
    with pytest.raises(DataError, match="stray.png"):
        ImageNetFolder(tmp_path, image_size=S)


@pytest.mark.parametrize("fmt", [
    "{name} {idx}", "{name},{idx}", "{name}\t{syn}", "{name},{syn}", "{stem} {idx}", "{stem},{syn} 1 2 3 4"])
def test_labels_file_formats(tmp_path, fmt):
    root = tmp_path / "val"
    entries = [("ILSVRC2012_val_00000002.JPEG", TABBY, 281), ("ILSVRC2012_val_00000001.JPEG", LAST, 999),
               ("x.png", TENCH, 0)]
    for k, (name, _, _) in enumerate(entries):
        _write(root / name, k)
    lines = ["ImageId,PredictionString", "# comment", ""] + [
        fmt.format(name=n, stem=n.rsplit(".", 1)[0], idx=i, syn=s) for n, s, i in entries]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    ds = ImageNetFolder(root, image_size=S, labels_file=labels)
    assert ds.layout == "labels-file"
    assert ds.names == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002", "x"]
    assert ds.labels == [999, 281, 0]
    assert _check_item(ds, 1) == 281


def test_labels_file_missing_entry(tmp_path):
    root = tmp_path / "val"
    _write(root / "a.png")
    _write(root / "b.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("a.png 5\n")
    with pytest.raises(DataError, match="b.png"):
        ImageNetFolder(root, image_size=S, labels_file=labels)


@pytest.mark.parametrize("bad", ["a.png 1000", "a.png -1", "a.png n99999999", "a.png 3\nb.png cat",
                                 "1\n2\n", "a.png 1\na.png 2"])
def test_labels_file_bad_entries(tmp_path, bad):
    labels = tmp_path / "labels.txt"
    labels.write_text(bad + "\n")
    with pytest.raises(DataError):
        read_labels_file(labels)


def test_unlabeled_flat_folder(tmp_path):
    _write(tmp_path / "b.png", 1)
    _write(tmp_path / "a.jpg", 2)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageNetFolder(tmp_path, image_size=S, crop_pct=1.0)
    assert ds.layout == "unlabeled" and ds.names == ["a", "b"] and ds.labels == [-1, -1]
    assert _check_item(ds, 0) == -1
    assert not is_imagenet_tree(tmp_path)


def test_empty_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageNetFolder(tmp_path / "nope")
    with pytest.raises(DataError, match="no image files"):
        ImageNetFolder(tmp_path)
    (tmp_path / TENCH).mkdir()
    with pytest.raises(DataError, match="no image files"):
        ImageNetFolder(tmp_path)
    (tmp_path / TENCH / "broken.JPEG").write_bytes(b"not a jpeg")
    ds = ImageNetFolder(tmp_path, image_size=S)
    with pytest.raises(DataError, match="broken.JPEG"):
        ds[0]
