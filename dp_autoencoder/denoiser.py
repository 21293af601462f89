"""A multi-scale post-noise network for photos: a small residual U-Net.

Everything after the noise is post-processing of the PixelDP map, so this network may be anything;
it is built to be a good Gaussian denoiser at a low cost per draw:

    stem 3x3 conv (full resolution, widths[0])
    for each further level: stride-2 3x3 conv (down) -> `blocks` residual blocks      (1/2 ... 1/2^k)
    for each level back up: 2x2 transposed conv (up) + skip (added) -> `blocks` residual blocks
                            (none at full resolution)
    head 3x3 conv -> sigmoid                                                            ([0, 1])

All the residual blocks are at 1/2 resolution or coarser, where the pixels are few: with the width
doubling as the side halves, each block costs the same at every level. Any input
size works (odd ones too): every down step rounds up and every up step is cropped to its skip.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))); the second conv starts at zero so a fresh block is the identity."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _blocks(width: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(width) for _ in range(count)))


class UNetDenoiser(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, widths: tuple[int, ...], blocks: int):
        super().__init__()
        if len(widths) < 1 or min(widths) < 1 or blocks < 0:
            raise ValueError(f"a U-Net needs >= 1 positive widths and blocks >= 0, got {widths}, {blocks}")
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.enc = nn.ModuleList(_blocks(w, blocks if level else 0) for level, w in enumerate(widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths, widths[1:]))
        self.dec = nn.ModuleList(_blocks(w, blocks if level else 0) for level, w in enumerate(widths[:-1]))
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.enc[0](self.stem(z))
        skips = [h]
        for down, enc in zip(self.down, self.enc[1:]):
            h = enc(down(F.relu(h)))
            skips.append(h)
        for level in reversed(range(len(self.up))):
            skip = skips[level]
            h = self.up[level](F.relu(h))[..., : skip.shape[-2], : skip.shape[-1]] + skip
            h = self.dec[level](h)
        return torch.sigmoid(self.head(F.relu(h)))
