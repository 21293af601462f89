"""Monte-Carlo draws of the noise layer, votes counted on the model's device.

For each image the pre-noise map g(x) runs once; the noise of image ``idx`` comes in blocks of
``NOISE_BLOCK`` draws, block ``j`` from a generator seeded by (seed, idx, purpose, j).  Blocks
of several images are packed into forward batches of ``batch_size`` draws.  The noise an image
receives therefore does not depend on the batch size, on the other images in the batch, on
their order, or on how images are split across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .seeding import generator

NOISE_BLOCK = 100


@dataclass
class Votes:
    counts: torch.Tensor  # (images, classes) int64: argmax votes
    score_sum: torch.Tensor | None = None  # (images, classes) float64: sum of softmax scores
    score_sq_sum: torch.Tensor | None = None  # (images, classes) float64: sum of squared scores


def _noise_blocks(model, z: torch.Tensor, idx: int, num: int, seed: int, purpose: str):
    for block, start in enumerate(range(0, num, NOISE_BLOCK)):
        m = min(NOISE_BLOCK, num - start)
        g = generator(seed, idx, purpose, block, device=z.device)
        yield model.sample_noise((m, *z.shape), g, z.device, z.dtype)


@torch.inference_mode()
def sample_votes(model, z: torch.Tensor, indices, num: int, num_classes: int, image_size, seed: int,
                 purpose: str, batch_size: int = 256, with_scores: bool = False,
                 autocast_dtype: torch.dtype | None = None) -> Votes:
    """Votes of ``num`` noise draws for each image, given its pre-noise features ``z`` (B, ...)."""
    if num < 1:
        raise ValueError(f"the number of draws must be >= 1, got {num}")
    device = z.device
    counts = torch.zeros(len(z), num_classes, dtype=torch.int64, device=device)
    score_sum = torch.zeros(len(z), num_classes, dtype=torch.float64, device=device) if with_scores else None
    score_sq = torch.zeros_like(score_sum) if with_scores else None
    pending: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    pending_rows = 0

    def run(rows: int):
        nonlocal pending, owners, pending_rows
        batch, owner = torch.cat(pending), torch.cat(owners)
        noisy, rest = batch[:rows], batch[rows:]
        who, rest_owner = owner[:rows], owner[rows:]
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = model.logits_from_noisy(noisy, image_size)
        logits = logits.float()
        if logits.shape[-1] != num_classes:
            raise ValueError(f"the classifier returned {logits.shape[-1]} classes, expected {num_classes}")
        counts.index_put_((who, logits.argmax(1)), torch.ones_like(who), accumulate=True)
        if with_scores:
            p = torch.softmax(logits, 1).double()
            score_sum.index_add_(0, who, p)
            score_sq.index_add_(0, who, p * p)
        pending, owners = ([rest], [rest_owner]) if len(rest) else ([], [])
        pending_rows = len(rest)

    for row, idx in enumerate(indices):
        for noise in _noise_blocks(model, z[row], int(idx), num, seed, purpose):
            pending.append(z[row].unsqueeze(0) + noise)
            owners.append(torch.full((len(noise),), row, dtype=torch.long, device=device))
            pending_rows += len(noise)
            while pending_rows >= batch_size:
                run(batch_size)
    if pending_rows:
        run(pending_rows)
    return Votes(counts, score_sum, score_sq)
