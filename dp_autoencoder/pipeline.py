"""The defended pipeline: PixelDP auto-encoder -> resize -> normalize -> frozen classifier.

Everything after the noise is post-processing of a (eps, delta)-PixelDP map, so the whole
stack inherits the certificate; the classifier is frozen (eval mode, no gradients) and its
weights are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .autoencoder import NoiseConfig, PixelDPAutoencoder, draw_noise


@dataclass
class Preprocessing:
    """How the classifier wants its [0, 1] images: size, interpolation, mean and std."""

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    extra: dict = field(default_factory=dict)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Classify(nn.Module):
    """A frozen classifier behind its preprocessing: [0, 1] images of any size -> logits."""

    def __init__(self, model: nn.Module, prep: Preprocessing):
        super().__init__()
        self.model = freeze(model)
        self.prep = prep
        c = prep.input_size[0]
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).expand(c).reshape(1, c, 1, 1).clone(),
                             persistent=False)
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).expand(c).reshape(1, c, 1, 1).clone(),
                             persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: batch-norm statistics and dropout never switch to training
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.prep.input_size
        if x.shape[1] != c:
            raise ValueError(f"the classifier takes {c}-channel images, got {x.shape[1]} channels")
        if tuple(x.shape[-2:]) != (h, w):
            mode = self.prep.interpolation if self.prep.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
            x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False if mode != "nearest" else None,
                              antialias=mode != "nearest" and x.shape[-1] > w)
        return self.model((x - self.mean) / self.std)


class DefendedClassifier(nn.Module):
    """x -> g(x) -> + noise -> rest of the auto-encoder -> Classify -> logits."""

    def __init__(self, autoencoder: PixelDPAutoencoder, classifier: Classify):
        super().__init__()
        if autoencoder.arch.in_channels != classifier.prep.input_size[0]:
            raise ValueError(
                f"cannot stack: the auto-encoder outputs {autoencoder.arch.in_channels}-channel images but the "
                f"classifier takes {classifier.prep.input_size[0]} channels")
        self.autoencoder = autoencoder.eval()
        self.classifier = classifier

    @property
    def noise(self):
        return self.autoencoder.noise

    def sensitivity(self, image_size) -> float:
        return self.autoencoder.sensitivity(tuple(image_size))

    def pre_noise(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.pre_noise(x)

    def sample_noise(self, shape, generator=None, device=None, dtype=torch.float32, out=None) -> torch.Tensor:
        return self.autoencoder.sample_noise(shape, generator, device, dtype, out)

    def logits_from_noisy(self, z_noisy: torch.Tensor, image_size) -> torch.Tensor:
        return self.classifier(self.autoencoder.post_noise(z_noisy, tuple(image_size)))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.pre_noise(x)
        z = z + self.sample_noise(z.shape, generator, z.device, z.dtype)
        return self.logits_from_noisy(z, x.shape[-2:])


class InputNoiseClassifier(nn.Module):
    """The baseline without an auto-encoder: the construction's noise on the pixels themselves
    (g = identity, so Delta = 1), then the classifier.  Same certifier, same sigma."""

    def __init__(self, classifier: Classify, noise: NoiseConfig):
        super().__init__()
        self.classifier = classifier
        self.noise = noise

    def sensitivity(self, image_size) -> float:
        return 1.0

    def pre_noise(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sample_noise(self, shape, generator=None, device=None, dtype=torch.float32, out=None) -> torch.Tensor:
        return draw_noise(self.noise, shape, generator, device, dtype, out)

    def logits_from_noisy(self, x_noisy: torch.Tensor, image_size) -> torch.Tensor:
        return self.classifier(x_noisy)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.classifier(x + self.sample_noise(x.shape, generator, x.device, x.dtype))


def state_fingerprint(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to prove a command left them bit-identical."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
