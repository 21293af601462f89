"""Image sources: Fashion-MNIST (idx files), folders of images, and procedural dead leaves.

Every dataset yields ``(image, label)`` with ``image`` a float tensor in [0, 1] of shape
(C, H, W) and ``label`` an int (-1 when unknown).  Photos are read upright: their EXIF orientation is applied.  A
folder image that cannot be read raises
DataError naming it; for training (``skip_unreadable``) it yields ``None`` after a warning naming
it, and ``collate_skipping`` drops those and counts them.  ``read_image`` says which images decode.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif"}


class DataError(ValueError):
    """Missing, empty or unreadable data."""


# --- Fashion-MNIST ----------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped): magic 0x0000TTNN, NN dims, big-endian sizes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        for candidate in (root / name, root / "FashionMNIST" / "raw" / name):
            if candidate.is_file():
                return candidate
    return None


def find_fashion_mnist(root: str | None = None, download: bool = False) -> Path:
    """The folder holding the four idx files: ``root``, $DPAE_FASHION_MNIST, Debian's
    dataset-fashion-mnist, or (with ``download``) torchvision's download into ``root``."""
    candidates = [Path(p) for p in (root, os.environ.get("DPAE_FASHION_MNIST")) if p]
    candidates += [Path(p) for p in FASHION_MNIST_DIRS]
    for folder in candidates:
        if all(_find_idx(folder, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair):
            return folder
    if download:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        target = Path(root or "data")
        TVFashionMNIST(str(target), train=True, download=True)
        TVFashionMNIST(str(target), train=False, download=True)
        return target
    raise DataError(
        "Fashion-MNIST not found (looked in: " + ", ".join(str(c) for c in candidates) + "). "
        "Install it offline with `apt-get install dataset-fashion-mnist`, point --data-root at a "
        "folder with the idx files, or pass --download when online."
    )


class FashionMNIST(Dataset):
    def __init__(self, split: str = "train", root: str | None = None, download: bool = False):
        if split not in FASHION_MNIST_FILES:
            raise DataError(f"split must be 'train' or 'test', got {split!r}")
        folder = find_fashion_mnist(root, download)
        images, labels = (read_idx(_find_idx(folder, stem)) for stem in FASHION_MNIST_FILES[split])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = FASHION_MNIST_CLASSES
        self.split = split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].unsqueeze(0).float().div_(255), int(self.labels[i])


# --- folders of images ------------------------------------------------------------------
def list_images(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
    return files


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIF_ORIENTATION = 0x0112  # 1 upright; 2-8 the mirrorings and rotations that cameras record instead of rotating pixels


def _upright(im: Image.Image) -> Image.Image:
    """``im`` with its EXIF orientation applied (a portrait phone photo is stored as landscape pixels plus this
    tag; viewers, torchvision's decode_image and timm's loaders show it upright).  Images without the tag, or
    with tag 1, are returned as they are, without a copy."""
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, TypeError):  # a corrupt EXIF block: the pixels as stored
        return im
    return ImageOps.exif_transpose(im) if orientation in (2, 3, 4, 5, 6, 7, 8) else im


