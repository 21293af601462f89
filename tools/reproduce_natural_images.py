"""The natural-image tier of the reproduction: the bundled photos through the shipped natural-image
PixelDP auto-encoder and the offline EfficientNet-Lite0, into docs/results/natural-images.md.

A small sample (7 photos), so every figure is agreement with the undefended classifier's own prediction
(the photos' ImageNet labels are approximate): certified agreement against the radius by both bounds,
and agreement under PGD-L2 with expectation over noise.

Examples:
  python tools/reproduce_natural_images.py                 # about 10 min on a 2-core CPU
  python tools/reproduce_natural_images.py --quick --out /tmp/n --work /tmp/nw
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dp_autoencoder.attacks import AttackSettings, attack_dataset
from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.certify import CertifySettings, certify_dataset, read_records
from dp_autoencoder.classifiers import load_classifier
from dp_autoencoder.samples import SamplePhotos
from dp_autoencoder.stack import DefendedClassifier

ROOT = Path(__file__).resolve().parents[1]
AUTOENCODER = ROOT / "pretrained" / "natural-ae-L0.1"
CLASSIFIER = "efficientnet_lite0-offline"
RADII = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
BUDGETS = (0.0, 0.25, 0.5, 1.0)


class Unlabeled(Dataset):
    """The photos with label -1: every figure is then agreement with the undefended prediction."""

    def __init__(self, photos: SamplePhotos):
        self.photos = photos

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int):
        return self.photos[i][0], -1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"), help="where natural-images.md goes")
    p.add_argument("--work", default="runs/reproduce-natural-images", help="intermediate results (resumable)")
    p.add_argument("--n0", type=int, default=20, help="selection draws (default 20, as dpae certify on the photos)")
    p.add_argument("--n", type=int, default=100, help="estimation draws (default 100, as dpae certify on the photos)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--eot", type=int, default=4, help="noise draws per PGD step (default 4)")
    p.add_argument("--quick", action="store_true", help="2 photos, few draws and steps (a smoke run)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    max_images = 2 if args.quick else None
    if args.quick:
        args.n0, args.n, args.steps, args.eot = 5, 10, 2, 2
    t0 = time.time()
    classifier = load_classifier(CLASSIFIER)
    model = DefendedClassifier(load_autoencoder(AUTOENCODER)[0], classifier)
    photos = SamplePhotos(classifier.prep.input_size[-1], classifier.prep.crop_pct)
    data = Unlabeled(photos)
    work = Path(args.work)
    certify_dataset(model, data, CertifySettings(n0=args.n0, n=args.n, max=max_images, sources=("natural",)),
                    work / "certify", num_classes=1000, progress=not args.quiet)
    records = read_records(work / "certify" / "certify.jsonl")
    attack = attack_dataset(model, data, AttackSettings(budgets=BUDGETS, steps=args.steps, eot=args.eot, n0=args.n0,
                                                        n=args.n, max=max_images, images_per_step=1,
                                                        sources=("natural",)),
                            work / "attack-l2", num_classes=1000, progress=not args.quiet)
    names = photos.names[:len(records)]
    n = len(records)

    def agreement_at(key: str, pred: str, t: float) -> str:
        return f"{sum(r[pred] == r['undefended_predict'] and r[key] > 0 and r[key] >= t for r in records)}/{n}"

    per_image = "\n".join(
        f"| {name} | {classifier.class_names[r['undefended_predict']]} | "
        f"{classifier.class_names[r['predict']] if r['predict'] >= 0 else 'abstain'} | {r['radius']:.3f} | "
        f"{classifier.class_names[r['pixeldp_predict']]} | {r['pixeldp_size']:.3f} |"
        for name, r in zip(names, records))
    cert = "\n".join(f"| {t:g} | {agreement_at('radius', 'predict', t)} | {agreement_at('pixeldp_size', 'pixeldp_predict', t)} |"
                     for t in RADII)
    att = "\n".join(f"| {b['budget']:g} | {b['undefended_accuracy'] * n:.0f}/{n} | {b['defended_accuracy'] * n:.0f}/{n} | "
                    f"{b['defended_accuracy_predict'] * n:.0f}/{n} |" for b in attack["budgets"].values())
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    command = "python tools/reproduce_natural_images.py" + (" --quick" if args.quick else "")
    text = f"""# Natural images: the bundled photos (a small sample)

Produced by `{command}` in {(time.time() - t0) / 60:.1f} min on {machine} (date: {time.strftime('%Y-%m-%d')}).
{n} photos from scikit-image, center-cropped to 224; the shipped `natural-ae-L0.1` (trained on dead leaves only)
in front of the frozen EfficientNet-Lite0 (`{CLASSIFIER}`). n0 = {args.n0}, n = {args.n}, alpha = 0.001, eta = 0.95.
Every figure is **agreement with the undefended classifier's prediction** on the clean photo: {n} images are far
too few for accuracy, and this is a smoke-level sample, not an ImageNet evaluation.

| photo | undefended | smoothed (Cohen) | radius | PixelDP majority | PixelDP size |
|---|---|---|---|---|---|
{per_image}

Certified agreement (prediction equals the undefended one and is certified at >= T):

| T | smoothing | PixelDP |
|---|---|---|
{cert}

Agreement under PGD-L2 with expectation over noise ({args.eot} draws per step, {args.steps} steps, margin loss),
defended prediction from n0 + n fresh draws:

| budget | undefended | defended, majority | defended, PREDICT (abstains) |
|---|---|---|---|
{att}
"""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "natural-images.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
