"""Train the Fashion-MNIST classifier that the project treats as a frozen, downloaded model.

    python tools/train_fmnist_classifier.py --out pretrained/fmnist-classifier --epochs 5

A timm ResNet-18 (in_chans=1, 10 classes) that sees the 28x28 images upsampled to 56x56, the
way the defended pipeline resizes the auto-encoder's output to a classifier's input size.
Trained once; after that nothing in the project changes its weights.
"""

import argparse
import json
import platform
import time

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm
from dp_autoencoder.classifiers import load_classifier, save_classifier
from dp_autoencoder.data import FASHION_MNIST_CLASSES, FashionMNIST
from dp_autoencoder.seeding import generator
from dp_autoencoder.stack import Classify, Preprocessing

PREP = Preprocessing(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), interpolation="bilinear")


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop with 2-pixel zero padding and horizontal flips."""
    n = len(x)
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2, n), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def accuracy(classifier: Classify, data, batch_size=500) -> float:
    correct = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        correct += (classifier(x).argmax(1) == y).sum().item()
    return correct / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="pretrained/fmnist-classifier")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    train_set, test_set = FashionMNIST("train"), FashionMNIST("test")
    kwargs = {"in_chans": 1, "num_classes": 10}
    model = timm.create_model(args.arch, pretrained=False, **kwargs)
    classifier = Classify(model, PREP)
    for param in model.parameters():  # Classify freezes; this script is the one place that trains
        param.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * (len(train_set) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        g = generator(args.seed, epoch)
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=g, drop_last=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}")
        for x, y in bar:
            logits = model((augment(x, g) - PREP.mean[0]) / PREP.std[0])
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    seconds = time.time() - t0
    acc = accuracy(Classify(model, PREP), test_set)
    print(f"test accuracy {acc:.4f} after {seconds:.0f} s")
    save_classifier(model, args.out, args.arch, kwargs, PREP, list(FASHION_MNIST_CLASSES),
                    data="Fashion-MNIST train (60,000)", epochs=args.epochs, seconds=round(seconds),
                    machine=f"{platform.machine()}, {torch.get_num_threads()} CPU threads",
                    test_accuracy=acc, seed=args.seed, command=" ".join(["python tools/train_fmnist_classifier.py",
                                                                           f"--epochs {args.epochs}", f"--arch {args.arch}"]))
    reloaded = accuracy(load_classifier(args.out), test_set)
    print(json.dumps({"test_accuracy": acc, "reloaded_accuracy": reloaded, "seconds": seconds}))


if __name__ == "__main__":
    main()
