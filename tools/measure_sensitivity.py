"""Delta's proven bound against lower estimates on a trained auto-encoder.

    python tools/measure_sensitivity.py runs/ae-fmnist-L0.1 [--size 28] [--iters 2000]

Prints the polyphase-Fourier bound (what certificates use), the textbook sqrt(ceil(k/s)^2) * sigma_max
bound, a long power iteration (a lower estimate of the true norm) and the largest ratio over
random input pairs; the bound must never be below the two lower estimates.
"""

import argparse

import torch

from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.sensitivity import conv_l1_bound, conv_l2_bound, conv_l2_bound_simple, conv_power_iteration


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--size", type=int, default=None, help="image size (default: the checkpoint's)")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--pairs", type=int, default=512)
    args = p.parse_args()
    model, config = load_autoencoder(args.checkpoint)
    conv = model.pre_noise_conv
    if conv is None:
        print("noise on the input: Delta = 1 exactly")
        return
    size = (args.size, args.size) if args.size else tuple(config["image_size"])
    w, s, pad = conv.weight.detach(), conv.stride, conv.padding
    bound = conv_l2_bound(w, s, pad, size)
    power = conv_power_iteration(w, s, pad, size, iters=args.iters)
    torch.manual_seed(0)
    x = torch.rand(args.pairs, conv.in_channels, *size)
    x2 = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        diff = torch.nn.functional.conv2d(x - x2, w, None, s, pad)
    pairs = (diff.flatten(1).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)).max().item()
    print(f"checkpoint {args.checkpoint}, image size {size}")
    print(f"L2 polyphase-Fourier bound   {bound:.6f}")
    print(f"L2 sqrt(ceil(k/s)^2)*sigma   {conv_l2_bound_simple(w, s):.6f}")
    print(f"L2 power iteration ({args.iters})   {power:.6f}   ratio to bound {power / bound:.4f}")
    print(f"L2 max over {args.pairs} random pairs {pairs:.6f}   ratio to bound {pairs / bound:.4f}")
    print(f"L1 exact column abs-sum      {conv_l1_bound(w, s, pad, size):.6f}")


if __name__ == "__main__":
    main()
