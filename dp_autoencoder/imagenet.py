"""ImageNet (ILSVRC-2012) validation images with labels in the classifiers' class order.

The 1000 classes are numbered as timm and torchvision classifiers number their logits: the
WordNet synset ids sorted (n01440764 -> 0 ... n15075141 -> 999).  The order is taken from the
metadata bundled in timm (``timm.data.ImageNetInfo``, offline), never from the folders found on
disk, so a tree holding only a few class folders still gets the right indices.

Layouts (chosen in this order):

1. ``labels_file`` given: the images directly inside ``root`` (not recursive), labelled by the
   file.  Each line is ``NAME LABEL`` or ``NAME,LABEL`` (extra fields ignored), where NAME is
   the file name or its stem and LABEL a class index 0..999 or a synset id.  Blank lines and
   ``#`` comments are skipped, as is a first line that is a header (``ImageId,PredictionString``).
   The devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line, a
   different numbering) is refused.
2. subfolders in ``root``: ``root/<synset>/**/<image>``; every (non-hidden) subfolder must be
   one of the 1000 synsets, and no images may lie directly in ``root``.
3. otherwise: the images directly inside ``root``, labels -1 (unknown; the certifier then
   reports agreement with the undefended classifier).

Preprocessing is timm's ImageNet evaluation transform: RGB, shorter side resized to
``round(image_size / crop_pct)`` (bicubic), center crop ``image_size``; tensors in [0, 1].
Photos are read upright (their EXIF orientation applied, ``data.read_image``).  A certify or attack run
records the number of files and a hash of their list, sizes and labels (``data.dataset_fingerprint``), so a
resume on a changed folder is refused.  Files are listed at construction but only opened in ``__getitem__``;
an unreadable image raises
``DataError`` naming the file (no silent skipping, so a certified count is never short).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from torch.utils.data import Dataset

from .data import IMAGE_EXTENSIONS, DataError, read_image
from .samples import center_crop

NUM_CLASSES = 1000
_SYNSET_RE = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def _synsets() -> tuple[str, ...]:
    import timm.data

    names = tuple(timm.data.ImageNetInfo("imagenet-1k").label_names())
    if len(names) != NUM_CLASSES or list(names) != sorted(names):
        raise DataError(f"timm's bundled ImageNet-1k synset list is unexpected ({len(names)} entries)")
    return names


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synset ids in class-index order (index 0 = n01440764, tench)."""
    return list(_synsets())


@lru_cache(maxsize=1)
def _synset_index() -> dict[str, int]:
    return {s: i for i, s in enumerate(_synsets())}


def synset_to_index() -> dict[str, int]:
    """Synset id -> class index, e.g. ``"n02123045" -> 281`` (tabby)."""
    return dict(_synset_index())


def is_imagenet_tree(root) -> bool:
    """Whether ``root`` has at least one subfolder named after an ImageNet-1k synset."""
    root = Path(root)
    if not root.is_dir():
        return False
    index = _synset_index()
    return any(p.is_dir() and p.name in index for p in root.iterdir())


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _parse_label(token: str, index: dict[str, int]) -> int | None:
    """Class index from an int or a synset token; None when the token is neither."""
    if _SYNSET_RE.match(token):
        if token not in index:
            raise DataError(f"{token} is not one of the 1000 ImageNet-1k synsets")
        return index[token]
    try:
        return int(token)
    except ValueError:
        return None


