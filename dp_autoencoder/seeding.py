"""Generators derived from a tuple of keys, so a random stream depends on what it is for
(seed, epoch, image index, ...) and not on the order in which streams are created."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*keys) -> int:
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*keys, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*keys))
    return g
