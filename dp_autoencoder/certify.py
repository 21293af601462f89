"""`dpae certify`: per-image PixelDP and randomized-smoothing certificates, resumable and sharded.

Files in the output folder:
  run.json        the settings, the device type and name, the data's size and fingerprint; a rerun with
                  other settings, on another device type or on changed data is refused
  certify.jsonl   one object per image with every raw statistic (the source of truth)
  certify.tsv     Cohen et al.'s columns `idx label predict radius correct time`, then extras
  summary.json    certified accuracy by both bounds on a grid of radii, abstention, speed

Resumption: certify.jsonl is appended and fsynced image by image; a partial last line (a kill
mid-write) is dropped, the images already in the file are skipped, and the TSV and summary are
rebuilt from the JSONL.  Under torchrun each rank writes its own part file and rank 0 merges.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .adaptive import certify_adaptive
from .certificates import DEFAULT_PIXELDP_PROFILE, PIXELDP_PROFILES, pixeldp_certify, smoothed_certify
from .checkpoint import atomic_write_bytes, atomic_write_json
from .data import dataset_fingerprint, fingerprint_difference
from .distributed import device_difference, device_identity, rank_world
from .sampler import sample_votes

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time",
               "pixeldp_predict", "pixeldp_size", "pixeldp_correct", "p_a_lower", "undefended_predict", "status")
RADIUS_GRID = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)


class CertifyError(ValueError):
    """Settings or an output folder that cannot be used."""


@dataclass(frozen=True)
class CertifySettings:
    n0: int = 100
    n: int = 300
    alpha: float = 0.001
    eta: float = 0.95
    skip: int = 1
    max: int | None = None
    batch_size: int = 256
    seed: int = 0
    images_per_step: int = 8
    precision: str = "fp32"  # autocast of the noisy forwards: the votes depend on it
    # How the PixelDP size reads the Gaussian noise (certificates.PIXELDP_PROFILES); absent in run.json and
    # records written before the option, which mean "classical".
    pixeldp_profile: str = DEFAULT_PIXELDP_PROFILE
    # Adaptive sampling (dp_autoencoder.adaptive): stop drawing once the certificate at this radius is
    # decided; n0 then counts selection draws and n is the most estimation draws an image may take.
    adaptive_radius: float | None = None
    sources: tuple = ()  # what was certified: (autoencoder sha, classifier sha, data), for the resume check
    # How the user named the models (paths, shipped names), for labels; not compared on resume.
    names: dict = field(default_factory=dict, compare=False)

    def check(self) -> None:
        for name in ("n0", "n", "skip", "batch_size", "images_per_step"):
            if getattr(self, name) < 1:
                raise CertifyError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max is not None and self.max < 1:
            raise CertifyError(f"--max must be >= 1, got {self.max}")
        if self.adaptive_radius is not None and not (math.isfinite(self.adaptive_radius) and self.adaptive_radius >= 0):
            raise CertifyError(f"--adaptive-radius must be a finite number >= 0, got {self.adaptive_radius}")
        for name in ("alpha", "eta"):
            if not 0 < getattr(self, name) < 1:
                raise CertifyError(f"--{name} must be in (0, 1), got {getattr(self, name)}")
        check_pixeldp_profile(self.pixeldp_profile)

    def to_json(self) -> dict:
        d = asdict(self)
        d["sources"] = [list(s) if isinstance(s, tuple) else s for s in self.sources]
        return d


def selected_indices(length: int, skip: int, max_images: int | None) -> list[int]:
    """Cohen et al.'s protocol: every ``skip``-th image, at most ``max_images`` of them."""
    idx = list(range(0, length, skip))
    return idx[:max_images] if max_images is not None else idx


# --- one image's certificates from its votes (also used by `dpae recompute`) ---------------
def dense(counts: dict, num_classes: int) -> np.ndarray:
    out = np.zeros(num_classes, dtype=np.int64)
    for k, v in counts.items():
        out[int(k)] = v
    return out


def check_pixeldp_profile(profile) -> str:
    if profile not in PIXELDP_PROFILES:
        raise CertifyError(f"--pixeldp-profile must be one of {', '.join(PIXELDP_PROFILES)}, got {profile!r}")
    return profile


