"""Measure adaptive (anytime-valid) certification against fixed-n certification on Fashion-MNIST.

For each auto-encoder and each requested radius R: the average number of noise draws per image
(selection draws included) and the certified accuracy at R (certified at R with the true class) of

* fixed n: Cohen et al.'s CERTIFY as ``dpae certify`` runs it (n0 = 100 selection draws with purpose
  "selection", n estimation draws with purpose "estimation", same seed: for the smallest N in
  --fixed-n the counts are exactly those of ``dpae certify --n0 100 --n N``; each larger N reuses
  them and adds N - N' fresh draws (purpose "estimation-extra-N'"), still N i.i.d. draws, so the
  time reported for it is cumulative);
* adaptive: :func:`dp_autoencoder.adaptive.certify_adaptive` at R with the same alpha.

Usage (the run reported in docs/adaptive.md):

    python tools/adaptive_sampling.py --autoencoders pretrained/fmnist-ae-L0.1 pretrained/fmnist-ae-L0.3 \\
        --classifier pretrained/fmnist-classifier --max 500 --radii 0.05 0.1 0.2 --alpha 0.001 \\
        --fixed-n 300 1000 --json runs/adaptive/results.json --doc docs/adaptive.md

--doc rewrites the block between the ``<!-- adaptive-results:begin -->`` and ``<!-- adaptive-results:end -->``
markers of that file with the table, the command, the runtime and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dp_autoencoder.adaptive import (DEFAULT_FUTILITY_BETA, DEFAULT_GROWTH, DEFAULT_N0, DEFAULT_N_MAX, DEFAULT_RATIO,
                                     DEFAULT_SLACK, certify_adaptive, plan, radius_threshold)
from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.certificates import smoothed_certify
from dp_autoencoder.classifiers import load_classifier
from dp_autoencoder.data import FashionMNIST
from dp_autoencoder.sampler import sample_votes
from dp_autoencoder.stack import DefendedClassifier

BEGIN, END = "<!-- adaptive-results:begin -->", "<!-- adaptive-results:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), "
            f"load average {load:.1f} at the end, torch {torch.__version__}, Python {platform.python_version()}")


def measure_autoencoder(path: str, args, x: torch.Tensor, labels: np.ndarray, indices: list[int], log,
                        bar=None) -> list[dict]:
    """``bar``: a progress bar advanced by one after each stage (selection, each fixed n, each radius), outside
    the timed regions."""
    step = bar.update if bar is not None else (lambda: None)
    autoencoder, config = load_autoencoder(path)
    model = DefendedClassifier(autoencoder, load_classifier(args.classifier)).eval()
    size = tuple(x.shape[-2:])
    noise = model.noise
    sensitivity = model.sensitivity(size)
    num_classes = args.num_classes
    with torch.inference_mode():
        z = torch.cat([model.pre_noise(x[i:i + 256]) for i in range(0, len(x), 256)])
    common = dict(num_classes=num_classes, image_size=size, seed=args.seed, batch_size=args.batch_size)
    name = Path(path).name
    rows = []

    t0 = time.perf_counter()
    selection = sample_votes(model, z, indices, args.fixed_n0, purpose="selection", **common).counts.numpy()
    t_sel = time.perf_counter() - t0
    step()
    fixed = {}
    est, prev, seconds = 0, 0, t_sel
    for n in sorted(args.fixed_n):
        # the smallest n: exactly `dpae certify --n0 100 --n N`'s draws; a larger n adds fresh draws to them
        t0 = time.perf_counter()
        purpose = "estimation" if prev == 0 else f"estimation-extra-{prev}"
        est = est + sample_votes(model, z, indices, n - prev, purpose=purpose, **common).counts.numpy()
        seconds += time.perf_counter() - t0
        prev = n
        certs = [smoothed_certify(selection[i], est[i], args.alpha, noise.kind, noise.scale, sensitivity)
                 for i in range(len(indices))]
        fixed[n] = (certs, seconds)
        log(f"{name}: fixed n0={args.fixed_n0} n={n}: {seconds:.1f} s")
        step()

    for R in args.radii:
        t = radius_threshold(R, noise.kind, noise.scale, sensitivity)
        look_plan = plan(args.alpha, t, args.n_max, args.n_first, args.growth, args.ratio, args.slack)
        t0 = time.perf_counter()
        res = certify_adaptive(model, z, indices, size, num_classes, R, noise=noise.kind, scale=noise.scale,
                               sensitivity=sensitivity, alpha=args.alpha, n0=args.n0, n_max=args.n_max,
                               n_first=args.n_first, growth=args.growth, ratio=args.ratio, slack=args.slack,
                               futility=args.futility, futility_beta=args.futility_beta, seed=args.seed,
                               batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        adaptive_ok = np.array([r.certified and r.predict == labels[i] for i, r in enumerate(res)])
        draws = np.array([r.draws for r in res])
        row = {
            "autoencoder": path, "name": name, "L": noise.L, "sigma": noise.scale, "sensitivity": sensitivity,
            "radius": R, "threshold": t, "images": len(indices), "alpha": args.alpha,
            "plan": {"sizes": look_plan.sizes, "alphas": look_plan.alphas, "needed": look_plan.needed},
            "adaptive": {
                "mean_draws": float(draws.mean()), "median_draws": float(np.median(draws)),
                "certified_accuracy": float(adaptive_ok.mean()), "seconds": seconds,
                "stopped_at_first_look": float(np.mean([r.looks == 1 for r in res])),
                "reached_n_max": float(np.mean([r.n == args.n_max for r in res])),
                "stops": {s: int(sum(r.stop == s for r in res)) for s in ("certified", "futility", "curtailed", "last-look")},
                "certified_any_class": float(np.mean([r.certified for r in res])),
            },
            "fixed": {},
        }
        for n, (certs, fixed_seconds) in fixed.items():
            ok = np.array([c.predict == labels[i] and c.radius >= R for i, c in enumerate(certs)])
            row["fixed"][str(n)] = {
                "draws": args.fixed_n0 + n, "certified_accuracy": float(ok.mean()), "seconds": fixed_seconds,
                "only_fixed": int(np.sum(ok & ~adaptive_ok)), "only_adaptive": int(np.sum(adaptive_ok & ~ok)),
            }
        row["per_image"] = [r.to_json() for r in res]
        rows.append(row)
        f300 = row["fixed"].get(str(args.fixed_n[0]), {})
        log(f"{name} R={R}: adaptive {draws.mean():.1f} draws/image, certified acc {adaptive_ok.mean():.3f} "
            f"(fixed n={args.fixed_n[0]}: {f300.get('certified_accuracy', float('nan')):.3f}), {seconds:.1f} s")
        step()
    return rows


def table(rows: list[dict], args) -> str:
    first, *rest = [str(n) for n in args.fixed_n]
    head = ["auto-encoder", "R", "t(R)", "adaptive draws/image", f"fixed {args.fixed_n0}+{first}",
            f"reduction vs n={first}"] + [f"reduction vs n={n}" for n in rest] + \
           ["cert. acc. adaptive", f"cert. acc. fixed n={first}", "difference (points)"] + \
           [f"cert. acc. fixed n={n}" for n in rest] + ["stopped at 1st look", "time adaptive / fixed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a = r["adaptive"]
        f0 = r["fixed"][first]
        cells = [r["name"], f"{r['radius']:g}", f"{r['threshold']:.3f}", f"{a['mean_draws']:.1f}", str(f0["draws"]),
                 f"{f0['draws'] / a['mean_draws']:.2f}x"]
        cells += [f"{r['fixed'][n]['draws'] / a['mean_draws']:.2f}x" for n in rest]
        cells += [f"{a['certified_accuracy']:.3f}", f"{f0['certified_accuracy']:.3f}",
                  f"{100 * (a['certified_accuracy'] - f0['certified_accuracy']):+.1f}"]
        cells += [f"{r['fixed'][n]['certified_accuracy']:.3f}" for n in rest]
        cells += [f"{a['stopped_at_first_look']:.2f}", f"{a['seconds']:.1f} s / {f0['seconds']:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    mean_draws = np.mean([r["adaptive"]["mean_draws"] for r in rows])
    lines.append("")
    lines.append(f"Mean over the {len(rows)} settings: {mean_draws:.1f} draws per image "
                 f"({(args.fixed_n0 + args.fixed_n[0]) / mean_draws:.2f}x fewer than fixed n0={args.fixed_n0}, "
                 f"n={first}); largest certified-accuracy loss vs n={first}: "
                 f"{min(100 * (r['adaptive']['certified_accuracy'] - r['fixed'][first]['certified_accuracy']) for r in rows):+.1f} points.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autoencoders", nargs="+", default=["pretrained/fmnist-ae-L0.1", "pretrained/fmnist-ae-L0.3"])
    p.add_argument("--classifier", default="pretrained/fmnist-classifier")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--max", type=int, default=500, help="the first MAX test images")
    p.add_argument("--radii", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--fixed-n0", type=int, default=100)
    p.add_argument("--fixed-n", type=int, nargs="+", default=[300, 1000])
    p.add_argument("--n0", type=int, default=DEFAULT_N0, help="adaptive selection draws")
    p.add_argument("--n-max", type=int, default=DEFAULT_N_MAX)
    p.add_argument("--n-first", type=int, default=None, help="first look (default: from the threshold)")
    p.add_argument("--growth", type=float, default=DEFAULT_GROWTH, help="ratio of consecutive look sizes")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO, help="alpha_k ratio between consecutive looks")
    p.add_argument("--slack", type=int, default=DEFAULT_SLACK, help="stray votes the first look tolerates")
    p.add_argument("--futility", default="reach", choices=("reach", "threshold", "none"))
    p.add_argument("--futility-beta", type=float, default=DEFAULT_FUTILITY_BETA)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", default=None, help="write every number and per-image result here")
    p.add_argument("--doc", default=None, help="rewrite the results block of this markdown file")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr; the table to stdout)")
    args = p.parse_args(argv)
    quiet = vars(args).pop("quiet")  # not a setting: the JSON's "settings" stay as they were
    args.fixed_n = sorted(args.fixed_n)
    torch.set_num_threads(args.threads)

    def log(msg):  # tqdm.write: the same line on stderr, with the bar moved out of its way
        tqdm.write(msg, file=sys.stderr)
        sys.stderr.flush()

    t_start = time.perf_counter()
    data = FashionMNIST("test", args.data_root)
    indices = list(range(min(args.max, len(data))))
    x = torch.stack([data[i][0] for i in indices])
    labels = np.array([int(data[i][1]) for i in indices])
    rows = []
    stages = 1 + len(args.fixed_n) + len(args.radii)  # selection draws, each fixed n, each radius (adaptive)
    bar = tqdm(total=len(args.autoencoders) * stages, desc="adaptive sampling: auto-encoders x stages", unit="stage",
               dynamic_ncols=True, file=sys.stderr, disable=quiet)
    for path in args.autoencoders:
        bar.set_postfix(autoencoder=Path(path).name)
        rows += measure_autoencoder(path, args, x, labels, indices, log, bar)
    bar.close()
    seconds = time.perf_counter() - t_start
    command = "python tools/adaptive_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = table(rows, args)
    print(summary)
    where = machine()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command, "seconds": seconds, "machine": where,
                                               "settings": vars(args), "rows": rows}, indent=1))
    if args.doc:
        doc = Path(args.doc)
        text = doc.read_text()
        block = (f"{BEGIN}\nCommand: `{command}`  \nRuntime: {seconds / 60:.1f} min on {where}.\n\n"
                 f"{summary}\n{END}")
        new, count = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        if count != 1:
            raise SystemExit(f"{doc} must hold exactly one {BEGIN} ... {END} block")
        doc.write_text(new)
        log(f"wrote the table into {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
