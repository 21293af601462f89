"""The soundness audit at scale: docs/results/audit.md and audit.json.

Every certified image of a set is attacked inside its certificate (``dpae audit``: PGD-L2 untargeted and
targeted at the runner-up, and Carlini-Wagner L2 scaled into the ball, all with expectation over the
noise; the most damaging on fresh draws is kept), then fresh draws test the certified statement.  Sets:

* Fashion-MNIST, L = 0.1 and 0.3 (pretrained/fmnist-ae-L0.1, -L0.3, pretrained/fmnist-classifier): the
  first ``--fmnist-images`` test images are certified (n0 100, n 300, fp32), then the first
  ``--fmnist-per-bound`` images certified by each bound are audited, one ``dpae audit --bounds`` run each;
* natural images: an existing ``dpae certify`` folder of ImageNet photos (``--natural-certify``; its
  run.json names the models and the precision), audited the same way with reduced attack settings
  (EfficientNet-Lite0 behind a U-Net costs ~0.1-0.3 s per draw on the 2-core CPU).

Everything runs through the ``dpae`` commands in this process, into ``--work`` (resumable: rerun the same
command).  The report is written from the audit.jsonl files as they stand, so an unfinished audit is
reported with the count it reached (and marked unfinished).  ``--report-only`` rewrites it without running.

    python tools/audit_at_scale.py                            # everything, in runs/audit-scale
    python tools/audit_at_scale.py --parts fmnist-L0.1        # one part (run parts in parallel)
    python tools/audit_at_scale.py --quick --work /tmp/a --out /tmp/a   # the reduced smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



def shipped(name: str) -> str:
    """A shipped checkpoint's path as seen from the working directory (pretrained/... when run from the root)."""
    return os.path.relpath(ROOT / "pretrained" / name)


FMNIST_AUTOENCODERS = {"0.1": "fmnist-ae-L0.1", "0.3": "fmnist-ae-L0.3"}
FMNIST_CLASSIFIER = "fmnist-classifier"
BOUNDS = ("smoothing", "pixeldp")
SIZE_KEY = {"smoothing": "radius", "pixeldp": "pixeldp_size"}
BOUND_NAMES = {"smoothing": "randomized smoothing", "pixeldp": "PixelDP"}

# Attack settings (dpae audit flags), sized for the shared 2-core CPU: a Fashion-MNIST draw (forward and
# backward) costs 1-10 ms there depending on the load, a photo draw 100-300x that.
FULL = {
    "fmnist": dict(steps=20, restarts=1, eot=4, cw_steps=20, cw_search_steps=2, n_select=50, n=500),
    "natural": dict(steps=5, restarts=1, eot=2, cw_steps=5, cw_search_steps=2, n_select=16, n=100),
}
QUICK = {
    "fmnist": dict(steps=2, restarts=1, eot=2, cw_steps=2, cw_search_steps=1, n_select=10, n=50),
    "natural": dict(steps=1, restarts=1, eot=1, cw_steps=1, cw_search_steps=1, n_select=4, n=20),
}


def dpae(*args) -> None:
    """Run a dpae command in this process; a non-zero exit stops the tool."""
    from dp_autoencoder.cli import main

    argv = [str(a) for a in args]
    print("$ dpae " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = main(argv)
    if code != 0:
        raise SystemExit(f"dpae {argv[0]} exited with {code}")


def read_jsonl(path: Path) -> list[dict]:
    from dp_autoencoder.certify import read_records

    return read_records(path)


def certified_counts(records: list[dict]) -> dict:
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    return {b: sum(r[SIZE_KEY[b]] > 0 for r in ok) for b in BOUNDS}


def audit_flags(settings: dict, bound: str, per_bound: int | None) -> list:
    flags = ["--bounds", bound, "--attacks", "pgd,cw", "--loss", "margin"]
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}", value]
    if per_bound is not None:
        flags += ["--max", per_bound]
    return flags


def run_audits(name: str, certify_dir: Path, models: list, settings: dict, per_bound: int | None, work: Path,
               quiet: bool, bounds=BOUNDS) -> None:
    for bound in bounds:
        dpae("audit", "--certify-dir", certify_dir, *models, *audit_flags(settings, bound, per_bound),
             "--device", "cpu", *(["--quiet"] if quiet else []), "--out", work / f"audit-{name}-{bound}")


