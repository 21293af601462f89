"""Reproduce the paper's section IV on Fashion-MNIST, end to end on the CPU, into docs/results.

Uses the shipped models (pretrained/: the frozen classifier, the PixelDP auto-encoders at L = 0.1, 0.3,
1.0, the L = 0.3 auto-encoder trained with the stability loss, and the classifier retrained with the
L = 0.3 noise; each model card holds the command that trained it) and writes
docs/results/fashion-mnist.md with its PNG figures:

  - clean accuracy (the paper's Table II): undefended, and stacked at each L;
  - certified accuracy against the radius T for each L, both bounds (Fig. 2);
  - accuracy under PGD-L2 and PGD-Linf with expectation over noise against the budget (Fig. 3);
  - robust precision and certified fraction under attack at T = 0.05 and 0.1 (Fig. 5);
  - the side by side at the L = 0.3 noise: noise on the input of the frozen classifier, the auto-encoder
    trained on reconstruction, the auto-encoder with the stability objective, and (a ceiling only) a
    classifier retrained with that noise; same certifier, same sigma;
  - the soundness audit's counts;
  - the PixelDP column read with both privacy profiles, classical and analytic (docs/pixeldp-analytic.md),
    from the same votes.

Every stage writes into --work and is skipped when its result is there (certification resumes image by
image), so an interrupted run continues where it stopped.

Examples:
  python tools/reproduce_fashion_mnist.py                  # the full run (under an hour on a 2-core CPU)
  python tools/reproduce_fashion_mnist.py --quick --out /tmp/r --work /tmp/w   # a smoke run (CI)
  python tools/reproduce_fashion_mnist.py --profiles-only   # certification + the profile table only (~9 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dp_autoencoder.attacks import AttackSettings, attack_dataset
from dp_autoencoder.audit import AuditSettings, audit_certified
from dp_autoencoder.autoencoder import load_autoencoder
from dp_autoencoder.certificates import PIXELDP_PROFILES
from dp_autoencoder.certify import CertifySettings, certify_dataset, read_records, recompute_record, resumed_pixeldp_profile
from dp_autoencoder.classifiers import load_classifier
from dp_autoencoder.data import FashionMNIST
from dp_autoencoder.stack import DefendedClassifier, InputNoiseClassifier

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"
CLASSIFIER = "fmnist-classifier"
NOISE_CLASSIFIER = "fmnist-classifier-noise-L0.3"
AUTOENCODERS = {"L = 0.1": "fmnist-ae-L0.1", "L = 0.3": "fmnist-ae-L0.3", "L = 1.0": "fmnist-ae-L1.0"}
STABILITY_AE = "fmnist-ae-L0.3-stability"
# The side by side, all at the L = 0.3 construction's sigma.
COMPARISON = {
    "noise on the input, frozen classifier (no auto-encoder)": ("input-noise", CLASSIFIER),
    "PixelDP auto-encoder, reconstruction only": ("fmnist-ae-L0.3", CLASSIFIER),
    "PixelDP auto-encoder + stability loss": (STABILITY_AE, CLASSIFIER),
    "classifier retrained with the noise (ceiling; not a frozen model)": ("input-noise", NOISE_CLASSIFIER),
}
BUDGETS = {"l2": (0.0, 0.5, 1.0, 2.0), "linf": (0.0, 0.02, 0.05, 0.1)}
THRESHOLDS = (0.05, 0.1)
CERT_RADII = tuple(np.round(np.arange(0, 1.5001, 0.025), 3))
TABLE_RADII = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def stack(autoencoder: str, classifier: str):
    clf = load_classifier(str(PRETRAINED / classifier))
    if autoencoder == "input-noise":
        noise = load_autoencoder(PRETRAINED / "fmnist-ae-L0.3")[0].noise
        return InputNoiseClassifier(clf, noise)
    return DefendedClassifier(load_autoencoder(PRETRAINED / autoencoder)[0], clf)


def certified_curve(records: list[dict], key: str, correct_key: str, radii=CERT_RADII) -> list[float]:
    n = max(len(records), 1)
    return [sum(1 for r in records if r[correct_key] and r[key] > 0 and r[key] >= t) / n for t in radii]


def certify_stage(name: str, model, dataset, args, progress: bool) -> list[dict]:
    out = Path(args.work) / "certify" / name
    settings = CertifySettings(n0=args.n0, n=args.n, max=args.images, seed=args.seed,
                               sources=(name, "fashion-mnist"),
                               pixeldp_profile=resumed_pixeldp_profile(out, args.pixeldp_profile))
    certify_dataset(model, dataset, settings, out, num_classes=10, progress=progress)
    return read_records(out / "certify.jsonl")


def attack_stage(name: str, model, dataset, norm: str, args, progress: bool) -> dict:
    settings = AttackSettings(norm=norm, budgets=BUDGETS[norm], steps=args.attack_steps, eot=args.eot,
                              loss="margin", n0=args.n0, n=args.n, max=args.attack_images, seed=args.seed,
                              images_per_step=32, sources=(name, "fashion-mnist"))
    return attack_dataset(model, dataset, settings, Path(args.work) / "attack" / f"{name}-{norm}", num_classes=10,
                          progress=progress)


def audit_stage(name: str, model, dataset, records: list[dict], args, progress: bool) -> dict:
    settings = AuditSettings(bounds=("smoothing", "pixeldp"), steps=args.attack_steps, restarts=1, eot=args.eot,
                             loss="margin", n_select=100, n=args.audit_draws, max=args.audit_images, seed=args.seed,
                             sources=(name, "fashion-mnist"))
    return audit_certified(model, dataset, records, settings, Path(args.work) / "audit" / name, num_classes=10,
                           progress=progress)


def profile_rows(records: dict[str, list[dict]]) -> list[list[str]]:
    """PixelDP certified accuracy at TABLE_RADII with each profile, from the same votes (no model run)."""
    rows = []
    for name, r in records.items():
        curves = {p: certified_curve([recompute_record(x, pixeldp_profile=p) for x in r], "pixeldp_size",
                                     "pixeldp_correct", TABLE_RADII) for p in PIXELDP_PROFILES}
        rows += [[name, p] + [fmt(v) for v in c] for p, c in curves.items()]
        rows.append([name, "gain (points)"] + [f"{100 * (a - c):+.1f}" for c, a in zip(*curves.values())])
    return rows


def profiles_of(records: dict[str, list[dict]]) -> str:
    return ", ".join(sorted({x.get("pixeldp_profile", "classical") for r in records.values() for x in r}))


def profile_table(records: dict[str, list[dict]]) -> str:
    return table(["model", "PixelDP profile"] + [f"T = {t:g}" for t in TABLE_RADII], profile_rows(records))


def fmt(x: float) -> str:
    return f"{100 * x:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def plot_certified(curves: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(CERT_RADII, c["smoothing"], color=color, label=f"{name}, smoothing")
        if "pixeldp" in c:
            ax.plot(CERT_RADII, c["pixeldp"], color=color, linestyle="--", label=f"{name}, PixelDP")
    ax.set_xlabel("radius T (L2, [0, 1] pixels)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, CERT_RADII[-1])
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attacks(attacks: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, norm in zip(axes, BUDGETS):
        budgets = list(BUDGETS[norm])
        first = next(iter(attacks.values()))[norm]["budgets"]
        ax.plot(budgets, [b["undefended_accuracy"] for b in first.values()], "k-o", label="undefended")
        for i, (name, by_norm) in enumerate(attacks.items()):
            rows = list(by_norm[norm]["budgets"].values())
            ax.plot(budgets, [b["defended_accuracy"] for b in rows], f"C{i}-o", label=f"{name} (majority of n)")
        ax.set_xlabel(f"PGD-{norm.upper()} budget")
        ax.set_ylabel("accuracy under attack")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Fashion-MNIST: accuracy under attack with expectation over noise (Fig. 3)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_robust_precision(attacks: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(BUDGETS["l2"])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for row, T in enumerate(THRESHOLDS):
        for col, metric in enumerate(("robust_precision", "certified_fraction")):
            ax = axes[row][col]
            for i, (name, by_norm) in enumerate(attacks.items()):
                rows = list(by_norm["l2"]["budgets"].values())
                for bound, style in (("smoothing", "-o"), ("pixeldp", "--s")):
                    ys = [b[bound][f"{T:g}"][metric] for b in rows]
                    ax.plot(budgets, [np.nan if y is None else y for y in ys], f"C{i}{style}",
                            label=f"{name}, {'smoothing' if bound == 'smoothing' else 'PixelDP'}")
            ax.set_title(f"{metric.replace('_', ' ')} at T = {T:g}")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("PGD-L2 budget")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Fashion-MNIST: robust precision and certified fraction under PGD-L2 (Fig. 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"), help="where fashion-mnist.md and its figures go")
    p.add_argument("--work", default="runs/reproduce-fashion-mnist", help="intermediate results (resumable)")
    p.add_argument("--images", type=int, default=500, help="test images to certify (default 500)")
    p.add_argument("--n0", type=int, default=100, help="selection draws (default 100)")
    p.add_argument("--n", type=int, default=300, help="estimation draws (default 300, the paper's)")
    p.add_argument("--attack-images", type=int, default=100, help="test images attacked at each budget (default 100)")
    p.add_argument("--attack-steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--eot", type=int, default=8, help="noise draws averaged per gradient step (default 8)")
    p.add_argument("--audit-images", type=int, default=50,
                   help="certified images audited per auto-encoder, each under both bounds (default 50)")
    p.add_argument("--audit-draws", type=int, default=500, help="fresh draws testing each audited image (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: 8 images, few draws and attack steps")
    p.add_argument("--pixeldp-profile", choices=PIXELDP_PROFILES, default=None,
                   help="PixelDP profile of the certification tables (default: a work folder's own, classical for "
                        "folders from before the option, else analytic); the profile table shows both anyway")
    p.add_argument("--profiles-only", action="store_true",
                   help="only certify the L = 0.1 / 0.3 / 1.0 stacks and print the classical-vs-analytic PixelDP table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.n0, args.n = 8, 10, 20
        args.attack_images, args.attack_steps, args.eot, args.audit_images, args.audit_draws = 4, 3, 2, 2, 50
    out = Path(args.out)
    figures = out / "fashion-mnist"
    figures.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    dataset = FashionMNIST("test")
    progress = not args.quiet

    # --- certification: each L, both bounds ----------------------------------------------
    records = {name: certify_stage(folder, stack(folder, CLASSIFIER), dataset, args, progress)
               for name, folder in AUTOENCODERS.items()}
    if args.profiles_only:
        print(f"PixelDP certified accuracy (%), first {len(next(iter(records.values())))} test images, "
              f"n0 = {args.n0}, n = {args.n}, eta = 0.95, from the votes in {args.work}/certify:\n{profile_table(records)}")
        return 0
    comparison = {}
    for name, (ae, clf) in COMPARISON.items():
        tag = ae if clf == CLASSIFIER else f"{ae}+{clf}"  # the L = 0.3 stack is certified once, above
        comparison[name] = certify_stage(tag, stack(ae, clf), dataset, args, progress)

    curves = {name: {"smoothing": certified_curve(r, "radius", "correct"),
                     "pixeldp": certified_curve(r, "pixeldp_size", "pixeldp_correct")} for name, r in records.items()}
    plot_certified(curves, figures / "certified-accuracy.png", "Fashion-MNIST: certified accuracy (Fig. 2)")
    side = {name: {"smoothing": certified_curve(r, "radius", "correct")} for name, r in comparison.items()}
    plot_certified(side, figures / "side-by-side.png", "Same sigma (L = 0.3), same certifier")

    # --- attacks (Fig. 3 and 5) and the soundness audit ---------------------------------------
    attacks = {name: {norm: attack_stage(folder, stack(folder, CLASSIFIER), dataset, norm, args, progress)
                      for norm in BUDGETS} for name, folder in AUTOENCODERS.items()}
    plot_attacks(attacks, figures / "attacks.png")
    plot_robust_precision(attacks, figures / "robust-precision.png")
    audits = {name: audit_stage(folder, stack(folder, CLASSIFIER), dataset, records[name], args, progress)
              for name, folder in AUTOENCODERS.items() if name != "L = 1.0"}

    report = {"records": records, "comparison": comparison, "curves": curves, "attacks": attacks,
              "audits": audits, "args": vars(args)}
    write_report(out, report, time.time() - t_start)
    return 0


def write_report(out: Path, report: dict, seconds: float) -> None:
    records, args = report["records"], report["args"]
    first = next(iter(records.values()))
    undefended = sum(r["undefended_predict"] == r["label"] for r in first) / len(first)
    clean_rows = [["undefended classifier", fmt(undefended), fmt(undefended), "-"]]
    for name, r in records.items():
        n = len(r)
        clean_rows.append([f"stacked, {name}", fmt(sum(x["correct"] for x in r) / n),
                           fmt(sum(x["pixeldp_correct"] for x in r) / n),
                           fmt(sum(x["predict"] < 0 for x in r) / n)])
    cert_rows = []
    for name, r in records.items():
        for bound, key, ck in (("smoothing", "radius", "correct"), ("PixelDP", "pixeldp_size", "pixeldp_correct")):
            cert_rows.append([name, bound] + [fmt(v) for v in certified_curve(r, key, ck, TABLE_RADII)])
    side_rows = [[name, bound] + [fmt(v) for v in certified_curve(r, key, ck, TABLE_RADII)]
                 for name, r in report["comparison"].items()
                 for bound, key, ck in (("smoothing", "radius", "correct"), ("PixelDP", "pixeldp_size", "pixeldp_correct"))]
    attack_rows = {}
    for norm in BUDGETS:
        rows = []
        any_attack = next(iter(report["attacks"].values()))[norm]  # every stack's run attacks the same classifier
        rows.append(["undefended"] + [fmt(b["undefended_accuracy"]) for b in any_attack["budgets"].values()])
        for name, by_norm in report["attacks"].items():
            rows.append([f"{name}, majority of n"] + [fmt(b["defended_accuracy"]) for b in by_norm[norm]["budgets"].values()])
            rows.append([f"{name}, PREDICT (abstains)"]
                        + [fmt(b["defended_accuracy_predict"]) for b in by_norm[norm]["budgets"].values()])
        attack_rows[norm] = rows
    rp_rows = []
    for name, by_norm in report["attacks"].items():
        for key, b in by_norm["l2"]["budgets"].items():
            cells = [name, f"{b['budget']:g}"]
            for bound in ("smoothing", "pixeldp"):
                for T in THRESHOLDS:
                    m = b[bound][f"{T:g}"]
                    prec = "-" if m["robust_precision"] is None else fmt(m["robust_precision"])
                    cells.append(f"{prec} / {fmt(m['certified_fraction'])}")
            rp_rows.append(cells)
    audit_rows = []
    for name, summary in report["audits"].items():
        for bound, a in summary.items():
            audit_rows.append([name, bound, str(a["audited"]), str(a["violations"]), str(a["majority_changed"]),
                               f"{a['expected_false_certificates']:.3f}", f"{a['expected_false_alarms']:.3f}",
                               "-" if a["mean_distance"] is None else f"{a['mean_distance']:.3f}",
                               f"{a['p_value']:.3g}"])
    command = "python tools/reproduce_fashion_mnist.py" + (" --quick" if args["quick"] else "")
    text = f"""# Fashion-MNIST: the paper's section IV, reproduced