def certificates(selection_counts: np.ndarray, counts: np.ndarray, *, noise: str, scale: float,
                 sensitivity: float, eps: float, delta: float, alpha: float, eta: float,
                 pixeldp_profile: str = DEFAULT_PIXELDP_PROFILE) -> dict:
    smooth = smoothed_certify(selection_counts, counts, alpha, noise, scale, sensitivity)
    pdp = pixeldp_certify(counts, eta, noise, scale, sensitivity, eps, delta, profile=check_pixeldp_profile(pixeldp_profile))
    return {
        "predict": int(smooth.predict),
        "radius": float(smooth.radius),
        "p_a_lower": float(smooth.p_a_lower),
        "pixeldp_predict": int(pdp.predict),
        "pixeldp_size": float(pdp.size),
        "pixeldp_p_lower": float(pdp.p_lower),
        "pixeldp_p_upper": float(pdp.p_upper),
        "pixeldp_certified_at_L": bool(pdp.certified_at_construction),
        "pixeldp_profile": pdp.profile,
    }


def adaptive_record(result) -> dict:
    """An adaptive result as a record; PixelDP is not computed (its bound is not anytime-valid here)."""
    return {"predict": result.predict, "radius": result.radius, "p_a_lower": result.p_a_lower,
            "counts": {str(result.selected): result.successes} if result.successes else {}, "selection_counts": {},
            "pixeldp_predict": -1, "pixeldp_size": -1.0, "pixeldp_p_lower": 0.0, "pixeldp_p_upper": 0.0,
            "pixeldp_certified_at_L": False, "adaptive": result.to_json()}


def sparse(counts: np.ndarray) -> dict[str, int]:
    """Non-zero counts by class id, most voted first (zeros carry no information for any bound)."""
    order = np.argsort(-counts, kind="stable")
    return {str(int(k)): int(counts[k]) for k in order if counts[k] > 0}


def recompute_record(record: dict, alpha: float | None = None, eta: float | None = None,
                     pixeldp_profile: str | None = None) -> dict:
    """The same record with new radii for other confidence levels or another PixelDP profile (no model run).

    ``None`` keeps the record's own value; a record without ``pixeldp_profile`` was computed classically.
    """
    if record.get("status", "ok") != "ok":
        return record
    if "adaptive" in record:
        raise CertifyError("adaptive records cannot be recomputed: their looks spent alpha on a fixed schedule")
    alpha = record["alpha"] if alpha is None else alpha
    eta = record["eta"] if eta is None else eta
    profile = record.get("pixeldp_profile", "classical") if pixeldp_profile is None else pixeldp_profile
    k = record["num_classes"]
    new = certificates(dense(record["selection_counts"], k), dense(record["counts"], k),
                       noise=record["noise"], scale=record["scale"], sensitivity=record["sensitivity"],
                       eps=record["eps"], delta=record["delta"], alpha=alpha, eta=eta, pixeldp_profile=profile)
    out = {**record, **new, "alpha": alpha, "eta": eta}
    return {**out, **correctness(out)}


def correctness(record: dict) -> dict:
    label = record["label"]
    return {"correct": int(label >= 0 and record["predict"] == label),
            "pixeldp_correct": int(label >= 0 and record["pixeldp_predict"] == label)}


