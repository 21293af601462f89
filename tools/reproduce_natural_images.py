"""Natural images: front-ends before the frozen EfficientNet-Lite0, measured on real ImageNet photos, into
docs/results/natural-images.md and natural-images.png.

For each construction bound L (0.1 and 0.3; sigma = 2.5373 L), every front-end is certified with the same
certifier, the same noise seeds and the same images:
  - no front-end: the construction's noise on the pixels, then the classifier (`stack.InputNoiseClassifier`);
  - the paper's preset (`pretrained/natural-ae-paper-L0.1`, L = 0.1 only);
  - the shipped photo front-ends (`pretrained/natural-ae-L0.1`, `-L0.3`);
  - or, with `--front-end NAME=CHECKPOINT`, other ones instead (the noise-placement pair of docs/placement.md).
Data: the validation half of ../shared/data/imagenet-samples-dev (`--class-split val`: classes the shipped
front-ends never saw; accuracy against the labels) and the 7 bundled photos (agreement with the undefended
classifier). Certified accuracy by both bounds at r = 0, 0.1, 0.25, 0.5, 0.75, and draws/s.

Resumable: each (data, front-end) pair is a `dpae certify`-style folder under --work; rerun the same command.

Examples:
  python tools/reproduce_natural_images.py                             # the issue's protocol: n0 100, n 1000
  python tools/reproduce_natural_images.py --skip 5 --precision bf16   # 50 validation photos, bf16 autocast
  python tools/reproduce_natural_images.py --quick --out /tmp/n --work /tmp/nw    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dp_autoencoder.autoencoder import NoiseConfig, load_autoencoder
from dp_autoencoder.certify import CertifySettings, certify_dataset, read_records, resumed_pixeldp_profile
from dp_autoencoder.classifiers import load_classifier
from dp_autoencoder.imagenet import ImageNetFolder
from dp_autoencoder.macs import autoencoder_macs, count_macs
from dp_autoencoder.samples import SamplePhotos
from dp_autoencoder.sampler import prepare_for_sampling, sample_votes
from dp_autoencoder.stack import DefendedClassifier, InputNoiseClassifier

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"
CLASSIFIER = "efficientnet_lite0-offline"
RADII = (0.0, 0.1, 0.25, 0.5, 0.75)
BASELINE = "no front-end (noise on pixels)"
SHIPPED = {
    "paper preset (natural-ae-paper-L0.1)": ROOT / "pretrained" / "natural-ae-paper-L0.1",
    "U-Net (natural-ae-L0.1)": ROOT / "pretrained" / "natural-ae-L0.1",
    "U-Net (natural-ae-L0.3)": ROOT / "pretrained" / "natural-ae-L0.3",
}


def front_ends(named: dict) -> dict:
    """(name, L) -> checkpoint, the no-front-end baseline (checkpoint None) first at every L present."""
    listed = {(name, json.loads((Path(path) / "config.json").read_text())["noise"]["L"]): Path(path)
              for name, path in named.items()}
    out = {}
    for L in sorted({L for _, L in listed}):
        out[(BASELINE, L)] = None
        out.update({key: path for key, path in listed.items() if key[1] == L})
    return out


class Unlabeled(Dataset):
    """The photos with label -1: every figure is then agreement with the undefended prediction."""

    def __init__(self, photos):
        self.photos = photos

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int):
        return self.photos[i][0], -1


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text).strip("-").lower()


def build(classifier, checkpoint, L):
    """The stack to certify and its MACs per 224 x 224 draw (front-end + classifier)."""
    clf_macs = count_macs(classifier, torch.zeros(1, *classifier.prep.input_size))
    if checkpoint is None:
        return InputNoiseClassifier(classifier, NoiseConfig("gaussian", L, 1.0, 0.05)), clf_macs
    autoencoder, config = load_autoencoder(checkpoint)
    if abs(config["noise"]["L"] - L) > 1e-12:
        raise SystemExit(f"{checkpoint} is built for L = {config['noise']['L']}, listed under L = {L}")
    model = DefendedClassifier(autoencoder, classifier)
    return model, clf_macs + autoencoder_macs(autoencoder, tuple(classifier.prep.input_size[1:]))["per_draw"]


def timed_draws_per_s(model, image, autocast, draws: int = 300, progress: bool = False) -> float:
    """Draws/s of one image's certification loop measured alone (the second of two runs): the table's other
    speed column comes from the certification itself, slower whenever other jobs shared the CPU."""
    with torch.inference_mode():
        z = model.pre_noise(image[None])
    for _ in tqdm(range(2), desc="draws/s alone: runs", unit="run", leave=False, dynamic_ncols=True, file=sys.stderr,
                  disable=not progress):  # the bar moves between the runs, outside the clock
        t0 = time.perf_counter()
        sample_votes(model, z, [0], draws, 1000, tuple(image.shape[-2:]), 0, "timing", batch_size=100,
                     autocast_dtype=autocast)
        seconds = time.perf_counter() - t0
    return draws / seconds


def certified(records, key, pred, t, agreement):
    target = "undefended_predict" if agreement else "label"
    return sum(r[pred] == r[target] and r[pred] >= 0 and r[key] > 0 and r[key] >= t for r in records) / len(records)


def table(rows, agreement: bool) -> str:
    what = "certified agreement" if agreement else "certified accuracy"
    head = " | ".join(f"r = {t:g}" for t in RADII)
    lines = [f"| L | front-end | bound | {head} | draws/s (run) | draws/s (alone) | GMACs/draw |",
             "|---|---|---|" + "---|" * (len(RADII) + 3)]
    for row in rows:
        for bound, key, pred in (("smoothing", "radius", "predict"), ("PixelDP", "pixeldp_size", "pixeldp_predict")):
            cells = " | ".join(f"{100 * certified(row['records'], key, pred, t, agreement):.0f}%" for t in RADII)
            speed = (f"{row['draws_per_s']:.1f} | {row['alone']:.1f} | {row['macs'] / 1e9:.2f}" if bound == "smoothing"
                     else " | | ")
            lines.append(f"| {row['L']:g} | {row['name']} | {bound} | {cells} | {speed} |")
    return f"{what} (share of all images):\n\n" + "\n".join(lines)


def figure(rows, path: Path, title: str, agreement: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [i / 100 for i in range(0, 101)]
    levels = sorted({row["L"] for row in rows})
    fig, axes = plt.subplots(1, len(levels), figsize=(max(7.5, 6 * len(levels)), 4.6), squeeze=False)
    for ax, L in zip(axes[0], levels):
        for k, row in enumerate(r for r in rows if r["L"] == L):
            color = f"C{k}"
            for key, pred, style, bound in (("radius", "predict", "-", "smoothing"),
                                            ("pixeldp_size", "pixeldp_predict", "--", "PixelDP")):
                ax.plot(grid, [100 * certified(row["records"], key, pred, t, agreement) for t in grid], style,
                        color=color, label=f"{row['name']}, {bound}")
        ax.set_title(f"L = {L:g} (sigma = {2.5373 * L:.3f})")
        ax.set_xlabel("L2 radius (pixels in [0, 1])")
        ax.set_ylabel(("certified agreement" if agreement else "certified accuracy") + " (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"), help="where natural-images.md and .png go")
    p.add_argument("--work", default="runs/reproduce-natural-images", help="certify folders (resumable)")
    p.add_argument("--data", default=str(DEV), help="the ImageNet tree whose --class-split val half is measured")
    p.add_argument("--n0", type=int, default=100, help="selection draws (default 100)")
    p.add_argument("--n", type=int, default=1000, help="estimation draws (default 1000)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--skip", type=int, default=1, help="every skip-th validation photo (default all)")
    p.add_argument("--max", type=int, default=None, help="at most this many validation photos")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast of the noisy draws")
    p.add_argument("--batch-size", type=int, default=100, help="noisy draws per forward pass")
    p.add_argument("--front-end", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="measure these front-ends instead of the shipped ones (L read from the config; repeatable)")
    p.add_argument("--report", default="natural-images", help="name of the .md and .png (default natural-images)")
    p.add_argument("--only", choices=["val", "photos"], default=None, help="one of the two data sets")
    p.add_argument("--quick", action="store_true", help="2 validation photos, 2 bundled ones, few draws (a smoke run)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n0, args.n, args.max = 5, 10, 2
    load_start = os.getloadavg()
    classifier = load_classifier(CLASSIFIER)
    size, crop_pct = classifier.prep.input_size[-1], classifier.prep.crop_pct
    named = dict(SHIPPED)
    if args.front_end:
        named = dict(item.partition("=")[::2] for item in args.front_end)
        if not all(named.values()):
            raise SystemExit(f"--front-end takes NAME=CHECKPOINT, got {args.front_end}")
    data = {}
    if args.only in (None, "val"):
        data["val"] = ImageNetFolder(args.data, size, crop_pct, class_split="val")
    if args.only in (None, "photos"):
        data["photos"] = Unlabeled(SamplePhotos(size, crop_pct))
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    results = {name: [] for name in data}
    ends = front_ends(named)
    bar = tqdm(total=len(ends) * len(data), desc="natural images: front-ends x data sets", unit="run",
               dynamic_ncols=True, file=sys.stderr, disable=args.quiet)
    for (name, L), checkpoint in ends.items():
        model, macs = build(classifier, checkpoint, L)
        prepare_for_sampling(model)
        alone = timed_draws_per_s(model, next(iter(data.values()))[0][0], autocast, 20 if args.quick else 300,
                                  progress=not args.quiet)
        for data_name, dataset in data.items():
            quick_photos = 2 if args.quick and data_name == "photos" else None
            settings = CertifySettings(n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                                       skip=args.skip if data_name == "val" else 1,
                                       max=args.max if data_name == "val" else quick_photos,
                                       precision=args.precision, sources=(str(checkpoint), CLASSIFIER, data_name))
            folder = Path(args.work) / data_name / slug(f"L{L:g}-{name}")
            # PixelDP read as the work folder's run was (classical before the option), analytic for new ones
            settings = replace(settings, pixeldp_profile=resumed_pixeldp_profile(folder, None))
            if not args.quiet:  # tqdm.write: the same line on stdout, with the bars on stderr moved out of its way
                tqdm.write(f"{data_name}: L = {L:g}, {name}", file=sys.stdout)
                sys.stdout.flush()
            summary = certify_dataset(model, dataset, settings, folder, num_classes=1000, progress=not args.quiet,
                                      autocast_dtype=autocast)
            shown = checkpoint and (checkpoint.resolve().relative_to(ROOT) if checkpoint.resolve().is_relative_to(ROOT)
                                    else checkpoint)
            results[data_name].append({"name": name, "L": L, "records": read_records(folder / "certify.jsonl"),
                                       "draws_per_s": summary["draws_per_s"], "alone": alone, "macs": macs,
                                       "checkpoint": shown})
            bar.update()
    bar.close()
    write_report(args, results, load_start)
    return 0


def write_report(args, results, load_start) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads; load average {load_start[0]:.2f} at the start, "
               f"{os.getloadavg()[0]:.2f} at the end")
    command = "python tools/reproduce_natural_images.py" + "".join(
        f" {flag} {value}" for flag, value in (("--n0", args.n0), ("--n", args.n), ("--skip", args.skip),
                                               ("--max", args.max), ("--precision", args.precision))
        if value not in (None, 1) or flag in ("--n0", "--n")) + "".join(
        f" --front-end {shlex.quote(e)}" for e in args.front_end) + (
        f" --report {args.report}" if args.report != "natural-images" else "") + (
        f" --only {args.only}" if args.only else "")
    minutes = sum(r["time"] for rows in results.values() for row in rows for r in row["records"]) / 60
    sections = []
    if "val" in results:
        rows = results["val"]
        n = len(rows[0]["records"])
        undefended = sum(r["undefended_predict"] == r["label"] for r in rows[0]["records"]) / n
        figure(rows, out / f"{args.report}.png", f"{n} ImageNet photos of classes no front-end was trained on\n"
               f"n0 = {args.n0}, n = {args.n}, alpha = {args.alpha}; solid: smoothing, dashed: PixelDP", False)
        sections.append(f"""## The validation half of imagenet-samples-dev ({n} photos)

