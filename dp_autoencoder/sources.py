"""Open the images to certify, predict, attack or audit by the name of their source.

One function, :func:`open_dataset`, used by the Python API and by every `dpae` command that reads
evaluation images, so that a name means the same images everywhere:

- ``samples``: the bundled photos (scikit-image's, offline), labelled where an ImageNet class fits;
- ``fashion-mnist``: its test split (the Debian package dataset-fashion-mnist, or ``data_root``);
- a folder of ImageNet synset subfolders (``n01440764/...``), or a flat folder with a ``labels`` file:
  labelled ImageNet photos, optionally one ``class_split`` half of their classes;
- any other folder: its images, searched recursively, unlabelled (label -1).

Images come at the classifier's input size (the auto-encoder is fully convolutional), preprocessed
as timm evaluates ImageNet models (resize by ``crop_pct``, center crop) for photos.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from .data import DataError, FashionMNIST, ImageFolder

SOURCE_NAMES = ("samples", "fashion-mnist")


def open_dataset(source: str, *, image_size: int, channels: int = 3, crop_pct: float = 0.875,
                 labels: str | None = None, class_split: str | None = None,
                 data_root: str | None = None) -> Dataset:
    """The dataset named ``source``: items ``(image (C, H, W) in [0, 1], label int, -1 if unknown)``.

    ``image_size`` and ``crop_pct`` are the classifier's (``classifier.prep``), ``channels`` the
    auto-encoder's; a source that cannot match them is refused with a :class:`DataError`.
    """
    source = str(source)
    if source == "fashion-mnist":
        if channels != 1:
            raise DataError(f"Fashion-MNIST is grayscale but the model takes {channels} channels")
        if class_split or labels:
            raise DataError("--class-split and --labels are for ImageNet folders, not fashion-mnist")
        return FashionMNIST("test", data_root)
    if source == "samples":
        from .samples import SamplePhotos

        if channels != 3:
            raise DataError(f"the bundled photos are RGB but the model takes {channels} channels")
        if class_split or labels:
            raise DataError("--class-split and --labels are for ImageNet folders, not the bundled samples")
        return SamplePhotos(image_size, crop_pct)
    from .imagenet import ImageNetFolder, is_imagenet_tree

    if labels or (channels == 3 and is_imagenet_tree(source)):
        return ImageNetFolder(source, image_size, crop_pct, labels_file=labels, class_split=class_split)
    if class_split:
        raise DataError(f"--class-split needs an ImageNet tree or a labels file; {source} is a plain folder")
    return ImageFolder(source, image_size, channels)


def open_dataset_for(source: str, model, **options) -> Dataset:
    """:func:`open_dataset` at the sizes a defended ``model`` (a stack) needs."""
    prep = model.classifier.prep
    return open_dataset(source, image_size=prep.input_size[-1], channels=model.autoencoder.arch.in_channels,
                        crop_pct=prep.crop_pct, **options)