def read_labels_file(path) -> dict[str, int]:
    """``{file name or stem: class index}`` from a labels file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read labels file {path}: {e}") from None
    index = _synset_index()
    labels: dict[str, int] = {}
    seen_data = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f for f in re.split(r"[,\s]+", line) if f]
        if len(fields) < 2:
            raise DataError(
                f"{path}:{lineno}: expected 'filename label' (label a class index 0..999 or a synset id), "
                f"got {raw.strip()!r}; the devkit's ILSVRC2012_validation_ground_truth.txt uses another "
                "numbering and is not supported")
        name, token = fields[0], fields[1]
        label = _parse_label(token, index)
        if label is None:
            if not seen_data:  # a header line
                seen_data = True
                continue
            raise DataError(f"{path}:{lineno}: label {token!r} is neither a class index nor a synset id")
        seen_data = True
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{path}:{lineno}: class index {label} is outside 0..{NUM_CLASSES - 1}")
        name = os.path.basename(name)
        if labels.get(name, label) != label:
            raise DataError(f"{path}:{lineno}: {name} is labelled both {labels[name]} and {label}")
        labels[name] = label
    if not labels:
        raise DataError(f"labels file {path} has no entries")
    return labels


CLASS_SPLITS = ("train", "val")


def split_classes(labels, part: str) -> list[int]:
    """Disjoint halves of the classes present: sorted, those at even positions are ``train``, those at odd
    positions ``val``.  On ../shared/data/imagenet-samples-dev (the even class indices) that is index % 4 == 0
    for train and index % 4 == 2 for val, 250 classes each."""
    if part not in CLASS_SPLITS:
        raise DataError(f"class split must be one of {CLASS_SPLITS}, got {part!r}")
    present = sorted(set(labels))
    return present[0::2] if part == "train" else present[1::2]


class ImageNetFolder(Dataset):
    """ImageNet validation images: ``(image (3, S, S) in [0, 1], label int)``, label -1 if unknown.

    Attributes: ``files`` (paths), ``labels`` (ints), ``names`` (file stems, for printing),
    ``layout`` ("labels-file", "synset-folders" or "unlabeled"), ``classes`` (the synsets).
    """

    def __init__(self, root, image_size: int = 224, crop_pct: float = 0.875, labels_file=None,
                 class_split: str | None = None):
        if not 0 < crop_pct <= 1:
            raise DataError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.root = root = Path(root)
        if not root.exists():
            raise DataError(f"data folder {root} does not exist")
        if not root.is_dir():
            raise DataError(f"{root} is not a folder")
        self.image_size, self.crop_pct = int(image_size), float(crop_pct)
        self.classes = imagenet_synsets()
        loose = sorted(p for p in root.iterdir() if _is_image(p))
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

        if labels_file is not None:
            self.layout = "labels-file"
            table = read_labels_file(labels_file)
            if not loose:
                raise DataError(f"no image files directly inside {root} (a labels file needs a flat folder)")
            missing = [p for p in loose if p.name not in table and p.stem not in table]
            if missing:
                raise DataError(f"{len(missing)} of {len(loose)} images in {root} are not in the labels file "
                                f"{labels_file}, e.g. {missing[0].name}")
            files = loose
            labels = [table[p.name] if p.name in table else table[p.stem] for p in loose]
        elif subdirs:
            self.layout = "synset-folders"
            index = _synset_index()
            for d in subdirs:
                if d.name not in index:
                    raise DataError(f"folder {d} is not named after an ImageNet-1k synset (like n01440764)")
                target = d.resolve()
                if d.is_symlink() and (target == root.resolve() or target in root.resolve().parents):
                    # Its images would be every class's, listed again under this one.
                    raise DataError(f"synset folder {d} is a symlink to {target}, the tree itself or a folder "
                                    "above it: a loop")
            if loose:
                raise DataError(f"{root} has synset folders but also loose images, e.g. {loose[0].name}")
            files, labels = [], []
            for d in subdirs:
                found = sorted(p for p in d.rglob("*") if _is_image(p))
                files += found
                labels += [index[d.name]] * len(found)
        else:
            self.layout = "unlabeled"
            files, labels = loose, [-1] * len(loose)

        if not files:
            raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {root}")
        if class_split is not None:
            if self.layout == "unlabeled":
                raise DataError(f"--class-split needs labelled images; {root} has no labels")
            keep = set(split_classes(labels, class_split))
            kept = [(f, y) for f, y in zip(files, labels) if y in keep]
            if not kept:
                raise DataError(f"the {class_split!r} half of the classes in {root} is empty "
                                f"({len(set(labels))} class present)")
            files, labels = [f for f, _ in kept], [y for _, y in kept]
        self.files: list[Path] = files
        self.labels: list[int] = labels
        self.names: list[str] = [p.stem for p in files]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int):
        with read_image(self.files[i], "RGB") as im:  # DataError naming the file when it cannot be read
            return center_crop(im, self.image_size, self.crop_pct)

    def __getitem__(self, i: int):
        return self.load(i), self.labels[i]
