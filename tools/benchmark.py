"""Speed of certification: our engine against a reference loop, efficiency, latency, training overhead.

Examples:

    python tools/benchmark.py                                  # full run, writes docs/benchmarks.md + .json
    python tools/benchmark.py --quick --out /tmp/bench.md      # tiny models, a few seconds (CI, tests)
    python tools/benchmark.py --stacks fmnist --n 25,100,300   # one stack, fewer draw counts
    python tools/benchmark.py --imagenet-n 25,100,300          # also n = 300 for the ImageNet-sized stacks
    python tools/benchmark.py --device cuda --compile          # GPU: autocast (checked against fp32), torch.compile

What is measured, for every stack (auto-encoder + frozen classifier):

1. the floor: seconds per draw of the post-noise model alone (noisy latent -> logits) at each candidate
   batch size; the best one is the batch size both certification loops use;
2. certification throughput at each n: PixelDP certification of k images with n draws each (pre-noise
   map, n noisy forwards, argmax votes, the PixelDP bound), by
   - ours: dp_autoencoder.sampler.sample_votes, images_per_step images at a time (as `dpae certify`),
     on the model put in channels_last by sampler.prepare_for_sampling;
   - the reference: Cohen et al.'s CERTIFY/SAMPLEUNDERNOISE loop as their published core.py runs it, written
     here from the paper's pseudo-code: one image at a time, the base classifier -- here the whole defended
     model, a black box that recomputes the pre-noise map for every copy -- called on batches of noisy
     copies, the argmax votes counted on the host with numpy; fp32, the model as loaded.
   ratio = reference time / our time; efficiency = k n floor / our time (the share of the floor reached);
3. prediction latency of one image against the number of draws (the paper's Q4);
4. a training step of the noisy auto-encoder without any constraint, with the Parseval retraction, with
   the projection onto Delta <= 1 (the `dpae train` default) and with both.

Every figure is the median of --reps runs (>= 3), interleaved (ours, reference, ours, ...) so that a busy
machine slows both alike; the load average is recorded before and after every section.
Smoothing's CERTIFY adds n0 selection draws to the n here: its cost is that of n0 + n draws.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from dp_autoencoder.autoencoder import Architecture, NoiseConfig, PixelDPAutoencoder, load_autoencoder, preset
from dp_autoencoder.certificates import pixeldp_certify
from dp_autoencoder.distributed import bf16_is_native
from dp_autoencoder.sampler import NOISE_BLOCK, prepare_for_sampling, sample_votes
from dp_autoencoder.seeding import generator
from dp_autoencoder.sensitivity import parseval_retraction_
from dp_autoencoder.pipeline import Classify, DefendedClassifier, Preprocessing

REPO = Path(__file__).resolve().parents[1]
PAPER_LATENCY_S = {1: 0.01, 10: 0.02, 100: 0.13, 1000: 1.23}  # Lecuyer et al. 2019, Q4, their GPU
RETRACTION = "parseval retraction only"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0
PROGRESS = True  # progress bars on stderr; main() sets it from --quiet (and gpu_benchmark.py from its own)


def progress(iterable=None, **kwargs):
    """A tqdm bar (rate and ETA) on stderr, so that the log on stdout stays clean. Callers update it only
    between timed runs, never inside one; no monitor thread either, so nothing of tqdm runs while a clock does."""
    tqdm.monitor_interval = 0
    kwargs.setdefault("leave", False)
    return tqdm(iterable, dynamic_ncols=True, file=sys.stderr, disable=not PROGRESS, **kwargs)


def ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# --- the reference: Cohen et al.'s loop -------------------------------------------------------
def reference_sample_under_noise(model, x: torch.Tensor, num: int, num_classes: int, batch_size: int,
                                 seed: int, idx: int, purpose: str) -> np.ndarray:
    """SAMPLEUNDERNOISE(f, x, num, sigma) of Cohen, Rosenfeld, Kolter (ICML 2019), as their core.py runs it.

    counts <- 0; while num draws remain: batch <- b copies of x; predictions <- argmax f(batch + noise);
    counts += histogram(predictions) -- on the host, with numpy.  Here f is the whole defended model used
    as a black box (``model(batch, generator)`` = classifier(decoder(g(batch) + noise))), so the pre-noise
    map g is recomputed for every copy.  Batch j's noise comes from generator(seed, idx, purpose, j): with
    ``batch_size == NOISE_BLOCK`` it is exactly the noise ``sample_votes`` gives image ``idx``.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining, j = num, 0
    with torch.no_grad():
        while remaining > 0:
            b = min(batch_size, remaining)
            batch = x.unsqueeze(0).repeat(b, 1, 1, 1)
            logits = model(batch, generator=generator(seed, idx, purpose, j, device=x.device))
            counts += np.bincount(logits.argmax(1).cpu().numpy(), minlength=num_classes)
            remaining -= b
            j += 1
    return counts


def reference_votes(model, x: torch.Tensor, ids, num: int, num_classes: int, batch_size: int, seed: int = SEED,
                    purpose: str = "estimation") -> np.ndarray:
    """The reference's vote counts (images, classes), one image after the other."""
    return np.stack([reference_sample_under_noise(model, x[i], num, num_classes, batch_size, seed, int(idx), purpose)
                     for i, idx in enumerate(ids)])


def our_votes(model, x: torch.Tensor, ids, num: int, num_classes: int, batch_size: int, seed: int = SEED,
              purpose: str = "estimation", images_per_step: int = 8, autocast_dtype=None) -> np.ndarray:
    """Our engine's vote counts (images, classes): g(x) once per image, draws of several images per batch."""
    out = []
    size = tuple(x.shape[-2:])
    for start in range(0, len(x), images_per_step):
        xs = x[start:start + images_per_step]
        with torch.inference_mode():
            z = model.pre_noise(xs)
        votes = sample_votes(model, z, list(ids[start:start + images_per_step]), num, num_classes, size, seed,
                             purpose, batch_size=batch_size, autocast_dtype=autocast_dtype)
        out.append(votes.counts.cpu().numpy())
    return np.concatenate(out)