The classes at odd positions of the sorted classes present (index % 4 == 2: `--class-split val`), one photo each,
{f"every {args.skip}th of the 250" if args.skip > 1 else "all 250"}{f', at most {args.max}' if args.max else ''}; no
front-end was trained on them. Undefended EfficientNet-Lite0 top-1 on these photos: **{100 * undefended:.0f}%**.

{table(rows, agreement=False)}

![certified accuracy against the radius]({args.report}.png)
""")
    if "photos" in results:
        rows = results["photos"]
        n = len(rows[0]["records"])
        sections.append(f"""## The bundled photos ({n}, scikit-image)

Agreement with the undefended classifier's own prediction (the photos' labels are approximate): the
prediction equals the undefended one and is certified at >= r.

{table(rows, agreement=True)}
""")
    profiles = ", ".join(sorted({r.get("pixeldp_profile", "classical") for rows in results.values() for row in rows
                                 for r in row["records"]})) or "-"
    text = f"""# Natural images: front-ends before a frozen ImageNet classifier

Produced by `{command}` (certification: {minutes:.0f} min in all, summed over every row's images, resumed
parts included) on {machine}; date {time.strftime('%Y-%m-%d')}. Classifier: the frozen EfficientNet-Lite0
(`{CLASSIFIER}`, 224 x 224). Gaussian noise, eps = 1, delta = 0.05 (sigma = 2.5373 L); randomized smoothing:
n0 = {args.n0} selection and n = {args.n} estimation draws, alpha = {args.alpha} (with n = {args.n} the largest
radius any image can get is sigma Phi^-1(alpha^(1/n))); PixelDP: eta = 0.95, {profiles} profile
(docs/pixeldp-analytic.md). Noisy draws in {args.precision}.
Every front-end sees the same images and the same noise seeds. Draws/s: noisy forward passes of the whole stack
per second, during the certification run (slower whenever other jobs shared the CPU, as they did here for parts
of it) and measured alone just before the report (300 draws of one image, batch 100); GMACs per draw: the
front-end's post-noise network plus the classifier, at 224 x 224.

{chr(10).join(sections)}
Front-ends: {"; ".join(f"{row['name']}: `{row['checkpoint']}`" for row in next(iter(results.values()))
                       if row['checkpoint'])}.
"""
    (out / f"{args.report}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