def run_fmnist(L: str, args, settings: dict) -> None:
    work = Path(args.work)
    certify_dir = work / f"certify-fmnist-L{L}"
    models = ["--autoencoder", shipped(FMNIST_AUTOENCODERS[L]), "--classifier", shipped(FMNIST_CLASSIFIER)]
    draws = ["--n0", 10, "--n", 30] if args.quick else ["--n0", 100, "--n", 300]
    dpae("certify", *models, "--data", "fashion-mnist", "--max", args.fmnist_images, *draws, "--device", "cpu",
         *(["--quiet"] if args.quiet else []), "--out", certify_dir)
    run_audits(f"fmnist-L{L}", certify_dir, models, settings, args.fmnist_per_bound, work, args.quiet, args.bounds)


def natural_certify_dir(args) -> Path | None:
    """The photos' certify folder: the one given (finished: it has summary.json), or a tiny one (--quick)."""
    if args.natural_certify:
        d = Path(args.natural_certify)
        if not (d / "summary.json").is_file():
            print(f"{d} has no summary.json yet (its certify run has not finished): natural part skipped", flush=True)
            return None
        return d
    if not args.quick:
        raise SystemExit("the natural part needs --natural-certify (a finished dpae certify folder of photos)")
    d = Path(args.work) / "certify-natural-quick"
    dpae("certify", "--data", "samples", "--autoencoder", shipped("natural-ae-L0.1"), "--classifier",
         "efficientnet_lite0-offline", "--max", 2, "--n0", 5, "--n", 20, "--precision", "bf16", "--device", "cpu",
         *(["--quiet"] if args.quiet else []), "--out", d)
    return d


def natural_models(certify_dir: Path) -> list:
    names = json.loads((certify_dir / "run.json").read_text()).get("names") or {}
    autoencoder = names.get("autoencoder", shipped("natural-ae-L0.1"))
    if not Path(autoencoder).exists():  # recorded relative to where the certify ran (the repository root)
        autoencoder = os.path.relpath(ROOT / autoencoder)
    return ["--autoencoder", autoencoder, "--classifier", names.get("classifier", "efficientnet_lite0-offline")]


def run_natural(args, settings: dict) -> None:
    d = natural_certify_dir(args)
    if d is not None:
        run_audits("natural", d, natural_models(d), settings, args.natural_per_bound, Path(args.work), args.quiet,
                   args.bounds)


# --------------------------------------------------------------------------- the report


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, no GPU, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s) per process")


def set_report(name: str, label: str, certify_dir: Path, work: Path, settings: dict, per_bound: int | None) -> dict:
    """What one set's folders hold now: certify counts and, per bound, the audit's summary of its records."""
    from dp_autoencoder.audit import summarize_audit

    out = {"name": name, "label": label, "certify_dir": str(certify_dir), "attack_settings": settings,
           "per_bound_target": per_bound, "bounds": {}}
    if not (certify_dir / "certify.jsonl").is_file():
        out["missing"] = f"{certify_dir} holds no certify run"
        return out
    cert = read_jsonl(certify_dir / "certify.jsonl")
    run = json.loads((certify_dir / "run.json").read_text())
    if not (certify_dir / "summary.json").is_file() and not any(
            (work / f"audit-{name}-{b}" / "audit.jsonl").is_file() for b in BOUNDS):
        counts = certified_counts(cert)
        out["missing"] = (f"its certify run `{certify_dir}` had not finished: {len(cert)} of "
                          f"{run.get('max') or 'all'} images certified so far, {counts['smoothing']} by smoothing and "
                          f"{counts['pixeldp']} by PixelDP; once it has, `python tools/audit_at_scale.py --parts "
                          f"{name}` audits them and rewrites this report")
        return out
    out["certify"] = {"images": len(cert), "certified": certified_counts(cert),
                      **{k: run.get(k) for k in ("n0", "n", "alpha", "eta", "precision", "pixeldp_profile", "max")}}
    for bound in BOUNDS:
        folder = work / f"audit-{name}-{bound}"
        records = read_jsonl(folder / "audit.jsonl")
        target = out["certify"]["certified"][bound] if per_bound is None else min(per_bound,
                                                                                  out["certify"]["certified"][bound])
        s = summarize_audit(records, (bound,))[bound]
        s.update(folder=str(folder), target=target, finished=len(records) >= target,
                 seconds=sum(r["time"] for r in records), attack_seconds=sum(r.get("attack_time", 0.0) for r in records))
        if (folder / "run.json").is_file():
            s["precision"] = json.loads((folder / "run.json").read_text()).get("precision")
        out["bounds"][bound] = s
    return out


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def fmt_p(p: float) -> str:
    return "1" if p >= 0.9995 else f"{p:.3g}"