Produced by `{command}` in {seconds / 60:.1f} min on {machine()} (date: {time.strftime('%Y-%m-%d')}).
First {len(first)} test images; certification with n0 = {args['n0']}, n = {args['n']} draws, alpha = 0.001
(smoothing), eta = 0.95 (PixelDP, {profiles_of(records)} profile). Models: `pretrained/` (their cards say how each
was trained).

## Clean accuracy (the paper's Table II)

Accuracy in %; "smoothed" is Cohen's CERTIFY prediction (abstentions count as wrong), "majority" the
most voted class of the n draws (the paper's conventional accuracy).

{table(["model", "smoothed", "majority", "abstained"], clean_rows)}

## Certified accuracy against the radius T (Fig. 2)

![certified accuracy](fashion-mnist/certified-accuracy.png)

{table(["model", "bound"] + [f"T = {t:g}" for t in TABLE_RADII], cert_rows)}

## PixelDP: classical calibration against the exact privacy profile

The votes above read with both profiles (no model run; docs/pixeldp-analytic.md): "classical" reads the noise
through sigma = sqrt(2 ln(1.25/delta')) Delta L' / eps' (eps' <= 1), "analytic" through the Gaussian
mechanism's exact (eps', delta(eps')) profile (Balle & Wang 2018). Certified accuracy in %.

{profile_table(records)}

## Side by side at the same sigma (L = 0.3 construction); the figure shows the smoothing bound

![side by side](fashion-mnist/side-by-side.png)

{table(["defense", "bound"] + [f"T = {t:g}" for t in TABLE_RADII], side_rows)}

## Accuracy under attack (Fig. 3)

PGD with expectation over noise ({args['eot']} draws per step, {args['attack_steps']} steps, margin loss) on the
first {args['attack_images']} test images; the defended prediction on the attacked image is decided with
n0 + n = {args['n0']} + {args['n']} fresh draws. Accuracy in %.

![accuracy under attack](fashion-mnist/attacks.png)

PGD-L2:

{table(["model"] + [f"t = {t:g}" for t in BUDGETS["l2"]], attack_rows["l2"])}

PGD-Linf:

{table(["model"] + [f"t = {t:g}" for t in BUDGETS["linf"]], attack_rows["linf"])}

## Robust precision and certified fraction under PGD-L2 (Fig. 5)

Cells: robust precision / certified fraction in % (precision "-" when nothing is certified).

![robust precision](fashion-mnist/robust-precision.png)

{table(["model", "budget"] + [f"{b} T = {T:g}" for b in ("smoothing", "PixelDP") for T in THRESHOLDS], rp_rows)}

## Soundness audit

The first {args['audit_images']} certified images per auto-encoder, attacked at 0.999 x their certified size under
each bound (untargeted and targeted at the runner-up, the more damaging kept), then tested with
{args['audit_draws']} fresh draws; a violation is a significant breach (alpha = 0.001) of the certified statement.
"Expected" columns: what sound certificates would still produce by chance.

{table(["model", "bound", "audited", "violations", "majority changed", "expected false certificates",
        "expected false alarms", "mean attack distance", "p-value"], audit_rows)}
"""
    (out / "fashion-mnist.md").write_text(text)
    print(f"wrote {out / 'fashion-mnist.md'} in {seconds / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
