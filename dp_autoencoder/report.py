"""`dpae report`: certified-accuracy curves and tables from run folders, as Cohen et al.'s analyze.py makes them.

A run is a folder written by `dpae certify` (fixed or adaptive sampling), `dpae recompute` or
`dpae attack`.  Certify runs give certified accuracy against radius for both bounds (smoothing solid,
PixelDP dashed, one colour per run); attack runs give accuracy under attack against the attack budget.
Every number is computed from the run's JSONL with the functions that wrote its summary.json, so a
table cell equals the summary's value at that radius.  Runs whose radii are in different norms
(Gaussian noise: L2; Laplace: L1) are never drawn on one axis.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .certify import CertifyError, certified_accuracy, read_records

DEFAULT_RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
NORM_OF_NOISE = {"gaussian": "L2", "laplace": "L1"}
BOUNDS = (("smoothing", "radius", "correct"), ("PixelDP", "pixeldp_size", "pixeldp_correct"))
ATTACK_CURVES = (("undefended_accuracy", "undefended classifier", ":"),
                 ("defended_accuracy", "defended, majority of the draws", "-"),
                 ("defended_accuracy_predict", "defended, PREDICT (abstentions count as wrong)", "--"))


class ReportError(CertifyError):
    """A folder that is not a run, or runs that cannot share a figure."""


@dataclass
class Run:
    path: Path
    kind: str  # "certify" or "attack"
    settings: dict
    records: list
    summary: dict
    label: str


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None


def _short(source) -> str:
    """A readable name for a recorded source: a path's last part, a spec before its sha."""
    text = str(source or "?")
    spec = text.rsplit(":", 1)[0] if ":" in text and len(text.rsplit(":", 1)[1]) >= 32 else text
    return Path(spec).name or spec


def run_label(kind: str, settings: dict, records: list) -> str:
    """Auto-encoder, L, classifier, draws and alpha from run.json and the records."""
    sources = settings.get("sources") or []
    names = settings.get("names") or {}
    autoencoder = names.get("autoencoder") or (f"AE {str(sources[0])[:8]}" if sources else "AE ?")
    classifier = _short(names.get("classifier") or (sources[1] if len(sources) > 1 else None))
    first = next((r for r in records if r.get("status", "ok") == "ok"), records[0] if records else {})
    L = first.get("L")
    head = f"{_short(autoencoder)} (L = {L:g})" if isinstance(L, (int, float)) else _short(autoencoder)
    if kind == "attack":
        method = settings.get("method", "pgd").upper()
        return f"{head} + {classifier}, {method}-{settings.get('norm', 'l2').upper()}, EOT {settings.get('eot')}"
    if settings.get("adaptive_radius") is not None:
        draws = f"adaptive at r = {settings['adaptive_radius']:g}, n <= {settings.get('n')}"
    else:
        draws = f"n = {first.get('n', settings.get('n'))}"
    alpha = first.get("alpha", settings.get("alpha"))
    return f"{head} + {classifier}, {draws}, alpha = {alpha:g}"


def load_run(path, label: str | None = None) -> Run:
    """A certify/recompute folder (certify.jsonl) or an attack folder (attack.jsonl)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder")
    run_json = path / "run.json"
    settings = _read_json(run_json) if run_json.is_file() else {}
    if (path / "certify.jsonl").is_file():
        kind, records = "certify", read_records(path / "certify.jsonl")
        if not records:
            raise ReportError(f"{path}/certify.jsonl holds no records yet")
        if not settings:  # a recompute folder has no run.json; its records carry what the label needs
            settings = {"n": records[0].get("n"), "alpha": records[0].get("alpha")}
        summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    elif (path / "attack.jsonl").is_file():
        kind, records = "attack", read_records(path / "attack.jsonl")
        if not (path / "summary.json").is_file():
            raise ReportError(f"{path} has no summary.json yet: rerun dpae attack into it to finish")
        summary = _read_json(path / "summary.json")
    else:
        raise ReportError(f"{path} is not a dpae run folder: it has neither certify.jsonl (dpae certify, "
                          "recompute) nor attack.jsonl (dpae attack)")
    return Run(path, kind, settings, records, summary, label or run_label(kind, settings, records))


def noise_norm(run: Run) -> str:
    kinds = {r["noise"] for r in run.records if r.get("status", "ok") == "ok" and "noise" in r}
    if len(kinds) > 1:
        raise ReportError(f"{run.path} mixes noise kinds {sorted(kinds)}")
    return NORM_OF_NOISE[kinds.pop()] if kinds else "L2"


def certified_curves(run: Run, radii) -> dict:
    """{bound: {radius: certified accuracy}} (adaptive runs: smoothing only)."""
    adaptive = run.settings.get("adaptive_radius") is not None
    return {name: certified_accuracy(run.records, key, correct, radii)
            for name, key, correct in BOUNDS if not (adaptive and name == "PixelDP")}


def _check_same_norm(runs: list[Run]) -> str:
    norms = {run.path: noise_norm(run) for run in runs}
    if len(set(norms.values())) > 1:
        listing = ", ".join(f"{p} ({n})" for p, n in norms.items())
        raise ReportError("these runs certify radii in different norms and cannot share an axis: " + listing +
                          "; report the Gaussian (L2) and Laplace (L1) runs separately")
    return next(iter(norms.values()))


# --- tables ----------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("<=", r"$\le$"), ("alpha", r"$\alpha$")):
        text = text.replace(a, b)
    return text


def latex_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in r) + r" \\" for r in rows]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def certified_table(runs: list[Run], radii) -> tuple[list[str], list[list[str]]]:
    norm = _check_same_norm(runs)
    header = ["run", "bound"] + [f"{norm} r = {r:g}" for r in radii]
    rows = []
    for run in runs:
        for bound, values in certified_curves(run, radii).items():
            rows.append([run.label, bound] + [f"{values[f'{r:g}']:.3f}" for r in radii])
    return header, rows


def attack_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "budget", "undefended", "defended (majority)", "defended (PREDICT)", "smoothed certify",
              "PixelDP"]
    rows = []
    for run in runs:
        for key, s in run.summary.get("budgets", {}).items():
            cells = [s.get(k) for k in ("undefended_accuracy", "defended_accuracy", "defended_accuracy_predict",
                                        "smoothed_accuracy", "pixeldp_accuracy")]
            rows.append([run.label, f"{s.get('budget', float(key)):g}"] +
                        ["-" if c is None else f"{c:.3f}" for c in cells])
    return header, rows


# --- figures ---------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write the figure through a temporary file: a killed report never leaves half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the same mode as every other output (checkpoint.atomic_write_bytes)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finish(plt, fig, ax, stem: Path) -> list[Path]:
    """The legend below the axes (it never hides a curve), then the PNG and the SVG."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        _save(fig, p)
    plt.close(fig)
    return paths


