"""A small deterministic defended model and data set for engine tests (no training needed)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp_autoencoder.autoencoder import Architecture, NoiseConfig, PixelDPAutoencoder
from dp_autoencoder.stack import Classify, DefendedClassifier, Preprocessing

SIZE, CLASSES = 16, 4


def toy_model(L: float = 0.05, kind: str = "gaussian", seed: int = 0) -> DefendedClassifier:
    torch.manual_seed(seed)
    ae = PixelDPAutoencoder(Architecture(1, (32, 64), (4, 4), (2, 2)), NoiseConfig(kind, L, 1.0, 0.05 if kind == "gaussian" else 0.0))
    ae.constrain_((SIZE, SIZE))
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, CLASSES))
    # An untrained auto-encoder's output barely varies: a tiny std lets the noise split the votes.
    return DefendedClassifier(ae, Classify(net, Preprocessing(input_size=(1, SIZE, SIZE), mean=(0.5,), std=(0.002,))))


def toy_data(n: int = 12, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g))
