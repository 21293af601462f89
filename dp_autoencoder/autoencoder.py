"""The PixelDP noisy auto-encoder.

    x in [0,1]^{C,H,W} -> g(x) = ReLU(conv1(x))  (pre-noise, proven sensitivity Delta)
                       -> z = g(x) + noise      (Gaussian for L2, Laplace for L1)
                       -> encoder rest -> mirrored transposed convs -> sigmoid -> [0,1]^{C,H,W}

With ``noise_placement="input"`` the noise is added to x itself (g = identity, Delta = 1).
The three stages are separate methods so a certifier computes ``pre_noise`` once per
image and then draws many noises.

Two decoders: ``"mirror"`` (the paper's: the encoder's convs mirrored by transposed convs) and
``"unet"`` (``denoiser.UNetDenoiser``, a multi-scale residual denoiser for photos).  For the U-Net
the pre-noise part is either nothing (noise on the image) or one stride-1 conv + ReLU
(``channels[0]`` maps, kernel ``kernels[0]``) whose Delta ``sensitivity.py`` proves as for the
paper's; the U-Net itself is post-processing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from . import sensitivity as sens
from .denoiser import UNetDenoiser
from .mechanisms import NOISE_KINDS, NORM_OF_NOISE, calibrate

PLACEMENTS = ("latent", "input")
DECODERS = ("mirror", "unet")


@dataclass(frozen=True)
class Architecture:
    """Encoder convs (channels, kernels, strides) and the decoder after the noise.

    ``decoder="mirror"``: the paper's; transposed convs mirror the encoder convs.
    ``decoder="unet"``: one pre-noise conv (``channels[0]``, ``kernels[0]``, stride 1) for the latent
    placement, then ``UNetDenoiser(widths, blocks)``.
    """

    in_channels: int
    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    noise_placement: str = "latent"
    decoder: str = "mirror"
    widths: tuple[int, ...] = ()
    blocks: int = 0

    def __post_init__(self):
        n = len(self.channels)
        if n == 0 or len(self.kernels) != n or len(self.strides) != n:
            raise ValueError("channels, kernels and strides must be non-empty and of equal length")
        if self.noise_placement not in PLACEMENTS:
            raise ValueError(f"noise_placement must be one of {PLACEMENTS}, got {self.noise_placement!r}")
        if self.in_channels < 1 or min(self.channels) < 1 or min(self.kernels) < 1 or min(self.strides) < 1:
            raise ValueError("channels, kernels and strides must be positive")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.decoder == "unet":
            if n != 1 or self.strides[0] != 1 or self.kernels[0] % 2 == 0:
                raise ValueError("a U-Net's pre-noise conv is a single stride-1 conv with an odd kernel")
            if not self.widths or min(self.widths) < 1 or self.blocks < 0:
                raise ValueError("a U-Net needs positive widths and blocks >= 0")

    @property
    def levels(self) -> int:
        """Stride-2 steps of the U-Net (0 for the mirror decoder)."""
        return len(self.widths) - 1 if self.decoder == "unet" else 0

    @staticmethod
    def from_dict(d: dict) -> "Architecture":
        return Architecture(
            in_channels=int(d["in_channels"]),
            channels=tuple(int(c) for c in d["channels"]),
            kernels=tuple(int(k) for k in d["kernels"]),
            strides=tuple(int(s) for s in d["strides"]),
            noise_placement=str(d.get("noise_placement", "latent")),
            decoder=str(d.get("decoder", "mirror")),
            widths=tuple(int(w) for w in d.get("widths", ())),
            blocks=int(d.get("blocks", 0)),
        )


PRESETS = {
    # The paper's ImageNet auto-encoder: three stride-2 convs, 32/32/64 channels, kernels 10/8/5.
    "imagenet": dict(channels=(32, 32, 64), kernels=(10, 8, 5), strides=(2, 2, 2)),
    # A smaller one for 28x28 images (Fashion-MNIST).
    "small": dict(channels=(32, 64, 128), kernels=(4, 4, 3), strides=(2, 2, 1)),
    # Photo denoisers (denoiser.UNetDenoiser): levels at 1, 1/2, 1/4, 1/8 (and 1/16), blocks only below full size.
    # unet-cpu: 1.45 GMACs per 224 x 224 draw (EfficientNet-Lite0: 0.39; `dpae inspect` counts them).
    "unet-cpu": dict(channels=(16,), kernels=(3,), strides=(1,), decoder="unet", widths=(16, 32, 64, 128), blocks=1),
    # unet-gpu: 16.5 GMACs, for training on a GPU.
    "unet-gpu": dict(channels=(32,), kernels=(3,), strides=(1,), decoder="unet",
                     widths=(32, 64, 128, 256, 256), blocks=2),
}


def preset(name: str, in_channels: int, noise_placement: str = "latent") -> Architecture:
    if name not in PRESETS:
        raise ValueError(f"unknown architecture preset {name!r}; choose from {', '.join(PRESETS)}")
    return Architecture(in_channels=in_channels, noise_placement=noise_placement, **PRESETS[name])


@dataclass(frozen=True)
class NoiseConfig:
    """The construction: attack bound L, privacy (eps, delta), and the noise it fixes."""

    kind: str  # "gaussian" | "laplace"
    L: float
    eps: float
    delta: float
    sensitivity_target: float = 1.0  # Delta the weights are constrained to during training
    scale: float = field(default=0.0)  # sigma (Gaussian) or b (Laplace); derived when 0

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {self.kind!r}")
        expected = calibrate(self.kind, self.L, self.eps, self.delta, self.sensitivity_target)
        if self.scale == 0.0:
            object.__setattr__(self, "scale", expected)
        elif abs(self.scale - expected) > 1e-9 * expected:
            raise ValueError(f"noise scale {self.scale} does not match the calibration {expected} for {self}")

    @property
    def norm(self) -> str:
        return NORM_OF_NOISE[self.kind]

    def to_dict(self) -> dict:
        return asdict(self)


def _padding(kernel: int, stride: int) -> int:
    return max(kernel - stride, 0) // 2


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class PixelDPAutoencoder(nn.Module):
    def __init__(self, arch: Architecture, noise: NoiseConfig):
        super().__init__()
        self.arch = arch
        self.noise = noise
        chans = (arch.in_channels,) + arch.channels
        if arch.decoder == "unet":
            latent = arch.noise_placement == "latent"
            k = arch.kernels[0]
            self.encoder = nn.ModuleList([nn.Conv2d(arch.in_channels, arch.channels[0], k, 1, k // 2)] if latent else [])
            self.denoiser = UNetDenoiser(arch.channels[0] if latent else arch.in_channels, arch.in_channels,
                                         arch.widths, arch.blocks)
            return
        self.encoder = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], k, s, _padding(k, s))
            for i, (k, s) in enumerate(zip(arch.kernels, arch.strides))
        )
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], k, s, _padding(k, s))
            for i, (k, s) in reversed(list(enumerate(zip(arch.kernels, arch.strides))))
        )

    # --- the three stages -------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.arch.in_channels:
            raise ValueError(
                f"the auto-encoder takes (N, {self.arch.in_channels}, H, W) images, got shape {tuple(x.shape)}"
            )
        if min(min(hw) for hw in self.feature_sizes(tuple(x.shape[-2:]))) < 1:
            raise ValueError(f"images of size {tuple(x.shape[-2:])} are too small for this auto-encoder")

    def pre_noise(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): the map whose sensitivity is bounded by ``sensitivity()``."""
        self.check_input(x)
        if self.arch.noise_placement == "input":
            return x
        return F.relu(self.encoder[0](x))

    def sample_noise(self, shape, generator: torch.Generator | None = None, device=None,
                     dtype=torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
        """One draw of the construction's noise (N(0, sigma^2) or Laplace(0, b)) of the given shape."""
        return draw_noise(self.noise, shape, generator, device, dtype, out)

    def post_noise(self, z: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Everything after the noise: the rest of the encoder, the decoder, the sigmoid."""
        if self.arch.decoder == "unet":
            return self.denoiser(z)
        sizes = self.feature_sizes(image_size)
        start = 0 if self.arch.noise_placement == "input" else 1
        h = z
        for conv in self.encoder[start:]:
            h = F.relu(conv(h))
        last = len(self.decoder) - 1
        for j, deconv in enumerate(self.decoder):
            h = deconv(h, output_size=sizes[last - j])
            h = torch.sigmoid(h) if j == last else F.relu(h)
        return h

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                noise_multiplier: float = 1.0) -> torch.Tensor:
        z = self.pre_noise(x)
        if noise_multiplier:
            z = z + noise_multiplier * self.sample_noise(z.shape, generator, z.device, z.dtype)
        return self.post_noise(z, tuple(x.shape[-2:]))

    # --- geometry and sensitivity ----------------------------------------------------
    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial size at the input of each encoder conv (index 0 is the image); for the U-Net, the
        size of each of its levels."""
        sizes = [tuple(image_size)]
        if self.arch.decoder == "unet":
            for _ in range(self.arch.levels):
                h, w = sizes[-1]
                sizes.append(((h + 1) // 2, (w + 1) // 2))
            return sizes
        for conv in self.encoder:
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            h, w = sizes[-1]
            sizes.append((_conv_out(h, k, s, p), _conv_out(w, k, s, p)))
        return sizes

    @property
    def pre_noise_conv(self) -> nn.Conv2d | None:
        return None if self.arch.noise_placement == "input" else self.encoder[0]

    def sensitivity(self, image_size: tuple[int, int], norm: str | None = None) -> float:
        """Proven bound on ||g(x) - g(x')|| / ||x - x'|| for images of ``image_size``.

        The conv's bias cancels in the difference and ReLU is 1-Lipschitz in every
        l_p norm (it acts coordinate-wise), so the conv's operator norm bounds g.
        """
        norm = norm or self.noise.norm
        if self.pre_noise_conv is None:
            return 1.0
        return sens.conv_sensitivity(self.pre_noise_conv, tuple(image_size), norm)

    def constrain_(self, image_size: tuple[int, int], method: str = "project", beta: float = 0.05) -> float:
        """Keep the pre-noise layer's sensitivity <= the target after an optimizer step."""
        conv = self.pre_noise_conv
        if conv is None:
            return 1.0
        if method in ("parseval", "both"):
            sens.parseval_retraction_(conv, beta)
        if method in ("project", "both"):
            return sens.project_conv_(conv, tuple(image_size), self.noise.norm, self.noise.sensitivity_target)
        if method == "parseval" or method == "none":
            return self.sensitivity(image_size)
        raise ValueError(f"unknown constraint {method!r}; expected project, parseval, both or none")


# --- checkpoints ------------------------------------------------------------------------
KIND = "pixeldp-autoencoder"
SENSITIVITY_METHODS = {
    "l2": "polyphase-fourier (Sedghi et al. 2019 on the stride's polyphase conv)",
    "l1": "exact max column abs-sum",
}


def draw_noise(noise: NoiseConfig, shape, generator: torch.Generator | None = None, device=None,
               dtype=torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """One draw of ``noise`` (N(0, sigma^2) or Laplace(0, b)) of the given shape, written into ``out``
    when given (the same bits either way)."""
    if noise.kind == "gaussian":
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype, out=out)
        return x.mul_(noise.scale)
    # Laplace(0, b) is b * (E1 - E2) with E1, E2 independent Exp(1).
    e = torch.empty((2, *shape), device=device, dtype=dtype).exponential_(generator=generator)
    x = torch.sub(e[0], e[1], out=out)
    return x.mul_(noise.scale)


def sensitivity_record(model: PixelDPAutoencoder, image_size: tuple[int, int]) -> dict:
    method = "identity" if model.pre_noise_conv is None else SENSITIVITY_METHODS[model.noise.norm]
    return {"value": model.sensitivity(image_size), "norm": model.noise.norm,
            "method": method, "image_size": list(image_size)}


def autoencoder_config(model: PixelDPAutoencoder, image_size: tuple[int, int], **extra) -> dict:
    from . import __version__

    return {
        "kind": KIND,
        "architecture": asdict(model.arch),
        "noise": model.noise.to_dict(),
        "image_size": list(image_size),
        "sensitivity": sensitivity_record(model, image_size),
        "package_version": __version__,
        **extra,
    }


def save_autoencoder(model: PixelDPAutoencoder, directory, image_size, extra_tensors=None, **extra):
    from .checkpoint import save_checkpoint

    config = autoencoder_config(model, tuple(image_size), **extra)
    return save_checkpoint(directory, model.state_dict(), config, extra_tensors)


def load_autoencoder(directory, map_location="cpu") -> tuple[PixelDPAutoencoder, dict]:
    """Load and verify: sha256, config fields, and Delta recomputed from the weights."""
    from .checkpoint import CheckpointError, load_checkpoint

    config, tensors = load_checkpoint(directory)
    if config.get("kind") != KIND:
        raise CheckpointError(f"{directory} holds a {config.get('kind')!r}, not a {KIND}")
    try:
        model = PixelDPAutoencoder(Architecture.from_dict(config["architecture"]),
                                   NoiseConfig(**config["noise"]))
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"config of {directory} does not match its weights: {e}") from None
    stored = config["sensitivity"]["value"]
    recomputed = model.sensitivity(tuple(config["sensitivity"]["image_size"]))
    if abs(recomputed - stored) > 1e-6 * max(1.0, stored):
        raise CheckpointError(
            f"{directory}: stored sensitivity {stored} differs from {recomputed} recomputed from the weights"
        )
    return model.to(map_location).eval(), config