def certify_counts(counts: np.ndarray, noise: NoiseConfig, sensitivity: float) -> list:
    """The PixelDP certificate (Prop. 2, eta = 0.95, the default analytic profile: ~1.5 ms per image on one
    core) of every image: the same host work for both loops."""
    return [pixeldp_certify(c, 0.95, noise.kind, noise.scale, sensitivity, noise.eps, noise.delta) for c in counts]


# --- the stacks -----------------------------------------------------------------------------
@dataclass
class Stack:
    name: str
    title: str
    model: DefendedClassifier  # as loaded: the reference runs it
    images: torch.Tensor  # (k, C, H, W) in [0, 1]
    num_classes: int
    imagenet_sized: bool
    train: dict  # the auto-encoder to time a training step of: arch, channels, size, batch
    notes: list[str] = field(default_factory=list)
    calibration: dict | None = None  # random-weight classifiers: their BatchNorm recalibration (calibrate_batchnorm)


def _tiny_stack(k: int) -> Stack:
    """A few-kilobyte stack on 16 x 16 images (for --quick and the tests)."""
    torch.manual_seed(SEED)
    arch = Architecture(1, (8, 16), (4, 4), (2, 2))
    ae = PixelDPAutoencoder(arch, NoiseConfig("gaussian", 1.0, 1.0, 0.05))  # sigma 2.5: split votes
    ae.constrain_((16, 16))
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    # An untrained auto-encoder's output barely varies: a tiny std lets the noise split the votes.
    clf = Classify(net, Preprocessing(input_size=(1, 16, 16), mean=(0.5,), std=(0.002,)))
    images = torch.rand(k, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return Stack("tiny", "tiny test stack (2-conv auto-encoder + 1-conv classifier, 16 x 16, 4 classes)",
                 DefendedClassifier(ae.eval(), clf), images, 4, False,
                 dict(arch=arch, size=16, batch=8), ["random weights, random images: for --quick only"])


def _photos(size: int, crop_pct: float, k: int) -> tuple[torch.Tensor, str]:
    try:
        from dp_autoencoder.samples import SamplePhotos

        photos = SamplePhotos(size, crop_pct)
        x = torch.stack([photos[i][0] for i in range(len(photos))])
        return x[torch.arange(k) % len(x)], f"scikit-image sample photos at {size} x {size}"
    except Exception as e:  # no scikit-image: speed does not depend on the content
        return torch.rand(k, 3, size, size, generator=torch.Generator().manual_seed(1)), \
            f"random images at {size} x {size} (sample photos unavailable: {type(e).__name__})"


def _fmnist_stack(args, k: int) -> Stack:
    from dp_autoencoder.classifiers import load_classifier

    ae, config = load_autoencoder(args.fmnist_autoencoder)
    clf = load_classifier(args.fmnist_classifier)
    try:
        from dp_autoencoder.data import FashionMNIST

        data = FashionMNIST("test", args.data_root)
        images = torch.stack([data[i][0] for i in range(k)])
        source = f"the first {k} Fashion-MNIST test images"
    except Exception as e:
        images = torch.rand(k, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        source = f"random 28 x 28 images (Fashion-MNIST unavailable: {type(e).__name__})"
    arch = Architecture.from_dict(config["architecture"])
    return Stack("fmnist", f"Fashion-MNIST: {args.fmnist_autoencoder} + {args.fmnist_classifier} (timm "
                 f"{getattr(clf.model, 'default_cfg', {}).get('architecture', type(clf.model).__name__)}), 28 x 28",
                 DefendedClassifier(ae, clf), images, len(clf.class_names), False,
                 dict(arch=arch, size=28, batch=64), [f"images: {source}", f"noise: {ae.noise.kind}, "
                 f"L = {ae.noise.L}, sigma = {ae.noise.scale:.4f}"])


FP16_MAX = 65504.0


def calibrate_batchnorm(classifier: nn.Module, images: torch.Tensor) -> int:
    """Recompute every BatchNorm's running statistics from ``images`` (one pass, the BatchNorm layers alone in
    training mode, cumulative average), then freeze them again; returns how many layers were recalibrated.

    A random-weight network keeps BatchNorm's initial mean 0 / variance 1, under which a deep network's
    activations grow layer after layer (a random timm Inception-v3 gives logits near 1e12 on photos, and about
    half of its conv/linear outputs exceed float16's 65504): fp16 autocast would then time infs and NaNs, and
    its agreement with fp32 would mean nothing.  Statistics taken on real inputs make every layer's output
    O(1), as in a trained network.  Speed does not depend on the values."""
    layers = [m for m in classifier.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the statistics of all the images
        m.train()
    with torch.no_grad():
        classifier(images)
    for m in layers:
        m.eval()
    return len(layers)


def activation_range(forward, inputs: torch.Tensor, module: nn.Module) -> dict:
    """The largest |output| of every conv and linear layer of ``module`` during ``forward(inputs)`` (fp32), and of
    the logits: the numbers fp16 autocast (largest finite value 65504) has to hold."""
    peaks = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: peaks.__setitem__(
        name, max(peaks.get(name, 0.0), float(out.detach().abs().max()))))
        for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            logits = forward(inputs)
    finally:
        for h in hooks:
            h.remove()
    return {"layers": len(peaks), "max_abs_output": max(peaks.values()),
            "layers_over_fp16_max": sum(v > FP16_MAX for v in peaks.values()),
            "max_abs_logit": float(logits.abs().max()), "finite_logits": bool(torch.isfinite(logits).all())}


def _inception_stack(args, k: int) -> Stack:
    from dp_autoencoder.classifiers import load_classifier

    torch.manual_seed(SEED)
    ae = PixelDPAutoencoder(preset("imagenet", 3), NoiseConfig("gaussian", 0.1, 1.0, 0.05))
    ae.constrain_((299, 299))
    ae.eval()
    clf = load_classifier("inception_v3", pretrained=False)  # random weights: speed only
    images, source = _photos(299, 1.0, k)
    # The statistics of what the classifier sees in the benchmark: the photos, mirrored, and the random
    # auto-encoder's reconstructions of their noisy latents (near-flat images).
    photos, _ = _photos(299, 1.0, 7)
    with torch.no_grad():
        recon = ae(photos, generator(SEED, "calibration"))
    before = activation_range(clf, photos[:2], clf.model)
    layers = calibrate_batchnorm(clf, torch.cat([photos, photos.flip(-1), recon]))
    model = DefendedClassifier(ae, clf)
    after = activation_range(lambda x: model(x, generator(SEED, "range")), photos[:2], clf.model)
    calibration = {"images": 3 * len(photos), "batchnorm_layers": layers, "before": before, "after": after}
    return Stack("inception", "ImageNet-sized: the paper's `imagenet` auto-encoder (convs 32/32/64, kernels 10/8/5, "
                 "strides 2) + timm inception_v3, 299 x 299", model, images, 1000,
                 True, dict(arch=preset("imagenet", 3), size=299, batch=args.imagenet_train_batch),
                 ["random weights for both (speed does not depend on them)", f"images: {source}",
                  "noise: gaussian, L = 0.1, sigma = 0.2537 (latent 32 x 149 x 149 per draw)",
                  f"Inception-v3's {layers} BatchNorm layers recalibrated on {calibration['images']} images (the "
                  f"photos, mirrored, and noisy reconstructions) so that fp16 can hold its numbers: largest "
                  f"conv/linear output on two photos {before['max_abs_output']:.3g} before "
                  f"({before['layers_over_fp16_max']} of {before['layers']} layers over fp16's 65504), "
                  f"{after['max_abs_output']:.3g} after through the stack ({after['layers_over_fp16_max']} over); "
                  f"largest logit {before['max_abs_logit']:.3g} before, {after['max_abs_logit']:.3g} after"],
                 calibration=calibration)


def _efficientnet_stack(args, k: int) -> Stack:
    from dp_autoencoder.classifiers import load_classifier

    ae, _ = load_autoencoder(args.natural_autoencoder)
    clf = load_classifier("efficientnet_lite0-offline")
    images, source = _photos(224, clf.prep.crop_pct, k)
    design = "U-Net" if ae.arch.decoder == "unet" else "mirrored decoder"
    return Stack("efficientnet", f"ImageNet-sized: {short(args.natural_autoencoder)} ({design}) + EfficientNet-Lite0 "
                 "(efficientnet_lite0-offline, ImageNet weights), 224 x 224", DefendedClassifier(ae, clf), images,
                 1000, True, dict(arch=ae.arch, size=224, batch=args.imagenet_train_batch),
                 [f"images: {source}", f"noise: {ae.noise.kind}, L = {ae.noise.L}, sigma = {ae.noise.scale:.4f}"])


BUILDERS = {"tiny": lambda args, k: _tiny_stack(k), "fmnist": _fmnist_stack, "inception": _inception_stack,
            "efficientnet": _efficientnet_stack}


# --- timing ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(values) -> float:
    return float(statistics.median(values))


def load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def noisy_latent(model, x1: torch.Tensor, rows: int) -> torch.Tensor:
    with torch.inference_mode():
        z = model.pre_noise(x1[None])
        return z + model.sample_noise((rows, *z.shape[1:]), generator(SEED, "floor", device=z.device), z.device, z.dtype)


def measure_floor(model, x1, candidates, reps, amp, device, min_draws, log) -> dict:
    """Seconds per draw of the post-noise model alone at each batch size: the median of ``reps`` runs of
    ceil(min_draws / batch) forwards each, after a warm-up forward (oneDNN / cuDNN pick kernels per shape)."""
    out = {}
    for bs in progress(candidates, desc="floor: batch sizes", unit="size"):
        reset_peak_memory(device)  # each batch size its own peak, not the sweep's maximum
        forward, draws = floor_runner(model, x1, bs, bs, amp, device)
        forward()
        forward, draws = floor_runner(model, x1, bs, min_draws, amp, device)
        runs = [clock(forward, device) / draws for _ in range(reps)]
        out[bs] = {"s_per_draw": median(runs), "runs_s_per_draw": runs, "draws_per_run": draws,
                   "peak_memory_gib": peak_memory(device)}
        del forward
        log(f"  floor at batch {bs}: {median(runs) * 1e3:.3f} ms/draw"
            + (f", peak {out[bs]['peak_memory_gib']:.2f} GiB" if out[bs]["peak_memory_gib"] is not None else ""))
    return out


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    """GiB allocated at most on ``device`` since the last :func:`reset_peak_memory` (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def relative_logit_differences(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """||other - ref|| / ||ref|| per draw (rows of logits), in float64; inf where ``other`` is not finite."""
    ref, other = ref.double(), other.double()
    rel = (other - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)
    return torch.where(torch.isfinite(other).all(1), rel, torch.full_like(rel, float("inf")))


def precision_agreement(model, x, amp, device, draws: int) -> dict:
    """The autocast logits of noisy draws against the fp32 ones (the same noisy latents): the share of draws with
    the same argmax, the relative logit difference ||low - fp32|| / ||fp32|| (median and largest, over the
    finite draws) and how many draws gave a non-finite logit (fp16 overflows at 65504)."""
    size = tuple(x.shape[-2:])
    same = total = 0
    rel = []
    for i in range(len(x)):
        zz = noisy_latent(model, x[i], draws)
        with torch.inference_mode():
            ref = model.logits_from_noisy(zz, size).float()
            with torch.autocast(device.type, dtype=amp):
                low = model.logits_from_noisy(zz, size).float()
        same += int((ref.argmax(1) == low.argmax(1)).sum())
        total += len(ref)
        rel.append(relative_logit_differences(ref, low).cpu())
    rel = torch.cat(rel)
    finite = rel[torch.isfinite(rel)]
    return {"agree": same, "draws": total, "share": same / total, "nonfinite_draws": int((~torch.isfinite(rel)).sum()),
            "rel_logit_diff_median": float(finite.median()) if len(finite) else None,
            "rel_logit_diff_max": float(finite.max()) if len(finite) else None}


@dataclass
class Settings:
    device: torch.device
    amp: torch.dtype | None
    precision: str
    reps: int
    images_per_step: int
    channels_last: bool
    compile: bool


def our_model(stack: Stack, s: Settings):
    model = copy.deepcopy(stack.model)
    prepare_for_sampling(model, s.channels_last)
    if s.compile:  # an instance attribute: sample_votes calls model.logits_from_noisy
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # frozen weights become constants: BN folded into the convs
        model.logits_from_noisy = torch.compile(model.logits_from_noisy)
    return model


def floor_runner(model, x1, batch, draws, amp, device):
    """A function that runs ceil(draws / batch) forwards of the post-noise model alone; and their draw count."""
    size = tuple(x1.shape[-2:])
    zz = noisy_latent(model, x1, batch)
    iters = max(1, math.ceil(draws / batch))

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            for _ in range(iters):
                model.logits_from_noisy(zz, size)
    return forward, iters * batch


def bench_throughput(stack, ours, ref, n_list, batch, floor_s, s: Settings, min_draws, max_images, log,
                     refloor: bool, reference: list[dict] | None = None) -> list[dict]:
    """Ours and the reference on the same k images, interleaved; with ``refloor`` the floor at ``batch`` is
    measured again beside them (the same load, and no bias from having picked the best of the probes).

    ``reference``: the rows of an earlier call on the same stack and images, whose reference timings are reused
    instead of timing the reference again (it always runs fp32: tools/gpu_benchmark.py times it once per stack,
    not once per precision).  On CUDA each row has the peak memory of its runs."""
    earlier = {r["n"]: r for r in reference or []}
    noise = stack.model.noise
    size = tuple(stack.images.shape[-2:])
    sensitivity = stack.model.sensitivity(size)
    rows = []
    bar = progress(total=len(n_list) * s.reps, desc=f"throughput {stack.name}: n x reps", unit="run")
    for n in n_list:
        bar.set_postfix(n=n)
        k = max(1, min(max_images, math.ceil(min_draws / n)))
        x = stack.images[:k].to(s.device)
        ids = list(range(k))

        def run_ours():
            certify_counts(our_votes(ours, x, ids, n, stack.num_classes, batch, images_per_step=s.images_per_step,
                                     autocast_dtype=s.amp), noise, sensitivity)

        def run_ref():
            certify_counts(reference_votes(ref, x, ids, n, stack.num_classes, batch), noise, sensitivity)
        reuse = earlier.get(n) if earlier.get(n, {}).get("images") == k else None
        reset_peak_memory(s.device)
        floor_fn, floor_draws = floor_runner(ours, x[0], batch, min(k * n, min_draws // 2), s.amp, s.device)
        t_ours, t_ref, t_floor = [], [], []
        for _ in range(s.reps):
            if refloor:
                t_floor.append(clock(floor_fn, s.device) / floor_draws)
            t_ours.append(clock(run_ours, s.device))
            if reuse is None:
                t_ref.append(clock(run_ref, s.device))
            bar.update()  # after the clocks: not in any timed region
        t_ref = list(reuse["reference_runs_s"]) if reuse is not None else t_ref
        mo, mr = median(t_ours), median(t_ref)
        fl = median(t_floor) if refloor else floor_s
        row = {"n": n, "images": k, "ours_s": mo, "reference_s": mr, "ours_runs_s": t_ours, "reference_runs_s": t_ref,
               "floor_s_per_draw": fl, "floor_runs_s_per_draw": t_floor or None,
               "ours_images_per_s": k / mo, "ours_draws_per_s": k * n / mo, "reference_images_per_s": k / mr,
               "reference_draws_per_s": k * n / mr, "ratio": mr / mo, "efficiency": k * n * fl / mo,
               "reference_reused": reuse is not None, "peak_memory_gib": peak_memory(s.device), "load": load()}
        rows.append(row)
        log(f"  n={n:>5} ({k} images): ours {k * n / mo:9.1f} draws/s, reference {k * n / mr:9.1f} draws/s, "
            f"ratio {mr / mo:5.2f}x, floor {fl * 1e3:.3f} ms/draw, efficiency {row['efficiency']:.2f}")
    bar.close()
    return rows


def bench_ablation(stack, model, name, n, batch, s: Settings, min_draws, max_images, amp, log) -> dict:
    """Our loop alone, on another variant of the model or precision (for the ablation table)."""
    k = max(1, min(max_images, math.ceil(min_draws / n)))
    x = stack.images[:k].to(s.device)
    runs = [clock(lambda: our_votes(model, x, list(range(k)), n, stack.num_classes, batch,
                                    images_per_step=s.images_per_step, autocast_dtype=amp), s.device)
            for _ in range(s.reps)]
    row = {"variant": name, "n": n, "images": k, "s": median(runs), "runs_s": runs,
           "draws_per_s": k * n / median(runs), "load": load()}
    log(f"  ablation {name}: {row['draws_per_s']:.1f} draws/s")
    return row


def bench_latency(stack, ours, draws_list, batch, s: Settings, log) -> list[dict]:
    """Prediction of one image (pre-noise map, n draws, argmax of the votes), as the paper's Q4."""
    x1 = stack.images[:1].to(s.device)
    size = tuple(x1.shape[-2:])
    rows = []
    for n in progress(draws_list, desc=f"latency {stack.name}: n", unit="n"):
        def predict():
            with torch.inference_mode():
                z = ours.pre_noise(x1)
            votes = sample_votes(ours, z, [0], n, stack.num_classes, size, SEED, "predict", batch_size=batch,
                                 autocast_dtype=s.amp)
            return int(votes.counts[0].argmax())
        predict()
        runs = [clock(predict, s.device) for _ in range(max(s.reps, 5 if n <= 100 else s.reps))]
        rows.append({"n": n, "s": median(runs), "runs_s": runs, "paper_gpu_s": PAPER_LATENCY_S.get(n)})
        log(f"  latency n={n:>5}: {median(runs) * 1e3:9.2f} ms")
    return rows


def bench_training(stack, steps, s: Settings, log) -> dict:
    """Seconds per training step (dpae train's inner loop) under each constraint, and the constraint alone."""
    spec = stack.train
    torch.manual_seed(SEED)
    ae = PixelDPAutoencoder(spec["arch"], NoiseConfig("gaussian", 0.3, 1.0, 0.05)).to(s.device)
    size = (spec["size"], spec["size"])
    ae.constrain_(size)
    ae.train()
    step_size = (min(size[0], 64), min(size[1], 64))  # as dp_autoencoder.train: the bound on <= 64 x 64
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-3, weight_decay=1e-4)
    reps = spec["batch"] // len(stack.images) + 1
    x = stack.images.repeat(reps, 1, 1, 1)[:spec["batch"]]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if tuple(x.shape[-2:]) != size else x
    x = x.to(s.device)
    if x.shape[1] != spec["arch"].in_channels:
        x = x.mean(1, keepdim=True).expand(-1, spec["arch"].in_channels, -1, -1).contiguous()
    noise_gen = generator(SEED, "train", device=s.device)
    use_amp = s.device.type == "cuda"

    def step(method):
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.mse_loss(ae(x, noise_gen, 1.0).float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ae.constrain_(step_size, method, 0.05)

    methods = ("none", "parseval", "project", "both")
    per_step = {m: [] for m in methods}
    alone = {m: [] for m in methods if m != "none"}
    alone[RETRACTION] = []  # constrain_(.., "parseval") also computes the bound it returns; this is the step itself
    for m in methods:
        step(m)  # warm-up
    bar = progress(total=s.reps * len(methods), desc=f"training step {stack.name}: reps x constraints", unit="run")
    for _ in range(s.reps):
        for m in methods:
            per_step[m].append(clock(lambda: [step(m) for _ in range(steps)], s.device) / steps)
            bar.update()  # after the clock
        for m in methods[1:]:
            alone[m].append(clock(lambda: ae.constrain_(step_size, m, 0.05), s.device))
        alone[RETRACTION].append(clock(lambda: parseval_retraction_(ae.pre_noise_conv, 0.05), s.device))
    bar.close()
    base = median(per_step["none"])
    out = {"batch": spec["batch"], "image_size": spec["size"], "steps_per_run": steps, "step_s": {},
           "constraint_alone_s": {}, "overhead": {}, "overhead_constraint_alone": {}, "load": load()}
    for m in methods:
        out["step_s"][m] = {"median": median(per_step[m]), "runs": per_step[m]}
        if m != "none":
            out["overhead"][m] = median(per_step[m]) / base - 1
    for m, runs in alone.items():
        out["constraint_alone_s"][m] = {"median": median(runs), "runs": runs}
        out["overhead_constraint_alone"][m] = median(runs) / base
    log("  train step: " + ", ".join(f"{m} {median(per_step[m]) * 1e3:.1f} ms" for m in methods)
        + " | constraint alone / step: " + ", ".join(f"{m} {100 * v:.2f}%" for m, v in out["overhead_constraint_alone"].items()))
    return out


# --- the machine ----------------------------------------------------------------------------
def machine(device: torch.device) -> dict:
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line + " "
    except OSError:
        pass
    import timm

    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "device": str(device),
            "amx_bf16": " amx_bf16" in flags, "avx512_bf16": " avx512_bf16" in flags}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- the report -----------------------------------------------------------------------------
def fmt_s(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"


def short(path_text: str) -> str:
    """Paths inside the repository as the reader would type them."""
    return path_text.replace(str(REPO) + os.sep, "")


def render(result: dict) -> str:
    m, a = result["machine"], result["settings"]
    L = ["# Certification speed: benchmarks", "",
         f"Generated by `tools/benchmark.py` on {result['date']} in {result['total_s'] / 60:.1f} min.", "",
         "```bash", result["command"], "```", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}, timm {m['timm']}, "
         f"Python {m['python']}, device `{m['device']}`" + (f" ({m['gpu']})" if m.get("gpu") else "")
         + (", AMX-BF16" if m.get("amx_bf16") else "") + ".",
         f"Load average (1, 5, 15 min) at the start {result['load_start']}, at the end {result['load_end']}; "
         "each table gives it again beside its figures. The CPU is shared: a load above the core count means "
         "other jobs ran at the same time and every time here is slower than on a quiet machine (the ratios "
         "and efficiencies less so: both loops ran interleaved).", "",
         f"Settings: precision {a['precision']}, channels_last {'on' if a['channels_last'] else 'off'} for our loop, "
         f"torch.compile {'on' if a['compile'] else 'off'}, {a['images_per_step']} images per step (as `dpae certify`), "
         f"every figure the median of {a['reps']} runs.", ""]
    summary = result.get("headline", [])
    if summary:
        L += ["## Headline", ""] + [f"- {line}" for line in summary] + [""]
    L += ["## How it is measured", "",
          "- **Work**: PixelDP certification of k images with n noise draws each: the pre-noise map, n noisy "
          "forward passes through the rest of the auto-encoder and the classifier, the argmax votes, the PixelDP "
          "bound (Prop. 2, Clopper-Pearson, eta = 0.95). Randomized smoothing's CERTIFY adds n0 selection draws "
          "(100 by default in `dpae certify`): its cost is that of n0 + n draws here.",
          "- **Ours**: `dp_autoencoder.sampler.sample_votes` as `dpae certify` calls it: g(x) once per image, the "
          "draws of several images packed into full batches, noise drawn straight into a preallocated buffer, "
          "votes counted on the device; the model in channels_last (`sampler.prepare_for_sampling`).",
          "- **Reference**: the loop of Cohen et al.'s published `core.py` (`certify` -> `_sample_noise`), written "
          "from the paper's pseudo-code: one image at a time, the base classifier (the whole defended model as a "
          "black box, so g(x) is recomputed for every noisy copy) called on batches of `x.repeat(b)`, the "
          "predictions moved to the host and counted with numpy; fp32, the model as loaded, the same batch size "
          "and the same process. With batch size 100 its noise is exactly ours and so are its votes (checked below).",
          "- **Floor**: seconds per draw of the post-noise model alone (noisy latent in, logits out, our model and "
          "precision) at the best batch size, measured in the same run: first at every candidate batch size to pick "
          "it, then again at that batch size beside every row, interleaved with the two loops (one forward of a full "
          "batch for the ImageNet-sized stacks). **Efficiency** = n x k x floor / our time: the share of the floor "
          "our loop reaches (1.0 = nothing but the network itself).",
          "- **Ratio** = reference time / our time.", ""]
    for st in result["stacks"]:
        L += [f"## {short(st['title'])}", ""] + [f"- {note}" for note in st["notes"]]
        fl = st["floor"]
        L += [f"- floor (post-noise model alone, ms per draw): " + ", ".join(
            f"batch {bs}: {v['s_per_draw'] * 1e3:.3f}" for bs, v in fl.items()) + f"; best batch **{st['batch_size']}**"
            + (" (given by --batch-size)" if st.get("batch_given") else "") + ", used by both loops.",
              f"- load average during this stack: {st['load_start']} -> {st['load_end']}"]
        if st.get("precision_check"):
            pc = st["precision_check"]
            L += [f"- {a['precision']} autocast against fp32 on the same noisy latents: argmax agrees on "
                  f"{pc['agree']} of {pc['draws']} draws ({100 * pc['share']:.2f}%)"]
        if st.get("identical"):
            ic = st["identical"]
            L += [f"- same noise, same model (NCHW, fp32), reference at batch {NOISE_BLOCK}: our vote counts equal the "
                  f"reference's for {ic['equal_images']} of {ic['images']} images at n = {ic['n']} "
                  f"(largest difference {ic['max_abs_diff']} votes)"]
        if st.get("capped"):
            L += [f"- {st['capped']}"]
        L += ["", "| n | images | ours s/image | ours images/s | ours draws/s | reference draws/s | ours / reference "
              "| floor ms/draw | efficiency | load |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in st["throughput"]:
            L.append(f"| {r['n']:,} | {r['images']} | {fmt_s(r['ours_s'] / r['images'])} | {fmt_rate(r['ours_images_per_s'])} "
                     f"| {fmt_rate(r['ours_draws_per_s'])} | {fmt_rate(r['reference_draws_per_s'])} | **{r['ratio']:.2f}x** "
                     f"| {r['floor_s_per_draw'] * 1e3:.3f} | **{r['efficiency']:.2f}** | {r['load'][0] if r['load'] else ''} |")
        if st.get("ablations"):
            L += ["", "Variants of our loop (the same work as the row above with that n; measured after it):", "",
                  "| variant | n | images | draws/s | / reference | / ours (default) |", "|---|---|---|---|---|---|"]
            for r in st["ablations"]:
                vs = lambda key: f"{r[key]:.2f}x" if key in r else ""
                L.append(f"| {r['variant']} | {r['n']:,} | {r['images']} | {fmt_rate(r['draws_per_s'])} | {vs('vs_reference')} "
                         f"| {vs('vs_ours')} |")
        if st.get("latency"):
            L += ["", "Prediction latency of one image against the number of draws (pre-noise map, n draws, argmax):", "",
                  "| draws | this machine | paper (their GPU, ImageNet) |", "|---|---|---|"]
            for r in st["latency"]:
                paper = f"{r['paper_gpu_s']:.2f} s" if r.get("paper_gpu_s") else ""
                L.append(f"| {r['n']:,} | {fmt_s(r['s'])} | {paper} |")
        if st.get("training"):
            t = st["training"]
            L += ["", f"Training step of this auto-encoder (batch {t['batch']}, {t['image_size']} x {t['image_size']}, "
                  f"AdamW, noise on; the constraint after every step as `dpae train`, the exact bound on a "
                  f"<= 64 x 64 grid), median of {a['reps']} runs of {t['steps_per_run']} steps:", "",
                  "| constraint after each step | s/step | overhead vs none | constraint alone / step |",
                  "|---|---|---|---|"]
            names = {"parseval": "parseval (`constrain_`: retraction + the bound it returns)",
                     "project": "project (the `dpae train` default)", "both": "both"}
            for mth, v in t["step_s"].items():
                over = "" if mth == "none" else f"{100 * t['overhead'][mth]:+.1f}%"
                alone = "" if mth == "none" else f"{100 * t['overhead_constraint_alone'][mth]:.2f}%"
                L.append(f"| {names.get(mth, mth)} | {fmt_s(v['median'])} | {over} | {alone} |")
            if RETRACTION in t["constraint_alone_s"]:
                L.append(f"| {RETRACTION} (`sensitivity.parseval_retraction_`) | | | "
                         f"{100 * t['overhead_constraint_alone'][RETRACTION]:.2f}% "
                         f"({fmt_s(t['constraint_alone_s'][RETRACTION]['median'])}) |")
            L += ["", "(The paper reports 1.5% for its Parseval step: compare the retraction-only row. `overhead vs none` "
                  "is a difference of two noisy medians; `constraint alone / step` times the constraint by itself and "
                  "divides by the median step without it. `constrain_(..., \"parseval\")` also computes the proven "
                  "bound on the 64 x 64 grid to return it, which `dpae train` discards.)"]
        L.append("")
    L += ["## Caps and notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(L)


def headline(stacks: list[dict]) -> list[str]:
    lines = []
    for st in stacks:
        tp = st["throughput"]
        if tp:
            ratios = [r["ratio"] for r in tp]
            eff = [r["efficiency"] for r in tp]
            lines.append(f"**{st['name']}**: ours / reference **{min(ratios):.2f}x to {max(ratios):.2f}x** over n = "
                         f"{', '.join(str(r['n']) for r in tp)}; efficiency **{min(eff):.2f} to {max(eff):.2f}** of the "
                         f"floor; up to {fmt_rate(max(r['ours_draws_per_s'] for r in tp))} draws/s "
                         f"(batch {st['batch_size']})")
        for r in st.get("ablations", []):
            if "vs_reference" in r:
                lines.append(f"{st['name']}, {r['variant']}: {r['vs_reference']:.2f}x the reference at n = {r['n']}")
        if st.get("latency"):
            lines.append(f"{st['name']} prediction latency of one image: " + ", ".join(
                f"{r['n']} draws {fmt_s(r['s'])}" for r in st["latency"]))
        if st.get("training"):
            t = st["training"]
            oc = t["overhead_constraint_alone"]
            lines.append(f"{st['name']} training step ({t['image_size']} x {t['image_size']}, batch {t['batch']}): the "
                         f"Parseval retraction costs {100 * oc.get(RETRACTION, float('nan')):.2f}% of a step (paper: 1.5%), "
                         f"`constrain_(.., 'parseval')` with the bound it returns {100 * oc['parseval']:.2f}%, the "
                         f"projection onto Delta <= 1 (`dpae train`'s default) {100 * oc['project']:.2f}% (each timed alone)")
    return lines


# --- main -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"),
                   help="the Markdown report (default docs/benchmarks.md); the raw numbers go to the same name .json")
    p.add_argument("--quick", action="store_true", help="tiny models, small n, a few seconds (CI and tests)")
    p.add_argument("--stacks", default=None,
                   help="comma list of fmnist, inception, efficientnet, tiny (default: the first three; --quick: tiny)")
    p.add_argument("--n", type=ints, default=None, help="draws per image, small stacks (default 25,100,300,1000,10000)")
    p.add_argument("--imagenet-n", type=ints, default=None,
                   help="draws per image for the ImageNet-sized stacks (default 25,100: n = 300 takes ~3 min per run "
                        "on a 2-core CPU)")
    p.add_argument("--latency-n", type=ints, default=None, help="draws for the latency table (default 1,10,25,100,300,1000)")
    p.add_argument("--imagenet-latency-n", type=ints, default=None, help="the same for ImageNet-sized stacks (default 1,10,25)")
    p.add_argument("--reps", type=int, default=3, help="runs per figure, the median is reported (>= 3; default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="draws per forward for both loops (default: the best "
                   "of --batch-sizes by the floor measurement)")
    p.add_argument("--batch-sizes", type=ints, default=None, help="candidates for small stacks (default 32,64,128,256,512)")
    p.add_argument("--imagenet-batch-sizes", type=ints, default=None, help="candidates for ImageNet-sized stacks (default 8,16,32)")
    p.add_argument("--min-draws", type=int, default=None,
                   help="small stacks: certify at least this many draws per timed run, ceil(min_draws / n) images "
                        "(default 4000)")
    p.add_argument("--imagenet-images", type=int, default=1, help="images per timed run for ImageNet-sized stacks (default 1)")
    p.add_argument("--images-per-step", type=int, default=8, help="images whose draws our loop packs together (default 8, "
                   "as dpae certify)")
    p.add_argument("--parts", default="throughput,ablations,latency,train",
                   help="what to run (default throughput,ablations,latency,train)")
    p.add_argument("--train-steps", type=int, default=None, help="training steps per timed run (default 10; ImageNet-sized 2)")
    p.add_argument("--imagenet-train-batch", type=int, default=4, help="training batch at 299/224 (default 4)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="our loop's autocast (default auto: fp32 on the CPU; on a GPU bf16 where it computes it "
                        "natively, else fp16; checked against fp32)")
    p.add_argument("--no-channels-last", action="store_true", help="keep the model in NCHW for our loop")
    p.add_argument("--compile", action="store_true", help="torch.compile the post-noise model for our loop")
    p.add_argument("--fmnist-autoencoder", default=str(REPO / "pretrained" / "fmnist-ae-L0.3"))
    p.add_argument("--fmnist-classifier", default=str(REPO / "pretrained" / "fmnist-classifier"))
    p.add_argument("--natural-autoencoder", default=str(REPO / "pretrained" / "natural-ae-L0.1"))
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="measure nothing: rewrite --out from the raw numbers of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr; the log stays on stdout)")
    return p


def resolve(args) -> argparse.Namespace:
    if args.reps < 3:
        raise SystemExit("--reps must be >= 3 (every figure is a median)")
    q = args.quick
    args.stacks = (args.stacks or ("tiny" if q else "fmnist,inception,efficientnet")).split(",")
    for name in args.stacks:
        if name not in BUILDERS:
            raise SystemExit(f"unknown stack {name!r}; choose from {', '.join(BUILDERS)}")
    args.n = args.n or ([25, 100, 300] if q else [25, 100, 300, 1000, 10000])
    args.imagenet_n = args.imagenet_n or ([25] if q else [25, 100])
    args.latency_n = args.latency_n or ([1, 10, 25] if q else [1, 10, 25, 100, 300, 1000])
    args.imagenet_latency_n = args.imagenet_latency_n or [1, 10, 25]
    args.batch_sizes = args.batch_sizes or ([32, 64] if q else [32, 64, 128, 256, 512])
    args.imagenet_batch_sizes = args.imagenet_batch_sizes or ([8] if q else [8, 16, 32])
    args.min_draws = args.min_draws or (300 if q else 4000)
    args.parts = set(args.parts.split(","))
    unknown = args.parts - {"throughput", "ablations", "latency", "train"}
    if unknown:
        raise SystemExit(f"unknown --parts {sorted(unknown)}")
    return args


def main(argv=None) -> dict:
    global PROGRESS
    args = resolve(build_parser().parse_args(argv))
    PROGRESS = not args.quiet
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        Path(args.out).write_text(render(result))
        print(f"wrote {args.out} from {args.from_json}")
        return result
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision
    if precision == "auto":
        precision = ("bf16" if bf16_is_native(device) else "fp16") if device.type == "cuda" else "fp32"
    s = Settings(device, PRECISIONS[precision], precision, args.reps, args.images_per_step, not args.no_channels_last,
                 args.compile)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):  # tqdm.write: the same line on stdout, with the bars on stderr moved out of its way
        tqdm.write(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stdout)
        sys.stdout.flush()

    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in ([os.path.relpath(__file__, REPO)] + list(
                  sys.argv[1:] if argv is None else argv))),
              "machine": machine(device), "load_start": load(),
              "settings": {"precision": precision, "channels_last": s.channels_last, "compile": s.compile,
                           "images_per_step": s.images_per_step, "reps": s.reps, "min_draws": args.min_draws,
                           "imagenet_images": args.imagenet_images},
              "stacks": [], "notes": []}
    log(f"machine: {result['machine']}; load {result['load_start']}")
    for name in progress(args.stacks, desc="benchmark: stacks", unit="stack", leave=True):
        log(f"[{name}] loading")
        big = name in ("inception", "efficientnet")
        n_list = args.imagenet_n if big else args.n
        max_images = args.imagenet_images if big else max(math.ceil(args.min_draws / min(n_list)), 1)
        stack = BUILDERS[name](args, max(max_images, 2))
        stack.model.to(s.device)
        ref = stack.model
        ours = our_model(stack, s)
        st = {"name": name, "title": stack.title, "notes": stack.notes, "load_start": load(), "imagenet_sized": big}
        x1 = stack.images[0].to(s.device)
        floor = measure_floor(ours, x1, args.imagenet_batch_sizes if big else args.batch_sizes, s.reps, s.amp,
                              s.device, 1 if big else args.min_draws // 4, log)
        st["floor"] = floor
        best = min(floor, key=lambda bs: floor[bs]["s_per_draw"])
        batch = args.batch_size or best
        st["batch_size"], st["batch_given"] = batch, args.batch_size is not None
        floor_s = floor[batch]["s_per_draw"] if batch in floor else floor[best]["s_per_draw"]
        if s.amp is not None:
            st["precision_check"] = precision_agreement(stack.model, stack.images[:2].to(s.device), s.amp, s.device,
                                                        min(batch, 256))
            log(f"  {precision} vs fp32 argmax agreement: {st['precision_check']['share']:.4f}")
        if not big:  # the reference at batch NOISE_BLOCK draws our noise: the votes must be the same
            n_check = min(300, max(n_list))
            k = min(4, len(stack.images))
            xs = stack.images[:k].to(s.device)
            a = our_votes(stack.model, xs, list(range(k)), n_check, stack.num_classes, batch)
            b = reference_votes(stack.model, xs, list(range(k)), n_check, stack.num_classes, NOISE_BLOCK)
            st["identical"] = {"n": n_check, "images": k, "equal_images": int((a == b).all(1).sum()),
                               "max_abs_diff": int(np.abs(a - b).max()),
                               "sums_ok": bool((a.sum(1) == n_check).all() and (b.sum(1) == n_check).all())}
            log(f"  same noise: {st['identical']['equal_images']}/{k} images with identical votes")
        else:
            st["capped"] = (f"n capped at {', '.join(map(str, n_list))} with {args.imagenet_images} image per timed run "
                            f"(--imagenet-n, --imagenet-images): one draw costs ~{fmt_s(floor_s)} here, so n = 10,000 "
                            f"would take ~{fmt_s(1e4 * floor_s * 2 * s.reps)} for the two loops and {s.reps} runs")
        st["throughput"] = []
        if "throughput" in args.parts:
            st["throughput"] = bench_throughput(stack, ours, ref, n_list, batch, floor_s, s,
                                                1 if big else args.min_draws, max_images, log, refloor=True)
        if "ablations" in args.parts and not big:
            n_ab = 300 if 300 in n_list else n_list[len(n_list) // 2]
            abl = []
            if s.channels_last:
                abl.append(bench_ablation(stack, stack.model, "NCHW (no channels_last), same precision", n_ab, batch,
                                          s, args.min_draws, max_images, s.amp, log))
            if s.amp is None and s.device.type == "cpu" and result["machine"]["avx512_bf16"]:
                pc = precision_agreement(stack.model, stack.images[:2].to(s.device), torch.bfloat16, s.device,
                                         min(batch, 256))
                row = bench_ablation(stack, ours, f"bf16 autocast (argmax agrees with fp32 on {100 * pc['share']:.2f}% "
                                     f"of {pc['draws']} draws)", n_ab, batch, s, args.min_draws,
                                     max_images, torch.bfloat16, log)
                row["agreement"] = pc
                abl.append(row)
            same_n = {r["n"]: r for r in st["throughput"]}
            for row in abl:
                if row["n"] in same_n:
                    row["vs_reference"] = row["draws_per_s"] / same_n[row["n"]]["reference_draws_per_s"]
                    row["vs_ours"] = row["draws_per_s"] / same_n[row["n"]]["ours_draws_per_s"]
            st["ablations"] = abl
        if "latency" in args.parts:
            st["latency"] = bench_latency(stack, ours, args.imagenet_latency_n if big else args.latency_n, batch, s, log)
        if "train" in args.parts and name != "efficientnet":  # one ImageNet-sized training step (inception) is enough
            steps = args.train_steps or (2 if big else (3 if args.quick else 10))
            st["training"] = bench_training(stack, steps, s, log)
        st["load_end"] = load()
        result["stacks"].append(st)
        del stack, ours, ref
    result["notes"] += [
        f"ImageNet-sized stacks: n = {', '.join(map(str, args.imagenet_n))} only and {args.imagenet_images} image per "
        "timed run, latency up to " + f"{max(args.imagenet_latency_n)} draws, so that the whole tool runs in about "
        "15 minutes on a 2-core CPU; with a GPU pass --imagenet-n 25,100,300,1000,10000 --imagenet-images 8.",
        "The ratio on a CPU is bounded by what the reference wastes: the pre-noise conv on every copy, half-empty "
        "batches when n is small, and host round trips. When the post-noise network dominates (ImageNet-sized "
        "classifiers on a CPU) both loops spend nearly all their time in it and the ratio tends to the channels_last "
        "gain alone; on a GPU the per-image launches and host syncs of the reference cost far more.",
        "bf16 autocast (CPU AMX or GPU) is not the default of `dpae certify`: it changes a few votes (see the "
        "agreement above); the certificate stays valid for the model as run, but it is a different model.",
    ]
    cores = os.cpu_count() or 1
    if args.threads and args.threads < cores:
        result["notes"].append(
            f"Run with --threads {args.threads} of {cores} cores because other jobs shared the CPU: with every core's "
            "OpenMP thread in use, each parallel op waits at its barrier for a thread that another process holds "
            "(a 2.5 MB multiply took 12 ms with 2 threads and 0.09 ms with 1 on this machine under that load). On "
            "a quiet machine drop --threads; times then shrink, ratios and efficiencies move less.")
    result["headline"] = headline(result["stacks"])
    result["load_end"] = load()
    result["total_s"] = time.perf_counter() - t_start
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.write_text(render(result))
    log(f"wrote {out} and {json_path} in {result['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
