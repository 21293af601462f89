"""Monte-Carlo draws of the noise layer, votes counted on the model's device.

For each image the pre-noise map g(x) runs once; the noise of image ``idx`` comes in blocks of
``NOISE_BLOCK`` draws, block ``j`` from a generator seeded by (seed, idx, purpose, j).  Blocks
of several images are packed into forward batches of ``batch_size`` draws.  The noise an image
receives therefore does not depend on the batch size, on the other images in the batch, on
their order, or on how images are split across processes.

Speed (measured with ``tools/benchmark.py``, see docs/benchmarks.md):

- the noisy latents are written straight into one preallocated buffer of ``batch_size +
  NOISE_BLOCK - 1`` rows (the model's ``sample_noise(..., out=)`` draws into it, then g(x) is added in
  place); a forward reads a contiguous slice of it, and only the draws that spill over a batch
  (fewer than ``NOISE_BLOCK``) are moved to the front afterwards -- no ``torch.cat`` of the
  whole batch, no per-block temporaries;
- votes (and optional softmax sums) are accumulated on the device; nothing syncs with the host
  until the caller reads the counts;
- a model put in ``channels_last`` memory format by :func:`prepare_for_sampling` runs its convs
  in that layout (1.2-1.4x for the Fashion-MNIST stack on the 2-core development CPU); the
  noise is still drawn in the standard layout, so it is the same bits either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .seeding import generator

NOISE_BLOCK = 100


@dataclass
class Votes:
    counts: torch.Tensor  # (images, classes) int64: argmax votes
    score_sum: torch.Tensor | None = None  # (images, classes) float64: sum of softmax scores
    score_sq_sum: torch.Tensor | None = None  # (images, classes) float64: sum of squared scores


def prepare_for_sampling(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Put ``model``'s 4-D weights in ``channels_last`` memory format, in place (values unchanged).

    Convolutions then run in NHWC, which oneDNN (CPU) and cuDNN (GPU, with autocast) prefer;
    returns the model.  The noise drawn by :func:`sample_votes` does not depend on this.
    """
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.inference_mode()
def sample_votes(model, z: torch.Tensor, indices, num: int, num_classes: int, image_size, seed: int,
                 purpose: str, batch_size: int = 256, with_scores: bool = False,
                 autocast_dtype: torch.dtype | None = None) -> Votes:
    """Votes of ``num`` noise draws for each image, given its pre-noise features ``z`` (B, ...)."""
    if num < 1:
        raise ValueError(f"the number of draws must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"the batch size must be >= 1, got {batch_size}")
    device = z.device
    rows = len(indices)
    counts = torch.zeros(len(z), num_classes, dtype=torch.int64, device=device)
    score_sum = torch.zeros(len(z), num_classes, dtype=torch.float64, device=device) if with_scores else None
    score_sq = torch.zeros_like(score_sum) if with_scores else None
    if rows == 0:
        return Votes(counts, score_sum, score_sq)

    batch_size = min(batch_size, rows * num)
    capacity = min(rows * num, batch_size + NOISE_BLOCK - 1)  # a whole block always fits after < batch_size rows
    buf = torch.empty((capacity, *z.shape[1:]), dtype=z.dtype, device=device)
    owner = torch.empty(capacity, dtype=torch.long, device=device)
    ones = torch.ones(capacity, dtype=torch.long, device=device)
    size = tuple(image_size)
    amp = dict(device_type=device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)

    def run(start: int, stop: int) -> None:
        who = owner[start:stop]
        with torch.autocast(**amp):
            logits = model.logits_from_noisy(buf[start:stop], size)
        if logits.shape[-1] != num_classes:
            raise ValueError(f"the classifier returned {logits.shape[-1]} classes, expected {num_classes}")
        counts.index_put_((who, logits.argmax(1)), ones[:stop - start], accumulate=True)
        if with_scores:
            p = torch.softmax(logits.float(), 1).double()
            score_sum.index_add_(0, who, p)
            score_sq.index_add_(0, who, p * p)

    fill = 0
    for row, idx in enumerate(indices):
        z_row = z[row]
        for block, start in enumerate(range(0, num, NOISE_BLOCK)):
            m = min(NOISE_BLOCK, num - start)
            g = generator(seed, int(idx), purpose, block, device=device)
            out = buf[fill:fill + m]
            model.sample_noise(out.shape, g, device, z.dtype, out=out).add_(z_row)
            owner[fill:fill + m] = row
            fill += m
            if fill >= batch_size:
                done = 0
                while fill - done >= batch_size:
                    run(done, done + batch_size)
                    done += batch_size
                left = fill - done  # < batch_size <= done: source and target do not overlap
                if left:
                    buf[:left].copy_(buf[done:fill])
                    owner[:left].copy_(owner[done:fill])
                fill = left
    if fill:
        run(0, fill)
    return Votes(counts, score_sum, score_sq)
