"""The `dpae` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = {
    "train": """examples:
  dpae train --data fashion-mnist --L 0.1 --epochs 1 --out runs/ae-fmnist-L0.1
  dpae train --data dead-leaves --arch imagenet --image-size 224 --L 0.1 --out runs/ae-natural
  dpae train --data /data/imagenet/train --arch imagenet --image-size 299 --workers 8 --out runs/ae-in
  dpae train --out runs/ae-fmnist-L0.1 --data fashion-mnist --L 0.1 --epochs 5 --resume
  torchrun --nproc_per_node 4 -m dp_autoencoder.cli train --data /data/imagenet/train ...""",
    "inspect": """examples:
  dpae inspect runs/ae-fmnist-L0.1""",
}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a PixelDP auto-encoder on image reconstruction",
                       epilog=EXAMPLES["train"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="fashion-mnist, dead-leaves (procedural, offline), or a folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="checkpoint folder (written every epoch)")
    p.add_argument("--L", type=float, default=0.1, help="construction attack bound L (default 0.1)")
    p.add_argument("--noise", choices=["gaussian", "laplace"], default="gaussian",
                   help="gaussian: L2 attacks; laplace: L1 attacks")
    p.add_argument("--eps", type=float, default=1.0, help="PixelDP epsilon (default 1; <= 1 for gaussian)")
    p.add_argument("--delta", type=float, default=None, help="PixelDP delta (default 0.05 gaussian, 0 laplace)")
    p.add_argument("--arch", choices=["small", "imagenet"], default=None,
                   help="architecture preset (default: small for fashion-mnist, imagenet otherwise)")
    p.add_argument("--noise-placement", choices=["latent", "input"], default="latent",
                   help="noise after the first conv + ReLU (paper) or on the image itself (Delta = 1)")
    p.add_argument("--image-size", type=int, default=None, help="square training size (folders, dead-leaves; default 64)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None, help="1 (grayscale) or 3 (RGB)")
    p.add_argument("--epochs", type=int, default=1, help="total epochs (a resumed run goes on to this many)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--constraint", choices=["project", "parseval", "both", "none"], default="project",
                   help="keep Delta <= 1 after each step: exact projection (default), Parseval retraction, both")
    p.add_argument("--parseval-beta", type=float, default=0.05)
    p.add_argument("--noise-warmup-steps", type=int, default=0, help="ramp the noise up linearly over this many steps")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap the steps of each epoch (short runs)")
    p.add_argument("--num-images", type=int, default=20000, help="dead-leaves images per epoch")
    p.add_argument("--val-images", type=int, default=1000, help="validation images for the PSNR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST with torchvision if missing")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args) -> int:
    from .train import TrainSettings, train

    delta = args.delta if args.delta is not None else (0.05 if args.noise == "gaussian" else 0.0)
    arch = args.arch or ("small" if args.data == "fashion-mnist" else "imagenet")
    settings = TrainSettings(
        data=args.data, out=args.out, L=args.L, noise=args.noise, eps=args.eps, delta=delta, arch=arch,
        noise_placement=args.noise_placement, image_size=args.image_size, channels=args.channels,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        constraint=args.constraint, parseval_beta=args.parseval_beta,
        noise_warmup_steps=args.noise_warmup_steps, steps_per_epoch=args.steps_per_epoch,
        num_images=args.num_images, val_images=args.val_images, seed=args.seed, workers=args.workers,
        data_root=args.data_root, download=args.download)
    out = train(settings, resume=args.resume, device=args.device, progress=not args.quiet)
    print(f"checkpoint: {out}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a checkpoint, recompute Delta, check its sha256",
                       epilog=EXAMPLES["inspect"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON")


def _run_inspect(args) -> int:
    from .train import describe_checkpoint

    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    noise = info["noise"]
    scale_name = "sigma" if noise["kind"] == "gaussian" else "b"
    print(f"checkpoint      {info['path']}  (sha256 verified)")
    print(f"architecture    {info['architecture']}")
    print(f"noise           {noise['kind']}, L = {noise['L']}, eps = {noise['eps']}, delta = {noise['delta']}, "
          f"{scale_name} = {noise['scale']:.6g}")
    print(f"image size      {info['image_size']}")
    print(f"Delta           {info['sensitivity_recomputed']:.6f} recomputed = {info['sensitivity_stored']:.6f} "
          f"stored  ({info['sensitivity_method']})")
    if info["training"]:
        t = info["training"]
        print(f"training        {t.get('epochs_done')} epochs, {t.get('steps')} steps, "
              f"val PSNR {t.get('val_psnr', float('nan')):.2f} dB, data {t.get('settings', {}).get('data')}")
    return 0


COMMANDS = {"train": (_add_train, _run_train), "inspect": (_add_inspect, _run_inspect)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpae", description="PixelDP auto-encoder defense: train, stack before a frozen classifier, certify.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .mechanisms import CalibrationError
    from .train import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (CheckpointError, DataError, CalibrationError, TrainingError) as e:
        print(f"dpae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
