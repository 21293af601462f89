"""Train the Fashion-MNIST classifier that the project then treats as a frozen, downloaded model.

The network is a timm ResNet-10-T (``resnet10t``: deep-tiered 3-conv stem, one basic block per
stage, average-pool shortcuts) at half width, channels (32, 64, 128, 256), 1 input channel and 10
classes, fed the native 28x28 images (the stem's stride 4 leaves 7x7 maps, then 4, 2, 1).  AdamW
with a one-cycle learning rate, label smoothing 0.1, random crops with 2-pixel zero padding and
horizontal flips.  The whole run is deterministic given --seed and the number of threads.

It is trained once and shipped in pretrained/fmnist-classifier/ (safetensors + config.json +
MODEL_CARD.md, written by this script); after that nothing in the project changes its weights.

Example (the command that made the shipped checkpoint: 603 s on the 2-core dev machine, test
accuracy 92.87%; --threads 1 because another job shared the two cores):

    python tools/train_fmnist_classifier.py --out pretrained/fmnist-classifier --epochs 10 --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import timm
import torch
from torch.nn import functional as F
from tqdm import tqdm

from dp_autoencoder.checkpoint import read_config
from dp_autoencoder.classifiers import load_classifier, save_classifier
from dp_autoencoder.data import FASHION_MNIST_CLASSES, FashionMNIST
from dp_autoencoder.seeding import generator
from dp_autoencoder.stack import Classify, Preprocessing

# Fashion-MNIST's own pixel statistics (train split, pixels in [0, 1]).
PREP = Preprocessing(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), interpolation="bilinear")


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crops of the zero-padded images (shift by -pad..pad pixels) and horizontal flips."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1, 1), generator=g)
    rows = (dy + torch.arange(h).view(1, h, 1)).expand(n, h, w)
    cols = (dx + torch.arange(w).view(1, 1, w)).expand(n, h, w)
    index = (rows * (w + 2 * pad) + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    out = padded.flatten(2).gather(2, index).view(n, c, h, w)
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)


@torch.no_grad()
def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a classifier of [0, 1] images (it does its own normalization)."""
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += (classifier(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images)


def as_float(ds: FashionMNIST) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.images.unsqueeze(1).float().div_(255), ds.labels


def model_card(name: str, config: dict, command: str, size_bytes: int, note: str = "") -> str:
    t = config["training"]
    return f"""# {name}

A Fashion-MNIST classifier that `dp_autoencoder` treats as a frozen, downloaded model: the PixelDP
auto-encoder is stacked in front of it and its weights are never changed.

| | |
|---|---|
| Load | `dp_autoencoder.classifiers.load_classifier("pretrained/{name}")` |
| Architecture | timm `{config['timm_name']}` with `{json.dumps(config['timm_kwargs'])}` ({t['parameters']:,} parameters) |
| Input | [0, 1] grayscale images, 1 x 28 x 28; normalized inside the wrapper with mean {PREP.mean[0]}, std {PREP.std[0]} (Fashion-MNIST's) |
| Output | logits over the 10 Fashion-MNIST classes: {', '.join(FASHION_MNIST_CLASSES)} |
| Data | {config['data']} |
| Training | {config['epochs']} epochs, {t['steps']:,} steps of batch {t['batch_size']}; AdamW (weight decay {t['weight_decay']}), one-cycle learning rate peaking at {t['lr']}, label smoothing {t['label_smoothing']}; augmentation: {t['augmentation']} |
| Seed | {config['seed']} (the run is deterministic given the seed and the thread count, {t['threads']}) |
| Time | {config['seconds']} s of training{note} |
| Machine | {config['machine']} |
| **Test accuracy** | **{config['test_accuracy'] * 100:.2f}%** on the 10,000 Fashion-MNIST test images (measured once after the last epoch; no model selection on the test set) |
| Weights | {size_bytes / 1e6:.1f} MB of float32 safetensors; sha256 in `config.json`, checked on every load |
| License | Apache-2.0 (the project's); Fashion-MNIST is MIT-licensed (Zalando Research) |

Reproduce (the exact command):

```
{command}
```
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="pretrained/fmnist-classifier", help="checkpoint folder to write")
    p.add_argument("--arch", default="resnet10t", help="timm architecture (default resnet10t)")
    p.add_argument("--channels", default="32,64,128,256",
                   help="ResNet stage widths, comma separated (default 32,64,128,256; '' keeps timm's)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the 60,000 training images (default 10)")
    p.add_argument("--batch-size", type=int, default=128, help="default 128")
    p.add_argument("--lr", type=float, default=4e-3, help="peak one-cycle learning rate (default 4e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    p.add_argument("--seed", type=int, default=0, help="initialization, shuffling and augmentation (default 0)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="CPU threads (default 2; use 1 when another job shares the cores; the last bits of the "
                        "weights depend on it)")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--noise-sigma", type=float, default=0.0,
                   help="train with Gaussian noise of this std added to the [0, 1] pixels (Cohen et al.'s noise "
                        "training; the 'retrained with noise' ceiling of the reproduction). Default 0: clean")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (for timing a run; not for shipping)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr; the results to stdout)")
    args = p.parse_args(argv)
    quiet = vars(args).pop("quiet")  # not a setting: the recorded command stays as it was

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    train_x, train_y = as_float(FashionMNIST("train", args.data_root))
    test_x, test_y = as_float(FashionMNIST("test", args.data_root))

    kwargs = {"num_classes": 10, "in_chans": 1}
    if args.channels:
        kwargs["channels"] = [int(c) for c in args.channels.split(",")]
    model = timm.create_model(args.arch, pretrained=False, **kwargs)
    parameters = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_x) // args.batch_size
    steps = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.25)
    mean, std = PREP.mean[0], PREP.std[0]

    step, t0 = 0, time.time()
    # one bar over every step of every epoch: the rate, and the ETA of the whole run
    bar = tqdm(total=min(steps, args.max_steps or steps), desc=f"train: epoch 1/{args.epochs}", file=sys.stderr,
               mininterval=5.0, dynamic_ncols=True, unit="step", disable=quiet)
    for epoch in range(args.epochs):
        model.train()
        g = generator(args.seed, "fmnist-classifier", epoch)
        order = torch.randperm(len(train_x), generator=g)
        bar.set_description(f"train: epoch {epoch + 1}/{args.epochs}", refresh=False)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x = augment(train_x[idx], g)
            if args.noise_sigma > 0:
                x = x + args.noise_sigma * torch.randn(x.shape, generator=g)
            loss = F.cross_entropy(model((x - mean) / std), train_y[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if b % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
            bar.update()
            if args.max_steps and step >= args.max_steps:
                break
        if args.max_steps and step >= args.max_steps:
            bar.close()
            print(f"stopped after {step} steps, {time.time() - t0:.0f} s ({(time.time() - t0) / step:.3f} s/step)")
            break
        model.eval()  # progress report only: nothing is selected on the test set
        # tqdm.write: the same line on stdout, with the bar on stderr moved out of its way
        tqdm.write(f"epoch {epoch + 1}: {time.time() - t0:.0f} s, test accuracy "
                   f"{accuracy(lambda x: model((x - mean) / std), test_x, test_y):.4f}", file=sys.stdout)
        sys.stdout.flush()
    bar.close()
    seconds = time.time() - t0
    acc = accuracy(Classify(model, PREP), test_x, test_y)  # Classify freezes: training is over
    print(f"test accuracy {acc:.4f} after {seconds:.0f} s")
    if args.max_steps:
        return 0

    command = "python tools/train_fmnist_classifier.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("data_root", "max_steps") and v is not None and not (k == "noise_sigma" and v == 0))
    machine = (f"2-core CPU (the dev machine: {platform.machine()}, {os.cpu_count()} cores, "
               f"torch threads: {args.threads}, torch {torch.__version__}, timm {timm.__version__})")
    save_classifier(
        model, args.out, args.arch, kwargs, PREP, list(FASHION_MNIST_CLASSES),
        data="Fashion-MNIST: trained on the 60,000 train images, tested on the 10,000 test images",
        epochs=args.epochs, seconds=round(seconds), machine=machine, test_accuracy=acc, seed=args.seed,
        command=command,
        training={"steps": step, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                  "label_smoothing": args.label_smoothing, "threads": args.threads, "parameters": parameters,
                  "optimizer": "AdamW + OneCycleLR", "augmentation": "random crop (pad 2) + horizontal flip"
                  + (f" + Gaussian noise, std {args.noise_sigma} on [0, 1] pixels" if args.noise_sigma else "")})
    reloaded = accuracy(load_classifier(args.out), test_x, test_y)
    if reloaded != acc:
        raise SystemExit(f"the reloaded checkpoint scores {reloaded}, not {acc}")
    config = read_config(args.out)
    size = (Path(args.out) / config["files"]["weights"]["file"]).stat().st_size
    (Path(args.out) / "MODEL_CARD.md").write_text(model_card(Path(args.out).name, config, command, size))
    print(json.dumps({"test_accuracy": acc, "seconds": round(seconds), "weights_bytes": size, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
