"""Score photo front-ends in minutes with the development metric of `dp_autoencoder.screening`: per photo the
vote share of the label and of the undefended prediction over a few dozen seeded draws, summarised as the share
of photos whose vote share clears the level that r = 0, 0.25, 0.5, ... needs, with a Wilson 95% interval.

Not a certificate: use it to choose recipes, then confirm the chosen front-ends with the full certification
(`tools/reproduce_natural_images.py`, n = 1000).  Every front-end of one noise scale sees the same photos and
the same noise seeds; "no front-end (noise on pixels)" is scored beside each noise scale present.

Resumable: each front-end's rows go to WORK/<slug>.jsonl, keyed by (checkpoint sha, draws, seed, data);
rerun the same command to continue or to add front-ends.

Examples:
  python tools/screen_frontends.py                                      # the shipped photo front-ends, 250 photos
  python tools/screen_frontends.py --front-end mine=runs/train/x --draws 32 --precision bf16
  python tools/screen_frontends.py --front-end a=runs/a --front-end b=runs/b --skip 10 --out runs/screen.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dp_autoencoder.autoencoder import NoiseConfig, load_autoencoder  # noqa: E402
from dp_autoencoder.checkpoint import sha256_file  # noqa: E402
from dp_autoencoder.classifiers import load_classifier  # noqa: E402
from dp_autoencoder.data import dataset_fingerprint  # noqa: E402
from dp_autoencoder.imagenet import ImageNetFolder  # noqa: E402
from dp_autoencoder.sampler import prepare_for_sampling  # noqa: E402
from dp_autoencoder.screening import measure_vote_shares, paired_difference, summarize_shares  # noqa: E402
from dp_autoencoder.pipeline import DefendedClassifier, InputNoiseClassifier  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"
BASELINE = "no front-end (noise on pixels)"
SHIPPED = {"natural-ae-L0.1": ROOT / "pretrained" / "natural-ae-L0.1",
           "natural-ae-L0.3": ROOT / "pretrained" / "natural-ae-L0.3"}
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text).strip("-").lower()


def parse_front_ends(specs) -> dict:
    named = {}
    for spec in specs:
        if "=" not in spec:
            raise SystemExit(f"--front-end takes NAME=CHECKPOINT, got {spec!r}")
        name, path = spec.split("=", 1)
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"--front-end {name}: {path} is not a checkpoint folder (no config.json)")
        named[name] = Path(path)
    return named


def noise_of(path: Path) -> NoiseConfig:
    n = json.loads((path / "config.json").read_text())["noise"]
    return NoiseConfig(n["kind"], n["L"], n["eps"], n["delta"])


def read_rows(path: Path, key: dict) -> dict:
    """idx -> row of a previous run with the same key; a file with another key is refused."""
    if not path.exists():
        return {}
    rows = {}
    for number, line in enumerate(path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a partial last line (a kill mid-write)
        if number == 0:
            if record != {"key": key}:
                raise SystemExit(f"{path} holds a screening with other settings ({record.get('key')} vs {key}); "
                                 "use another --work")
            continue
        rows[record["idx"]] = record
    return rows


def screen(name, model, classifier, dataset, indices, args, key, work: Path, autocast) -> list[dict]:
    path = work / f"{slug(name)}.jsonl"
    done = read_rows(path, key)
    todo = [i for i in indices if i not in done]
    if not path.exists():
        path.write_text(json.dumps({"key": key}) + "\n")
    model.eval()
    prepare_for_sampling(model)
    t0 = time.perf_counter()
    with open(path, "a") as f, tqdm(total=len(indices), initial=len(indices) - len(todo), desc=name[:40],
                                   unit="photo", dynamic_ncols=True, file=sys.stderr, disable=args.quiet) as bar:
        for start in range(0, len(todo), args.images_per_step):
            chunk = todo[start:start + args.images_per_step]
            images = torch.stack([dataset[i][0] for i in chunk]).to(args.device)
            labels = [dataset.labels[i] for i in chunk]
            rows = measure_vote_shares(model, classifier, images, labels, args.draws, args.seed,
                                       batch_size=args.batch_size, autocast_dtype=autocast, indices=chunk)
            for i, row in zip(chunk, rows):
                done[i] = row
                f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(len(chunk))
    if todo and not args.quiet:
        tqdm.write(f"{name}: {len(todo)} photos in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return [done[i] for i in indices]


def report(results, args, dataset_desc: str) -> tuple[str, dict]:
    head = " | ".join(f"r = {r:g}" for r in RADII)
    lines = [f"| L | front-end | what | {head} | mean plug-in radius |",
             "|---|---|---|" + "---|" * (len(RADII) + 1)]
    as_json = []
    for res in results:
        for what, field in (("accuracy", "share_label"), ("agreement", "share_undefended")):
            shares = [r[field] if r[field] is not None else 0.0 for r in res["rows"]]
            s = summarize_shares(shares, args.draws, RADII, res["noise"].kind, res["noise"].scale, res["sensitivity"],
                                 n=args.project_n, alpha=args.alpha)
            cells = " | ".join(f"{100 * p:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
                               for p, (lo, hi) in zip(s.shares, s.intervals))
            lines.append(f"| {res['noise'].L:g} | {res['name']} | {what} | {cells} | "
                         f"{s.mean_radius:.3f} +- {s.mean_radius_se:.3f} |")
            as_json.append({"name": res["name"], "L": res["noise"].L, "sigma": res["noise"].scale, "what": what,
                            "sensitivity": res["sensitivity"],
                            "checkpoint": res["checkpoint"], "seconds": res["seconds"], **s.to_json()})
    if args.reference:
        ref = next((res for res in results if res["name"] == args.reference), None)
        if ref is None:
            raise SystemExit(f"--reference {args.reference!r} is not among the front-ends scored")
        lines += ["", f"Paired against {args.reference} (same photos, same noise; accuracy; plug-in radii): mean radius "
                      "difference +- its paired standard error, and photos gained / lost at r = 0.25 and 0.5.", "",
                  "| front-end | mean radius difference | r = 0.25 gained / lost | r = 0.5 gained / lost |",
                  "|---|---|---|---|"]
        base = [r["share_label"] or 0.0 for r in ref["rows"]]
        for res in results:
            if res is ref or res["noise"] != ref["noise"]:
                continue
            mine = [r["share_label"] or 0.0 for r in res["rows"]]
            d = [paired_difference(mine, base, args.draws, r, res["noise"].kind, res["noise"].scale, res["sensitivity"])
                 for r in (0.25, 0.5)]
            lines.append(f"| {res['name']} | {d[0]['mean_radius_difference']:+.4f} +- {d[0]['se']:.4f} | "
                         f"{d[0]['gained']} / {d[0]['lost']} | {d[1]['gained']} / {d[1]['lost']} |")
            as_json.append({"name": res["name"], "paired_against": args.reference, "what": "paired", "pairs": d})
    undefended = sum(r["undefended"] == r["label"] for r in results[0]["rows"]) / len(results[0]["rows"])
    levels = ("plug-in: the vote share itself must clear Phi(r / sigma)" if args.project_n is None else
              f"projected to a certification at n = {args.project_n}, alpha = {args.alpha}: the vote share must be "
              "one whose Clopper-Pearson lower bound clears Phi(r / sigma)")
    text = "\n".join([
        f"Screening ({args.draws} draws per photo, seed {args.seed}, {args.precision}; {levels}) on {dataset_desc}.",
        f"Undefended top-1 on these photos: {100 * undefended:.1f}%. Cells: share of photos [Wilson 95%].", "",
        *lines, ""])
    return text, {"settings": {k: v for k, v in vars(args).items() if k not in ("front_end",)},
                  "undefended_accuracy": undefended, "rows": as_json}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--front-end", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="a front-end to score (repeatable; default: the shipped natural-ae-L0.1 and -L0.3)")
    p.add_argument("--reference", default=None, metavar="NAME",
                   help="also compare every front-end of the same noise with this one, paired (default: none)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-front-end baseline (default: scored)")
    p.add_argument("--data", default=str(DEV), help="ImageNet synset tree (default: %(default)s)")
    p.add_argument("--class-split", default="val", choices=("train", "val"),
                   help="half of the classes (default: %(default)s, the one no front-end was trained on)")
    p.add_argument("--skip", type=int, default=1, help="every SKIP-th photo (default: %(default)s)")
    p.add_argument("--max", type=int, default=None, help="at most this many photos (default: all)")
    p.add_argument("--draws", type=int, default=32, help="noise draws per photo (default: %(default)s)")
    p.add_argument("--project-n", type=int, default=None,
                   help="raise each level to what a certification at N draws would need (default: plug-in)")
    p.add_argument("--alpha", type=float, default=0.001, help="with --project-n (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    p.add_argument("--classifier", default="efficientnet_lite0-offline", help="frozen classifier (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s; CUDA draws other noise)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="autocast of the draws (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="draws per forward (default: %(default)s)")
    p.add_argument("--images-per-step", type=int, default=8, help="photos per progress step (default: %(default)s)")
    p.add_argument("--work", default="runs/screen", help="cache of per-photo rows (default: %(default)s)")
    p.add_argument("--out", default=None, help="write the Markdown table here (and the JSON beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.draws < 2 or args.skip < 1 or (args.max is not None and args.max < 1):
        p.error("--draws must be >= 2, --skip and --max >= 1")
    named = parse_front_ends(args.front_end) if args.front_end else dict(SHIPPED)
    torch.set_grad_enabled(False)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    classifier = load_classifier(args.classifier).eval().to(args.device)
    dataset = ImageNetFolder(args.data, image_size=classifier.prep.input_size[-1], class_split=args.class_split)
    indices = list(range(0, len(dataset), args.skip))[:args.max]
    # The photos by their files (relative names, sizes, labels), not by where they lie: a cache moves with them.
    data_key = dataset_fingerprint(dataset)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    entries = []  # (name, noise, checkpoint or None)
    noises = {name: noise_of(path) for name, path in named.items()}
    for L in sorted({n.L for n in noises.values()}):
        if not args.no_baseline:
            noise = next(n for n in noises.values() if n.L == L)
            entries.append((f"{BASELINE} L{L:g}", noise, None))
        entries += [(name, noises[name], named[name]) for name in named if noises[name].L == L]
    results = []
    for name, noise, path in entries:
        if path is None:
            model, sha = InputNoiseClassifier(classifier, noise), None
        else:
            autoencoder, _ = load_autoencoder(path, map_location=args.device)
            model, sha = DefendedClassifier(autoencoder, classifier), sha256_file(path / "config.json")
        key = {"checkpoint": sha, "noise": [noise.kind, noise.scale], "classifier": args.classifier,
               "draws": args.draws, "seed": args.seed, "precision": args.precision,
               # CUDA generators draw other noise than the CPU's: rows from another device type are not reused.
               **({"device": torch.device(args.device).type} if torch.device(args.device).type != "cpu" else {}),
               "data": data_key, "class_split": args.class_split}
        t0 = time.perf_counter()
        rows = screen(name, model, classifier, dataset, indices, args, key, work, autocast)
        # Delta of the pre-noise map at the screening size (1 for noise on the image): radii are over Delta.
        sensitivity = float(model.sensitivity(tuple(dataset[0][0].shape[-2:])))
        results.append({"name": name, "noise": noise, "sensitivity": sensitivity,
                        "checkpoint": str(path) if path else None, "rows": rows,
                        "seconds": time.perf_counter() - t0})
    desc = f"{len(indices)} photos of the {args.class_split} half of {args.data}"
    text, as_json = report(results, args, desc)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(as_json, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