def _grid(runs: list[Run]) -> list[float]:
    top = max([r.get("radius", 0) for run in runs for r in run.records] +
              [r.get("pixeldp_size", 0) for run in runs for r in run.records] + [0.1])
    steps = 400
    return [top * 1.08 * i / steps for i in range(steps + 1)]


def plot_certified(runs: list[Run], stem: Path) -> list[Path]:
    plt = _pyplot()
    norm = _check_same_norm(runs)
    grid = _grid(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        for bound, values in certified_curves(run, grid).items():
            style = "-" if bound == "smoothing" else "--"
            ax.step(grid, [values[f"{r:g}"] for r in grid], where="post", linestyle=style, color=colour,
                    label=f"{run.label} [{bound}]")
        if run.settings.get("adaptive_radius") is not None:
            ax.axvline(run.settings["adaptive_radius"], color=colour, linestyle=":", linewidth=1,
                       label=f"{run.label}: adaptive radius (beyond it, lower bounds)")
    ax.set_xlabel(f"radius ({norm} norm of the perturbation, pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, grid[-1])
    ax.grid(alpha=0.3)
    ax.set_title("Certified accuracy: smoothing bound (solid), PixelDP bound (dashed)", fontsize=10)
    return _finish(plt, fig, ax, stem)


def plot_attacks(runs: list[Run], stem: Path) -> list[Path]:
    plt = _pyplot()
    norms = {run.path: run.settings.get("norm", run.summary.get("norm", "l2")) for run in runs}
    if len(set(norms.values())) > 1:
        raise ReportError("these attack runs use different norms and cannot share an axis: " +
                          ", ".join(f"{p} ({n})" for p, n in norms.items()))
    norm = next(iter(norms.values())).upper()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        rows = sorted(run.summary.get("budgets", {}).values(), key=lambda s: s["budget"])
        for key, name, style in ATTACK_CURVES:
            points = [(s["budget"], s[key]) for s in rows if s.get(key) is not None]
            if points:
                ax.plot(*zip(*points), linestyle=style, marker="o", markersize=3, color=colours[i % len(colours)],
                        label=f"{run.label} [{name}]")
    ax.set_xlabel(f"attack budget ({norm} norm, pixels in [0, 1])")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    return _finish(plt, fig, ax, stem)


def _write_text(path: Path, text: str) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def write_report(run_dirs, out, radii=DEFAULT_RADII, labels=None, progress: bool = True) -> list[Path]:
    """Figures (PNG, SVG) and tables (Markdown, LaTeX) of the runs into ``out``; returns the files written."""
    from tqdm import tqdm

    if not run_dirs:
        raise ReportError("no run folders given")
    if labels is not None and len(labels) != len(run_dirs):
        raise ReportError(f"{len(labels)} labels for {len(run_dirs)} runs")
    if any(r < 0 for r in radii):
        raise ReportError("radii must be >= 0")
    runs = [load_run(d, labels[i] if labels else None)
            for i, d in enumerate(tqdm(run_dirs, desc="report: reading runs", disable=not progress))]
    out = Path(out)
    if any(out.resolve() == run.path.resolve() for run in runs):
        raise ReportError("--out must not be one of the run folders")
    written = []
    certify_runs = [r for r in runs if r.kind == "certify"]
    attack_runs = [r for r in runs if r.kind == "attack"]
    for kind, chosen, table, plot, stem in (
            ("certify", certify_runs, lambda rs: certified_table(rs, radii), plot_certified, "certified-accuracy"),
            ("attack", attack_runs, attack_table, plot_attacks, "accuracy-under-attack")):
        if not chosen:
            continue
        header, rows = table(chosen)
        written += plot(chosen, out / stem)
        for suffix, fmt in ((".md", markdown_table), (".tex", latex_table)):
            _write_text(out / f"{stem}{suffix}", fmt(header, rows))
            written.append(out / f"{stem}{suffix}")
    return written


def write_run_curve(run_dir) -> Path:
    """The certified-accuracy figure of one certify folder, beside its summary.json."""
    run = load_run(run_dir)
    return plot_certified([run], Path(run_dir) / "certified-accuracy")[0]