# --- files ----------------------------------------------------------------------------
def read_records(path: Path, repair: bool = False) -> list[dict]:
    """Complete JSON lines of ``path``; with ``repair`` a partial last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as e:  # not the partial last line of a kill: an edit or a disk error
                raise CertifyError(f"{path}, line {lineno}, is not a JSON record ({e}); repair or remove that "
                                   "line (a removed record is recomputed by a rerun)") from None
    return records


def append_records(f, records: list[dict]) -> None:
    """Append JSON lines and fsync: a kill leaves at most a partial last line, which resumption drops."""
    f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def tsv_row(r: dict) -> str:
    return "\t".join([
        str(r["idx"]), str(r["label"]), str(r["predict"]), f"{r['radius']:.4f}", str(r["correct"]),
        f"{r['time']:.4f}", str(r["pixeldp_predict"]), f"{r['pixeldp_size']:.4f}", str(r["pixeldp_correct"]),
        f"{r['p_a_lower']:.6f}", str(r["undefended_predict"]), r["status"]])


def accuracy_denominator(records: list[dict]) -> int:
    """What accuracies divide by: the labelled images when some images are unlabelled (label -1), else all
    (then the two are the same number; with no labelled image at all the accuracies are 0 and mean nothing,
    the agreement with the undefended classifier is the figure to read).  Refused images count."""
    labelled = sum(1 for r in records if r["label"] >= 0)
    return max(labelled or len(records), 1)


def certified_accuracy(records: list[dict], key: str, correct_key: str, radii=RADIUS_GRID) -> dict:
    """Share of the labelled images (see :func:`accuracy_denominator`) correct and certified at >= each radius."""
    total = accuracy_denominator(records)
    return {f"{t:g}": sum(1 for r in records if r[correct_key] and r[key] > 0 and r[key] >= t) / total
            for t in radii}


def summarize(records: list[dict], seconds: float | None = None) -> dict:
    """The run's figures.  Accuracies (smoothed, PixelDP, undefended, certified at each radius) count the
    labelled images only; ``accuracy_denominator`` says how many that is whenever some images are unlabelled
    (a fully labelled run has no such key: its accuracies are over ``images``, and its summary.json stays as
    it was).  Abstention, agreement and speed are over all images."""
    ok = [r for r in records if r["status"] == "ok"]
    n = max(len(records), 1)
    labelled = sum(1 for r in records if r["label"] >= 0)
    acc_n = accuracy_denominator(records)
    summary = {
        "images": len(records),
        "refused": len(records) - len(ok),
        "labeled": labelled,
        "smoothed_accuracy": sum(r["correct"] for r in records) / acc_n,
        "abstention_rate": sum(1 for r in ok if r["predict"] < 0) / n,
        "pixeldp_accuracy": sum(r["pixeldp_correct"] for r in records) / acc_n,
        "undefended_accuracy": sum(r["label"] >= 0 and r["undefended_predict"] == r["label"] for r in records) / acc_n,
        # For unlabeled images: how often the defended prediction is the undefended classifier's.
        "agreement_smoothed": sum(r["predict"] == r["undefended_predict"] for r in ok) / n,
        "agreement_pixeldp": sum(r["pixeldp_predict"] == r["undefended_predict"] for r in ok) / n,
        "certified_accuracy_smoothing": certified_accuracy(records, "radius", "correct"),
        "certified_accuracy_pixeldp": certified_accuracy(records, "pixeldp_size", "pixeldp_correct"),
        "pixeldp_profile": ",".join(sorted({r.get("pixeldp_profile", "classical") for r in ok})),
        "mean_time_per_image_s": sum(r["time"] for r in records) / n,
        # Noisy forward passes of the stack per second of certification (n0 + n draws per image).
        "draws_per_s": sum(r["adaptive"]["draws"] if "adaptive" in r else r["n0"] + r["n"] for r in ok)
                       / max(sum(r["time"] for r in ok), 1e-12),
    }
    if labelled < len(records):
        summary["accuracy_denominator"] = acc_n
    adaptive = [r["adaptive"] for r in ok if "adaptive" in r]
    if adaptive:
        summary["adaptive_radius"] = records[0].get("adaptive_radius")
        summary["mean_draws"] = sum(a["draws"] for a in adaptive) / len(adaptive)
        summary["certified_accuracy_at_adaptive_radius"] = sum(
            r["correct"] and r["adaptive"]["certified"] for r in ok if "adaptive" in r) / acc_n
    if seconds:
        summary["images_per_s_this_run"] = len(records) / seconds
    return summary


def write_outputs(out: Path, records: list[dict], seconds: float | None = None) -> dict:
    records = sorted(records, key=lambda r: r["idx"])
    atomic_write_bytes(out / "certify.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
    atomic_write_bytes(out / "certify.tsv", ("\t".join(TSV_COLUMNS) + "\n" + "".join(tsv_row(r) + "\n" for r in records)).encode())
    summary = summarize(records, seconds)
    atomic_write_json(out / "summary.json", summary)
    return summary


def resumed_pixeldp_profile(out, requested: str | None) -> str:
    """The profile a run into ``out`` uses: ``requested``, else the one of the run there (classical when its
    run.json predates the option), else the default; an explicit mismatch is refused by the resume check."""
    if requested is not None:
        return check_pixeldp_profile(requested)
    run_file = Path(out) / "run.json"
    if run_file.exists():
        return json.loads(run_file.read_text()).get("pixeldp_profile", "classical")
    return DEFAULT_PIXELDP_PROFILE


def same_sources(recorded, wanted) -> bool:
    """The recorded sources are the wanted ones; the classifier ('spec:sha') is compared by its sha, so that
    another spelling of the same checkpoint path resumes."""
    def key(position, value):
        digest = str(value).rpartition(":")[2]
        return digest if position == 1 and len(digest) == 64 else value  # hub weights: the name is all there is

    recorded, wanted = list(recorded or []), list(wanted or [])
    return len(recorded) == len(wanted) and all(key(i, a) == key(i, b) for i, (a, b) in
                                                enumerate(zip(recorded, wanted)))


def run_context(dataset, device) -> dict:
    """What run.json records beside the settings and a resume must find again: the device (type and name) and
    the data (its size and a fingerprint of its files, see ``data.dataset_fingerprint``)."""
    return {"device": device_identity(device), "data": dataset_fingerprint(dataset)}


def check_run_context(out, previous: dict, context: dict, error=None) -> None:
    """Refuse to resume the run recorded in ``previous`` (its run.json) with ``context``: on another device
    type, or on data of another size or list of files.  Keys a run.json from before them lacks are unknown,
    not a mismatch; another GPU model is a warning."""
    import warnings

    error = error or CertifyError
    problems = []
    if "device" in context:
        refusal, warning = device_difference(previous.get("device"), context["device"])
        if refusal:
            problems.append(refusal)
        if warning:
            warnings.warn(f"{out}: {warning}", stacklevel=3)
    if "data" in context:
        changed = fingerprint_difference(previous.get("data"), context["data"])
        if changed:
            problems.append(f"{changed}; a resumed run would mix the records of two data sets, so rerun on the "
                            "data it was made on, or choose another --out")
    if problems:
        raise error(f"{out} holds a run that cannot be resumed here: " + "; ".join(problems))


def _prepare_out(out: Path, settings: CertifySettings, rank: int, context: dict | None = None) -> None:
    run_file = out / "run.json"
    wanted = settings.to_json()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        previous.setdefault("precision", "fp32")  # run.json files from before the option
        previous.setdefault("pixeldp_profile", "classical")  # their sizes were read classically
        changed = {k: (previous.get(k), v) for k, v in wanted.items()
                   if k not in ("batch_size", "images_per_step", "names")
                   and not (same_sources(previous.get(k), v) if k == "sources" else previous.get(k) == v)}
        if changed:
            raise CertifyError(f"{out} holds a run with other settings (" + "; ".join(
                f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items()) +
                "); choose another --out to start a new run")
        if context and rank == 0:
            check_run_context(out, previous, context)
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {**wanted, **(context or {})})


# --- the run --------------------------------------------------------------------------
REFUSED = {"predict": -1, "radius": -1.0, "p_a_lower": 0.0, "pixeldp_predict": -1, "pixeldp_size": -1.0,
           "counts": {}, "selection_counts": {}, "sensitivity": None, "undefended_predict": -1}


def _base_record(idx: int, label: int, settings: CertifySettings, noise, num_classes: int, seconds: float) -> dict:
    return {"idx": idx, "label": label, "n0": settings.n0, "n": settings.n, "num_classes": num_classes,
            "noise": noise.kind, "scale": noise.scale, "sigma" if noise.kind == "gaussian" else "b": noise.scale,
            "L": noise.L, "eps": noise.eps, "delta": noise.delta, "alpha": settings.alpha, "eta": settings.eta,
            "time": seconds, "seed": settings.seed, "pixeldp_profile": settings.pixeldp_profile,
            **({"adaptive_radius": settings.adaptive_radius} if settings.adaptive_radius is not None else {})}


def certify_dataset(model, dataset, settings: CertifySettings, out, num_classes: int,
                    device="cpu", progress: bool = True, workers: int = 0,
                    autocast_dtype: torch.dtype | None = None) -> dict:
    """Certify the selected images of ``dataset`` into ``out``; returns the summary (rank 0)."""
    settings.check()
    out = Path(out)
    rank, world = rank_world()
    indices = selected_indices(len(dataset), settings.skip, settings.max)
    if not indices:
        raise CertifyError("the data holds no image to certify")
    main_file = out / "certify.jsonl"
    part = main_file if world == 1 else out / f"certify.part{rank}.jsonl"
    context = run_context(dataset, device)
    if rank == 0:
        _prepare_out(out, settings, rank, context)
        for p in [main_file, *out.glob("certify.part*.jsonl")]:
            read_records(p, repair=True)
    if world > 1:
        dist.barrier()
        _prepare_out(out, settings, rank, context)
    done = {r["idx"] for p in [main_file, *out.glob("certify.part*.jsonl")] for r in read_records(p)}
    todo = [i for i in indices if i not in done][rank::world]

    noise = model.noise
    sensitivities: dict[tuple, float] = {}
    loader = DataLoader(Subset(dataset, todo), batch_size=settings.images_per_step, num_workers=workers)
    bar = tqdm(total=len(indices), initial=len(indices) - len([i for i in indices if i not in done]),
               desc="certify", disable=not (progress and rank == 0), dynamic_ncols=True)
    certified = {"n": 0, "smooth": 0, "pixeldp": 0}
    t_run = time.perf_counter()
    position = 0
    with open(part, "a") as f:
        for x, labels in loader:
            ids = todo[position:position + len(x)]
            position += len(x)
            t0 = time.perf_counter()
            x = x.to(device)
            finite = torch.isfinite(x).flatten(1).all(1).cpu()
            good = [j for j in range(len(x)) if finite[j]]
            if good:
                xs = x[good]
                size = tuple(xs.shape[-2:])
                if size not in sensitivities:
                    sensitivities[size] = model.sensitivity(size)
                with torch.inference_mode():
                    z = model.pre_noise(xs)
                    undefended = model.classifier(xs).argmax(1).tolist()
                good_ids = [ids[j] for j in good]
                common = dict(num_classes=num_classes, image_size=size, seed=settings.seed,
                              batch_size=settings.batch_size, autocast_dtype=autocast_dtype)
                if settings.adaptive_radius is None:
                    sel = sample_votes(model, z, good_ids, settings.n0, purpose="selection", **common).counts.cpu().numpy()
                    est = sample_votes(model, z, good_ids, settings.n, purpose="estimation", **common).counts.cpu().numpy()
                else:
                    adaptive = certify_adaptive(model, z, good_ids, radius=settings.adaptive_radius, noise=noise.kind,
                                                scale=noise.scale, sensitivity=sensitivities[size], alpha=settings.alpha,
                                                n0=settings.n0, n_max=settings.n, **common)
            elapsed = (time.perf_counter() - t0) / len(x)
            records = []
            for j in range(len(x)):
                base = _base_record(ids[j], int(labels[j]), settings, noise, num_classes, elapsed)
                if j in good:
                    g = good.index(j)
                    rec = {**base, "status": "ok", "sensitivity": sensitivities[size],
                           "undefended_predict": undefended[g]}
                    if settings.adaptive_radius is None:
                        rec.update(counts=sparse(est[g]), selection_counts=sparse(sel[g]),
                                   **certificates(sel[g], est[g], noise=noise.kind, scale=noise.scale,
                                                  sensitivity=sensitivities[size], eps=noise.eps, delta=noise.delta,
                                                  alpha=settings.alpha, eta=settings.eta,
                                                  pixeldp_profile=settings.pixeldp_profile))
                    else:
                        rec.update(adaptive_record(adaptive[g]))
                else:
                    rec = {**base, **REFUSED, "status": "refused: the image has NaN or Inf pixels"}
                rec.update(correctness(rec))
                records.append(rec)
                certified["n"] += 1
                certified["smooth"] += rec["correct"] and rec["radius"] > 0
                certified["pixeldp"] += rec["pixeldp_correct"] and rec["pixeldp_size"] > 0
            append_records(f, records)
            bar.update(len(x) * world)
            bar.set_postfix(cert_acc_smooth=f"{certified['smooth'] / certified['n']:.3f}",
                            cert_acc_pixeldp=f"{certified['pixeldp'] / certified['n']:.3f}")
    bar.close()
    seconds = time.perf_counter() - t_run
    if world > 1:
        dist.barrier()
    summary = None
    if rank == 0:
        records = {r["idx"]: r for r in read_records(main_file)}
        parts = sorted(out.glob("certify.part*.jsonl"))
        for p in parts:
            records.update({r["idx"]: r for r in read_records(p)})
        summary = write_outputs(out, [records[i] for i in indices if i in records],
                                seconds if position else None)
        for p in parts:
            p.unlink()
    if world > 1:
        dist.barrier()
    return summary