def _to_8_bit(im: Image.Image, path) -> Image.Image:
    """Pillow's convert("L"/"RGB") clips 16-bit grey at 255 (a nearly white image): scale it instead."""
    arr = np.asarray(im)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"cannot read image {path}: {im.mode} pixels outside 0..65535 (not a 16-bit image)")
    return Image.fromarray(((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


def read_image(path, mode: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` as an 8-bit ``mode`` ("L" or "RGB") image, or raise DataError naming the file.

    Alpha is dropped (the colour stored under transparent pixels is kept, as torchvision and timm do);
    palette, CMYK and 16-bit RGB(A) images go through Pillow's conversions; 16-bit grey is scaled to
    8 bits; 32-bit float images are refused (their value range is unknown).  The EXIF orientation is
    applied, so a photo comes upright as a viewer shows it.  An image over Pillow's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 Mpx by default) is refused from its
    header, before any pixel is decoded.  ``draft_size``: let JPEG decode at 1/2 to 1/8 scale while
    keeping at least this size.
    """
    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"cannot read image {path}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit (and decodes): refuse the whole band.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if limit and w * h > limit:
                raise DataError(
                    f"refusing image {path}: it is {w} x {h} = {w * h / 1e6:.1f} Mpx, over the {limit / 1e6:.1f} Mpx "
                    "decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS); nothing was decoded. Downscale it "
                    "(the models see a few hundred pixels), or raise the limit if you trust the file")
            if draft_size is not None:
                im.draft("RGB", draft_size)
            if im.mode == "F":
                raise DataError(f"cannot read image {path}: 32-bit float pixels have no known range; "
                                "save it as an 8- or 16-bit image")
            im = _upright(im)
            if im.mode in SIXTEEN_BIT_MODES:
                return _to_8_bit(im, path).convert(mode)
            if im.mode == "P":  # via RGBA: a palette's transparency is then plain alpha, dropped below
                im = im.convert("RGBA")
            return im.convert(mode)
    except Image.DecompressionBombError as e:
        raise DataError(f"refusing image {path}: {e} Nothing was decoded; downscale it, or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: not an image format Pillow recognises") from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read image {path}: {e}") from None


def load_image(path, image_size: int, channels: int) -> torch.Tensor:
    """Read (see ``read_image``) as L or RGB, resize the shorter side to ``image_size``, center crop."""
    with read_image(path, "L" if channels == 1 else "RGB") as im:
        w, h = im.size
        scale = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                       Image.BICUBIC)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).float().div_(255)
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)


class ImageFolder(Dataset):
    """Every image under ``root`` (searched recursively; symlinked folders are not followed, so a link
    loop is harmless), or the given ``files``, center-cropped; labels -1 unless given.  A file that
    cannot be read raises DataError naming it, or with ``skip_unreadable`` (training) yields None
    after a warning naming it."""

    def __init__(self, root, image_size: int, channels: int = 3, files: list[Path] | None = None,
                 labels: list[int] | None = None, skip_unreadable: bool = False):
        self.files = files if files is not None else list_images(root)
        self.root = Path(root) if root is not None else None
        self.labels = labels if labels is not None else [-1] * len(self.files)
        self.image_size, self.channels, self.skip_unreadable = image_size, channels, skip_unreadable

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return load_image(self.files[i], self.image_size, self.channels), self.labels[i]
        except DataError as e:
            if not self.skip_unreadable:
                raise
            warnings.warn(f"skipped: {e}", stacklevel=1)
            return None


# --- what a resumed run must find again ------------------------------------------------------
def _relative_names(files, root) -> list[str]:
    """The files as POSIX paths relative to ``root`` (else to their common folder): a data folder that moved
    or is named by another spelling lists the same."""
    files = [Path(f) for f in files]
    if root is None:
        root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(".")
    out = []
    for f in files:
        try:
            out.append(f.relative_to(root).as_posix())
        except ValueError:
            out.append(f.as_posix())
    return out


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # gone since it was listed: reading it will say so
        return -1


def dataset_fingerprint(dataset) -> dict:
    """How many images ``dataset`` holds and which: a sha256 of its list of files, their sizes in bytes and their
    labels (paths relative to the data folder) for folders of images, the split for Fashion-MNIST, the names for the bundled photos.

    Recorded in run.json so that a resumed run cannot mix the records of two data sets (see
    :func:`fingerprint_difference`).  Wrappers with a ``dataset`` attribute (``torch.utils.data.Subset``, whose
    indices enter the hash) are looked through; another kind of dataset is described by its size alone.
    Reads no pixel."""
    from torch.utils.data import Subset

    out = {"images": len(dataset)}
    base, chosen = dataset, []
    while hasattr(base, "dataset") and not hasattr(base, "files"):
        if isinstance(base, Subset):
            chosen.append([int(i) for i in base.indices])
        base = base.dataset
    listing = None
    if isinstance(base, FashionMNIST):
        out["fashion_mnist"] = base.split
    elif getattr(base, "files", None) is not None:  # folders of images (ImageFolder, ImageNetFolder)
        listing = [f"{name}\t{_size(f)}" for name, f in zip(_relative_names(base.files, getattr(base, "root", None)),
                                                          base.files)]
    elif getattr(base, "names", None) is not None:  # the bundled photos: names, not files
        listing = list(base.names)
    if listing is not None:
        labels = getattr(base, "labels", None)
        labels = [int(y) for y in labels] if labels is not None else [-1] * len(listing)
        listing = [f"{name}\t{y}" for name, y in zip(listing, labels)]
    if listing is not None or chosen:
        h = hashlib.sha256("\n".join(listing or []).encode())
        for indices in chosen:
            h.update(("\nsubset " + ",".join(map(str, indices))).encode())
        out["files_sha256"] = h.hexdigest()
    return out


def fingerprint_difference(recorded: dict | None, current: dict) -> str | None:
    """What differs between the data a run was made on (``recorded``, from its run.json) and ``current``, in
    words; None when nothing recorded differs.  A run.json from before fingerprints (``recorded`` None) and
    keys only one side has are unknown, not a difference: older runs still resume."""
    if not recorded:
        return None
    if recorded.get("images") is not None and recorded.get("images") != current.get("images"):
        return f"the data holds {current.get('images')} images now, {recorded.get('images')} when the run was made"
    for key, what in (("fashion_mnist", "the Fashion-MNIST split"),
                      ("files_sha256", "the list of files, sizes and labels (sha256)")):
        a, b = recorded.get(key), current.get(key)
        if a is not None and b is not None and a != b:
            if key == "files_sha256":
                return (f"{what} changed: {str(a)[:16]}... there, {str(b)[:16]}... now, with the same "
                        f"{current.get('images')} images (files renamed, replaced, rewritten or relabelled)")
            return f"{what} is {b!r} now, {a!r} when the run was made"
    return None


def collate_skipping(batch):
    """Stack the readable samples; returns (images, labels, number skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), skipped


class RandomCrops(Dataset):
    """Training crops of photos: ``length`` samples per epoch, sample k of epoch e a random-resized crop
    (area share in ``scale``, aspect ratio in ``ratio``, as Inception's training crops) of a file drawn at
    random, flipped left-right with probability 1/2, resized to ``image_size``.  Everything about sample k
    comes from (seed, epoch, k), so a resumed run sees the same crops; call ``set_epoch`` every epoch."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int, channels: int = 3,
                 length: int | None = None, seed: int = 0, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)):
        if not files:
            raise DataError("no training images")
        self.files, self.labels = list(files), list(labels)
        self.image_size, self.channels, self.seed = image_size, channels, seed
        self.length = length or len(self.files)
        self.scale, self.ratio = scale, ratio
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def crop_box(self, rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
        for _ in range(10):
            area = w * h * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return left, top, left + cw, top + ch
        side = min(w, h)
        return (w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side

    def __getitem__(self, k: int):
        rng = np.random.default_rng([self.seed, self.epoch, k])
        i = int(rng.integers(len(self.files)))
        try:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still leaves 2x the training size.
            with read_image(self.files[i], "L" if self.channels == 1 else "RGB",
                            draft_size=(2 * self.image_size, 2 * self.image_size)) as im:
                im = im.resize((self.image_size, self.image_size), Image.BICUBIC, box=self.crop_box(rng, *im.size))
        except DataError as e:
            warnings.warn(f"skipped: {e}", stacklevel=1)
            return None
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).float().div_(255)
        return (t.unsqueeze(0) if self.channels == 1 else t.permute(2, 0, 1)), self.labels[i]


# --- dead leaves ------------------------------------------------------------------------
def dead_leaves(rng: np.random.Generator, size: int, channels: int, r_min: float = 0.03,
                r_max: float = 0.4, disks: int = 500) -> np.ndarray:
    """One dead-leaves image (Lee, Mumford & Huang 2001): opaque disks with radii of density
    ~ r^-3 on [r_min, r_max] (fractions of the image side), the first disk drawn lying on top;
    pixels no disk covers take a background color.  Its power spectrum and edge statistics
    resemble natural images."""
    u = rng.random(disks)
    r = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5  # inverse CDF of r^-3
    centers = rng.random((disks, 2)) * (1 + 2 * r_max) - r_max
    colors = rng.random((disks + 1, channels)).astype(np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    dy = (grid[None, :] - centers[:, 1:2]) ** 2  # (disks, size)
    dx = (grid[None, :] - centers[:, 0:1]) ** 2
    covered = dy[:, :, None] + dx[:, None, :] <= (r * r)[:, None, None]  # (disks, size, size)
    top = np.where(covered.any(0), covered.argmax(0), disks)  # the first disk over each pixel
    return colors[top]


class DeadLeaves(Dataset):
    """``length`` procedural images; image i depends only on (seed, i)."""

    def __init__(self, length: int, image_size: int, channels: int = 3, seed: int = 0):
        if length < 1:
            raise DataError("dead-leaves needs at least one image")
        self.length, self.image_size, self.channels, self.seed = length, image_size, channels, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        img = dead_leaves(rng, self.image_size, self.channels)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), -1


# --- what `dpae train --data X [Y ...]` means ------------------------------------------
def labelled_files(root, class_split: str | None = None) -> tuple[list[Path], list[int]]:
    """The images under ``root`` with their ImageNet class indices when it is a synset tree (only the
    ``class_split`` half of its classes when given), else all of them with label -1."""
    from .imagenet import ImageNetFolder, is_imagenet_tree

    if is_imagenet_tree(root):
        tree = ImageNetFolder(root, class_split=class_split)
        return tree.files, tree.labels
    files = list_images(root)
    return files, [-1] * len(files)


def training_data(data, image_size: int | None, channels: int | None, seed: int,
                  data_root: str | None = None, download: bool = False, num_images: int = 20000,
                  val_images: int = 1000, crop: str = "center", epoch_images: int | None = None,
                  class_split: str | None = None) -> tuple[Dataset, Dataset, int, int]:
    """(train, validation, channels, image size) for one source or several: ``fashion-mnist``,
    ``dead-leaves`` or folders (ImageNet synset trees keep their labels, optionally one ``class_split``
    half of their classes; other folders are unlabelled).  Folder images are pooled; the validation
    images (center crops, for the PSNR) are a random tenth of the files, at most ``val_images``.
    ``crop="random"``: random-resized crops with flips, ``epoch_images`` per epoch (default: one per file)."""
    sources = [data] if isinstance(data, str) else list(data)
    if not sources:
        raise DataError("no training data given")
    if "fashion-mnist" in sources:
        if len(sources) > 1:
            raise DataError("Fashion-MNIST (28x28 grayscale) cannot be mixed with other sources")
        if channels not in (None, 1) or image_size not in (None, 28):
            raise DataError("Fashion-MNIST images are 28x28 grayscale (--channels 1, --image-size 28)")
        val = FashionMNIST("test", data_root, download)
        val = torch.utils.data.Subset(val, range(min(val_images, len(val))))
        return FashionMNIST("train", data_root, download), val, 1, 28
    if crop not in ("center", "random"):
        raise DataError(f"crop must be 'center' or 'random', got {crop!r}")
    channels = channels or 3
    image_size = image_size or 64
    train_parts, val_parts = [], []
    if "dead-leaves" in sources:
        # Disjoint seeds for validation: a different stream of images, not a held-out index range.
        train_parts.append(DeadLeaves(num_images, image_size, channels, seed))
        val_parts.append(DeadLeaves(val_images, image_size, channels, seed + 1_000_003))
    files, labels = [], []
    for source in sources:
        if source != "dead-leaves":
            f, y = labelled_files(source, class_split)
            files += f
            labels += y
    if files:
        order = np.random.default_rng(seed).permutation(len(files))
        n_val = min(val_images, len(files) // 10)
        val_idx, train_idx = (order[:n_val], order[n_val:]) if n_val else (order[:1], order)
        train_files, train_labels = [files[i] for i in train_idx], [labels[i] for i in train_idx]
        if crop == "random":
            train_parts.append(RandomCrops(train_files, train_labels, image_size, channels, epoch_images, seed))
        else:
            train_parts.append(ImageFolder(None, image_size, channels, train_files, train_labels, skip_unreadable=True))
        val_parts.append(ImageFolder(None, image_size, channels, [files[i] for i in val_idx],
                                     [labels[i] for i in val_idx], skip_unreadable=True))
    concat = torch.utils.data.ConcatDataset
    train = train_parts[0] if len(train_parts) == 1 else concat(train_parts)
    val = val_parts[0] if len(val_parts) == 1 else concat(val_parts)
    return train, val, channels, image_size


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell every RandomCrops inside ``dataset`` (a ConcatDataset too) which epoch it is."""
    for part in getattr(dataset, "datasets", [dataset]):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