def settings_text(s: dict) -> str:
    return (f"PGD-L2 {s['steps']} steps x {s['restarts']} restart, EOT {s['eot']} draws per step, margin loss, "
            f"untargeted and targeted at the runner-up; C&W-L2 {s['cw_search_steps']} binary-search rounds x "
            f"{s['cw_steps']} Adam steps, EOT {s['eot']}, scaled into the ball (and stretched to it); "
            f"{s['n_select']} draws pick the strongest, {s['n']} fresh draws test it (alpha = 0.001)")


def write_report(report: dict, out: Path, command: str) -> None:
    lines = ["# The soundness audit at scale", "",
             f"Produced by `{command}` on {report['machine']} (date: {report['date']}); rerun the same command to "
             "resume or regenerate (`--report-only` rewrites this file from the runs without attacking).", "",
             "Each certified image is attacked at 0.999 x its certified size under one bound (smoothing radius or "
             "PixelDP robustness size) with the strongest of PGD-L2 (untargeted, and targeted at the runner-up) "
             "and Carlini-Wagner L2 projected into the ball, all with expectation over the noise, at the certify "
             "run's precision; fresh draws at the attacked image then test the certified statement. A violation "
             "is a statistically significant breach (alpha = 0.001): for smoothing, the one-sided Clopper-Pearson "
             "upper bound on p_c(x') below 1/2; for PixelDP, c's simultaneous upper bound below another class's "
             "lower bound. Under soundness the count is dominated by Binomial(N, alpha_cert + alpha_audit); "
             "\"expected\" is (alpha_cert + alpha_audit) x N, alpha_cert = the certify run's alpha (smoothing) "
             "or 1 - eta (PixelDP), and the p-value is P(Binomial >= observed). An attack that finds nothing "
             "proves nothing; the unit tests (closed forms, the planted false certificate the audit catches) do.",
             "",
             "| set | bound | certified (of images) | audited | violations | expected under soundness | p-value "
             "| majority changed | mean budget | mean attack distance | won by C&W | precision | wall time |",
             "|" + "---|" * 13]
    notes = []
    for st in report["sets"]:
        if "missing" in st:
            notes.append(f"- {st['label']}: not run ({st['missing']}).")
            continue
        c = st["certify"]
        for bound in BOUNDS:
            s = st["bounds"][bound]
            expected = s["expected_false_certificates"] + s["expected_false_alarms"]
            audited = f"{s['audited']}" + ("" if s["finished"] else f" of {s['target']} (unfinished)")
            mean = (lambda v: "-" if v is None else f"{v:.3f}")
            lines.append(
                f"| {st['label']} | {BOUND_NAMES[bound]} | {c['certified'][bound]} ({c['images']}) | {audited} | "
                f"{s['violations']} | {expected:.2f} | {fmt_p(s['p_value'])} | {s['majority_changed']} | "
                f"{mean(s['mean_budget'])} | {mean(s['mean_distance'])} | {s['won_by_cw']} | "
                f"{s.get('precision') or c.get('precision')} | {duration(s['seconds'])} |")
            want = st["per_bound_target"] or st.get("wanted")
            if want is not None and c["certified"][bound] < want:
                notes.append(f"- {st['label']}, {BOUND_NAMES[bound]}: the certify run's {c['images']} images hold only "
                             f"{c['certified'][bound]} certified by this bound, fewer than the {want} wanted; all of "
                             "them were audited.")
            if not s["finished"]:
                notes.append(f"- {st['label']}, {BOUND_NAMES[bound]}: {s['audited']} of the {s['target']} certified "
                             "images were audited when this report was written (the run resumes).")
    lines += ["", "\"wall time\": of the audit run, its per-image times summed (model loading excluded); the two "
              "bounds of a set ran as parallel processes (`--bounds`). \"majority changed\": images whose majority "
              "vote at x' is not the certified class; near the radius p_c(x') may be close to 1/2, so that alone is "
              "no violation. \"won by C&W\": images where a C&W candidate lowered the certified class's vote (or "
              "lead) the most on the selection draws.", ""]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    lines += ["## Sets and settings", ""]
    for st in report["sets"]:
        if "missing" in st:
            continue
        c = st["certify"]
        lines.append(f"- **{st['label']}**: certify run `{st['certify_dir']}` ({c['images']} images, n0 = {c['n0']}, "
                     f"n = {c['n']}, alpha = {c['alpha']}, eta = {c['eta']}, precision {c.get('precision') or 'fp32'}, "
                     f"PixelDP profile {c.get('pixeldp_profile') or 'classical'}); audits in "
                     f"`{st['bounds']['smoothing']['folder']}` and `{st['bounds']['pixeldp']['folder']}`. "
                     f"Attacks: {settings_text(st['attack_settings'])}.")
    lines += ["", "Which candidate was the strongest, per set and bound (on the selection draws):", ""]
    for st in report["sets"]:
        if "missing" in st:
            continue
        for bound in BOUNDS:
            chosen = st["bounds"][bound]["chosen"]
            if chosen:
                lines.append(f"- {st['label']}, {BOUND_NAMES[bound]}: " + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.md").write_text("\n".join(lines) + "\n")
    (out / "audit.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def build_report(args, profile: dict) -> dict:
    work = Path(args.work)
    sets = [set_report(f"fmnist-L{L}", f"Fashion-MNIST, L = {L}", work / f"certify-fmnist-L{L}", work,
                       profile["fmnist"], args.fmnist_per_bound) for L in FMNIST_AUTOENCODERS
            if f"fmnist-L{L}" in args.report_parts]
    if "natural" in args.report_parts:
        d = Path(args.natural_certify) if args.natural_certify else work / "certify-natural-quick"
        label = "ImageNet photos, L = 0.1"
        natural = set_report("natural", label, d, work, profile["natural"], args.natural_per_bound)
        natural["wanted"] = None if args.quick else 100
        sets.append(natural)
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sets": sets,
            "quick": bool(args.quick)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/audit-scale", help="runs folder (resumable; default runs/audit-scale)")
    p.add_argument("--out", default="docs/results", help="where audit.md and audit.json go (default docs/results)")
    p.add_argument("--parts", default="fmnist-L0.1,fmnist-L0.3,natural",
                   help="which parts to run: fmnist-L0.1, fmnist-L0.3, natural (default all)")
    p.add_argument("--report-parts", default=None, help="parts the report covers (default: all three)")
    p.add_argument("--bounds", default="smoothing,pixeldp",
                   help="which bounds' audits to run (default both; one process per bound runs them in parallel)")
    p.add_argument("--natural-certify", default=None,
                   help="a finished dpae certify folder of ImageNet photos (default in the full run: "
                        "runs/audit-scale/certify-natural-L0.1; --quick certifies 2 bundled photos itself)")
    p.add_argument("--fmnist-images", type=int, default=1000, help="Fashion-MNIST test images certified (default 1000)")
    p.add_argument("--fmnist-per-bound", type=int, default=500, help="certified images audited per bound and L")
    p.add_argument("--natural-per-bound", type=int, default=None, help="photos audited per bound (default: all certified)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on the shared 2-core CPU small forwards are far faster with one)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the runs; attack nothing")
    p.add_argument("--quick", action="store_true", help="reduced: a handful of images, few draws and steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    known = {f"fmnist-L{L}" for L in FMNIST_AUTOENCODERS} | {"natural"}
    args.report_parts = ([s.strip() for s in args.report_parts.split(",") if s.strip()] if args.report_parts
                         else sorted(known))
    bad = [s for s in parts + args.report_parts if s not in known]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(sorted(known))}")
    args.bounds = tuple(b.strip() for b in args.bounds.split(",") if b.strip())
    if not args.bounds or any(b not in BOUNDS for b in args.bounds):
        p.error(f"--bounds must be a comma list of {', '.join(BOUNDS)}")
    if args.quick:
        args.fmnist_images, args.fmnist_per_bound = 6, 2
        args.natural_per_bound = 1 if args.natural_per_bound is None else args.natural_per_bound
    elif args.natural_certify is None:
        args.natural_certify = str(Path(args.work) / "certify-natural-L0.1")
    profile = QUICK if args.quick else FULL
    if not args.report_only:
        for part in parts:
            if part == "natural":
                run_natural(args, profile["natural"])
            else:
                run_fmnist(part.split("-L")[1], args, profile["fmnist"])
    command = "python tools/audit_at_scale.py" + (" --quick" if args.quick else "")
    write_report(build_report(args, profile), Path(args.out), command)
    print(f"report: {Path(args.out) / 'audit.md'}, audit.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
