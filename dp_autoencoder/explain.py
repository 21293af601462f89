"""A certify run told in plain words (records in, text out): what ran, how many predictions the defense kept with a
certificate and at which radii, what the same noise gives without the front-end, and the labelled images apart, so
that a miss of the classifier itself is not read as one of the defense."""

from __future__ import annotations

from .certificates import smoothing_radius_gaussian, smoothing_radius_laplace

__all__ = ["largest_radius", "explain_run"]


def largest_radius(n: int, alpha: float, noise: str, scale: float, sensitivity: float = 1.0) -> float:
    """The largest smoothing radius n estimation draws can certify at level alpha (all n votes for one class:
    p_A = alpha^(1/n))."""
    radius = smoothing_radius_gaussian if noise == "gaussian" else smoothing_radius_laplace
    return float(radius(alpha ** (1.0 / n), scale, sensitivity))


def _kept(records) -> list[dict]:
    return [r for r in records if r["status"] == "ok" and r["predict"] >= 0
            and r["predict"] == r["undefended_predict"] and r["radius"] >= 0]


def _name(r, names) -> str:
    return names[r["idx"]] if names and r["idx"] < len(names) else f"image {r['idx']}"


def _cls(k: int, class_names) -> str:
    return class_names[k].split(",")[0] if class_names and 0 <= k < len(class_names) else str(k)


def _radii(records, names) -> str:
    return ", ".join(f"{_name(r, names)} {r['radius']:.2f}" for r in records)


def explain_run(records: list[dict], *, front_end: str, classifier: str, noise: dict, sensitivity: float,
                baseline: list[dict] | None = None, names=None, class_names=None) -> str:
    """The paragraphs `dpae certify` prints after its table.  ``noise``: the front-end's config (kind, L, scale);
    ``baseline``: the records of the same images certified with the same noise on the pixels and no front-end."""
    if not records:
        return "No image was certified."
    first = records[0]
    n0, n, alpha = first["n0"], first["n"], first["alpha"]
    total = len(records)
    kind = "Gaussian" if noise["kind"] == "gaussian" else "Laplace"
    symbol = "sigma" if noise["kind"] == "gaussian" else "b"
    cap = largest_radius(n, alpha, noise["kind"], noise["scale"], sensitivity)
    lines = [f"What ran: the front-end {front_end} ({kind} noise, {symbol} = {noise['scale']:.3f}, L = {noise['L']:g}) "
             f"before the frozen classifier {classifier}; per image n0 = {n0} draws choose the class and n = {n} more "
             f"certify it (randomized smoothing, alpha = {alpha:g}); with n = {n} no radius can exceed {cap:.2f}."]
    kept = _kept(records)
    abstained = [r for r in records if r["status"] == "ok" and r["predict"] < 0]
    changed = [r for r in records if r["status"] == "ok" and r["predict"] >= 0 and r["predict"] != r["undefended_predict"]]
    refused = [r for r in records if r["status"] != "ok"]
    text = f"With the front-end: {len(kept)} of {total} images keep the undefended classifier's prediction with a certificate"
    text += f" ({_radii(kept, names)})" if kept else ""
    parts = []
    if abstained:
        parts.append(f"{len(abstained)} abstain{'s' if len(abstained) == 1 else ''} (the votes are too split to certify "
                     f"with n = {n}: {', '.join(_name(r, names) for r in abstained)})")
    if changed:
        parts.append(f"{len(changed)} change{'s' if len(changed) == 1 else ''} the prediction (" + "; ".join(
            f"{_name(r, names)}: {_cls(r['undefended_predict'], class_names)} -> {_cls(r['predict'], class_names)}"
            for r in changed) + ")")
    if refused:
        parts.append(f"{len(refused)} could not be read")
    lines.append(text + ("; " + "; ".join(parts) if parts else "") + ".")
    if baseline is not None:
        base_kept = _kept(baseline)
        lines.append(f"The same noise on the pixels, no front-end: {len(base_kept)} of {len(baseline)} kept with a "
                     "certificate" + (f" ({_radii(base_kept, names)})" if base_kept else "") + ".")
    labelled = [r for r in records if r["label"] >= 0]
    if labelled and len(labelled) < total:
        misses = [r for r in labelled if r["undefended_predict"] != r["label"]]
        right = len(labelled) - len(misses)
        certified = sum(1 for r in labelled if r["correct"])
        text = (f"Labels: {len(labelled)} of the {total} images have one (the others count by agreement only); the "
                f"undefended classifier is right on {right} of {len(labelled)}")
        if misses:
            text += " (" + "; ".join(f"{_name(r, names)}: it says {_cls(r['undefended_predict'], class_names)}, labelled "
                                     f"{_cls(r['label'], class_names)}" for r in misses) + \
                    ": misses of the classifier itself, not of the defense)"
        lines.append(text + f"; defended and certified: {certified} of {len(labelled)}.")
    return "\n".join(lines)
