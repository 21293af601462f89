"""The bundled photos of the offline default: scikit-image's sample images.

Labels are ImageNet class ids where one clearly fits, -1 otherwise (then results report
agreement with the undefended classifier instead of accuracy).  Preprocessing is timm's for
ImageNet evaluation: resize the shorter side to size / crop_pct (bicubic), center crop.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .data import DataError

SAMPLE_PHOTOS = (
    ("chelsea", 281),  # tabby cat
    ("coffee", 967),  # espresso
    ("clock", 409),  # analog clock
    ("astronaut", -1),
    ("rocket", -1),
    ("stereo_motorcycle", -1),
    ("hubble_deep_field", -1),
)


def load_photo(name: str) -> Image.Image:
    try:
        from skimage import data as skimage_data
    except ImportError:
        raise DataError("the bundled photos need scikit-image (pip install scikit-image)") from None
    arr = getattr(skimage_data, name)()
    if isinstance(arr, tuple):  # stereo pairs: the left image
        arr = arr[0]
    return Image.fromarray(np.asarray(arr)).convert("RGB")


def center_crop(image: Image.Image, size: int, crop_pct: float = 0.875) -> torch.Tensor:
    scale_to = round(size / crop_pct)
    w, h = image.size
    s = scale_to / min(w, h)
    image = image.resize((max(scale_to, round(w * s)), max(scale_to, round(h * s))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


class SamplePhotos(Dataset):
    def __init__(self, image_size: int = 224, crop_pct: float = 0.875):
        self.names = [name for name, _ in SAMPLE_PHOTOS]
        self.labels = [label for _, label in SAMPLE_PHOTOS]
        self.images = [center_crop(load_photo(name), image_size, crop_pct) for name in self.names]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]
