"""Training the noisy auto-encoder on reconstruction only (`dpae train`).

Loss: ||AE(x; noise) - x||^2, the clean image reconstructed from the noisy pass; optionally, after
``mse_epochs`` of that alone (Salman et al. 2020's recipe), plus the stability loss through a frozen
classifier and a classification loss against the data's labels.  After every optimizer step the
pre-noise conv is constrained (projection onto Delta <= target by default, optionally the Parseval
retraction), so the calibrated sigma keeps its meaning.  Neither loss touches the certificate: the
pre-noise layer's Delta is what the constraint keeps, and everything after the noise is post-processing.

Learning rate: constant, or a cosine from ``lr`` to 0 over the MSE phase and, when the classifier's
losses join, a second cosine from ``finetune_lr`` to 0 over the rest (computed from the step count,
so a resumed run follows the same schedule).

Reproducibility: the data order of epoch e comes from a generator seeded by (seed, e) and the
noise of epoch e on rank r from (seed, e, r), so a run resumed from the checkpoint of epoch e
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from .autoencoder import Architecture, NoiseConfig, PixelDPAutoencoder, load_autoencoder, preset, save_autoencoder
from .checkpoint import atomic_write_bytes, load_tensors, optimizer_from_tensors, optimizer_to_tensors
from .data import collate_skipping, set_epoch, training_data
from .distributed import bf16_is_native, local_device, process_group, rank_world
from .macs import autoencoder_macs
from .seeding import generator


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, no readable data, settings that contradict the checkpoint)."""


@dataclass(frozen=True)
class TrainSettings:
    data: str
    out: str
    L: float = 0.1
    noise: str = "gaussian"
    eps: float = 1.0
    delta: float = 0.05
    arch: str = "small"
    noise_placement: str = "latent"
    image_size: int | None = None
    channels: int | None = None
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    constraint: str = "project"
    parseval_beta: float = 0.05
    noise_warmup_steps: int = 0
    steps_per_epoch: int | None = None
    num_images: int = 20000
    val_images: int = 1000
    seed: int = 0
    workers: int = 0
    data_root: str | None = None
    download: bool = False
    stability_classifier: str | None = None  # the frozen classifier of the two losses below
    stability_weight: float = 0.0  # Salman et al. (2020): match its output on the clean image
    classification_weight: float = 0.0  # cross-entropy of its output against the data's labels
    stability_target: str = "soft"  # "soft": the clean softmax (= KL up to a constant); "hard": its argmax
    stability_temperature: float = 1.0  # softmax temperature of both sides ("soft"), loss scaled by T^2
    init_from: str | None = None  # start from this checkpoint's weights (same architecture; fresh optimizer)
    mse_epochs: int = 0  # epochs of MSE alone before those losses join
    finetune_lr: float | None = None  # learning rate once they join (default: lr)
    lr_schedule: str = "constant"  # or "cosine"
    crop: str = "center"  # folders: "random" = random-resized crops with flips
    epoch_images: int | None = None  # random crops per epoch (default: one per file)
    class_split: str | None = None  # ImageNet trees: "train" or "val" half of the classes
    precision: str = "auto"  # "fp32", "bf16" (autocast), "auto": bf16 on GPUs and AMX CPUs

    # Settings that may differ between a run and its resumption.
    RESUMABLE_CHANGES = ("out", "epochs", "workers", "download", "data_root")

    def check(self) -> None:
        for name in ("epochs", "batch_size", "num_images", "val_images"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or (self.finetune_lr is not None and not self.finetune_lr > 0):
            raise TrainingError(f"--lr and --finetune-lr must be > 0, got {self.lr} and {self.finetune_lr}")
        if self.stability_weight < 0 or self.classification_weight < 0:
            raise TrainingError("--stability-weight and --classification-weight must be >= 0")
        if (self.stability_weight > 0 or self.classification_weight > 0) != (self.stability_classifier is not None):
            raise TrainingError("--stability-weight or --classification-weight > 0 needs --stability-classifier, "
                                "and the reverse")
        if not 0 <= self.mse_epochs < self.epochs and self.stability_classifier is not None:
            raise TrainingError(f"--mse-epochs must be in 0..{self.epochs - 1} (--epochs {self.epochs}) so that the "
                                f"classifier's losses train at all, got {self.mse_epochs}")
        for name, value, allowed in (("lr-schedule", self.lr_schedule, LR_SCHEDULES),
                                     ("precision", self.precision, PRECISIONS), ("crop", self.crop, CROPS)):
            if value not in allowed:
                raise TrainingError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.stability_target not in STABILITY_TARGETS:
            raise TrainingError(f"--stability-target must be one of {', '.join(STABILITY_TARGETS)}, "
                                f"got {self.stability_target!r}")
        if not (math.isfinite(self.stability_temperature) and self.stability_temperature > 0):
            raise TrainingError(f"--stability-temperature must be > 0, got {self.stability_temperature}")
        if self.stability_target == "hard" and self.stability_temperature != 1.0:
            raise TrainingError("--stability-temperature applies to the soft target only")
        for name in ("steps_per_epoch", "epoch_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

    @property
    def sources(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data)


LR_SCHEDULES = ("constant", "cosine")
STABILITY_TARGETS = ("soft", "hard")
PRECISIONS = ("auto", "fp32", "bf16")
CROPS = ("center", "random")


def learning_rate(settings: TrainSettings, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    total = settings.epochs * steps_per_epoch
    joined = settings.mse_epochs * steps_per_epoch if settings.stability_classifier else None
    if joined is None:
        lr, start, end = settings.lr, 0, total
    elif step < joined:
        lr, start, end = settings.lr, 0, joined
    else:
        lr, start, end = settings.finetune_lr or settings.lr, joined, total
    if settings.lr_schedule == "constant":
        return lr
    return 0.5 * lr * (1 + math.cos(math.pi * (step - start) / max(end - start, 1)))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the labels that are known (>= 0); zero when none is."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    if int(labels.max()) >= logits.shape[1]:
        raise TrainingError(f"label {int(labels.max())} is outside the classifier's {logits.shape[1]} classes")
    return F.cross_entropy(logits[known], labels[known])


def psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def evaluate_psnr(model: PixelDPAutoencoder, dataset, batch_size: int, device, seed: int,
                  workers: int = 0) -> tuple[float, int]:
    """Mean-squared error of AE(x; noise) against x over ``dataset`` -> (PSNR in dB, images)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping)
    noise_gen = generator(seed, "val", device=device)
    total, count = 0.0, 0
    for x, _, _ in loader:
        if x is None:
            continue
        x = x.to(device)
        z = model.pre_noise(x)
        z = z + model.sample_noise(z.shape, noise_gen, device)
        recon = model.post_noise(z, tuple(x.shape[-2:]))
        total += F.mse_loss(recon, x, reduction="sum").item() / x[0].numel()
        count += len(x)
    model.train()
    if count == 0:
        raise TrainingError("no readable validation image")
    return psnr(total / count), count


def stability_loss(classifier, recon: torch.Tensor, x: torch.Tensor, logits: torch.Tensor | None = None,
                   target: str = "soft", temperature: float = 1.0) -> torch.Tensor:
    """Salman et al. (2020): cross-entropy of the frozen classifier's output on the reconstruction
    against its prediction on the clean image: the soft labels (``target="soft"``; equal to the KL divergence
    from the clean softmax up to its entropy, a constant, so the same gradients), optionally both softmaxes at
    ``temperature`` T with the loss scaled by T^2 (Hinton et al.'s distillation); or the clean argmax
    (``target="hard"``).  Gradients reach the auto-encoder only: the classifier's parameters are frozen and
    its clean output is computed without a graph.  ``logits``: the classifier's output on ``recon`` when
    already computed."""
    with torch.no_grad():
        clean = classifier(x).float()
    logits = (classifier(recon) if logits is None else logits).float()
    if target == "hard":
        return F.cross_entropy(logits, clean.argmax(1))
    t = float(temperature)
    soft = (clean / t).softmax(1)
    return -(soft * (logits / t).log_softmax(1)).sum(1).mean() * (t * t)


def _settings_from_checkpoint(config: dict) -> dict:
    return config.get("training", {}).get("settings", {})


def train(settings: TrainSettings, resume: bool = False, device: str | None = None,
          progress: bool = True) -> Path:
    """Train and checkpoint every epoch into ``settings.out``; returns the checkpoint folder."""
    settings.check()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with process_group(device):
        rank, world = rank_world()
        return _train(settings, resume, local_device(device), progress and rank == 0, Path(settings.out), rank, world)


def _train(settings, resume, device, progress, out, rank, world) -> Path:
    has_checkpoint = (out / "config.json").exists()
    if has_checkpoint and not resume:
        raise TrainingError(f"{out} already holds a checkpoint; pass --resume to continue it, "
                            "or choose another --out")
    if resume and not has_checkpoint:
        raise TrainingError(f"--resume: no checkpoint in {out} to resume from")

    train_set, val_set, channels, image_size = training_data(
        settings.sources, settings.image_size, settings.channels, settings.seed, settings.data_root,
        settings.download, settings.num_images, settings.val_images, settings.crop, settings.epoch_images,
        settings.class_split)
    size = (image_size, image_size)
    # The exact bound costs ~0.2 s at 299x299: each step projects with the bound of a
    # smaller grid, and every checkpoint projects exactly at the training size.
    step_size = (min(image_size, 64), min(image_size, 64))

    start_epoch, global_step, init_sha = 0, 0, None
    if resume:
        model, config = load_autoencoder(out)
        if "optimizer" not in config["files"] or "epochs_done" not in config.get("training", {}):
            raise TrainingError(f"--resume: {out} holds an auto-encoder but no training state (epochs, optimizer); "
                                "it was not written by dpae train, so there is nothing to continue")
        previous = _settings_from_checkpoint(config)
        if isinstance(previous.get("data"), str):
            previous["data"] = [previous["data"]]
        # Checkpoints from before --precision trained in bf16 on GPUs and fp32 on CPUs: say so, not switch silently.
        previous.setdefault("precision", "bf16" if device.type == "cuda" else "fp32")
        defaults = asdict(TrainSettings(data="", out=""))  # settings older checkpoints did not record
        mine = json.loads(json.dumps({**asdict(settings), "data": settings.sources}))
        changed = {k: (previous.get(k, defaults[k]), v) for k, v in mine.items()
                   if k not in TrainSettings.RESUMABLE_CHANGES and previous.get(k, defaults[k]) != v}
        if changed:
            raise TrainingError("cannot resume with other settings: " + ", ".join(
                f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items()))
        start_epoch = config["training"]["epochs_done"]
        init_sha = config["training"].get("init_from_weights_sha256")
        global_step = config["training"]["steps"]
    else:
        arch: Architecture = preset(settings.arch, channels, settings.noise_placement)
        noise = NoiseConfig(settings.noise, settings.L, settings.eps, settings.delta)
        torch.manual_seed(settings.seed)
        model = PixelDPAutoencoder(arch, noise)
        if settings.init_from:
            init_sha = _initialize_from(model, settings.init_from)
        model.constrain_(size, settings.constraint, settings.parseval_beta)
    if model.arch.in_channels != channels:
        raise TrainingError(f"the data has {channels} channels but the model takes {model.arch.in_channels}")
    model.to(device).train()

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if resume:
        optimizer_from_tensors(optimizer, load_tensors(out, config, "optimizer"), config["training"]["optimizer"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log_path = out / "train_log.jsonl"
    if rank == 0 and not resume:
        log_path.unlink(missing_ok=True)
    if rank == 0 and resume:
        _keep_log_lines_up_to(log_path, start_epoch)
    use_amp = settings.precision == "bf16" or (settings.precision == "auto" and bf16_is_native(device))
    classifier = None
    if settings.stability_classifier:
        from .classifiers import load_classifier

        classifier = load_classifier(settings.stability_classifier).to(device)

    for epoch in range(start_epoch, settings.epochs):
        if world > 1:
            sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=settings.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_set, generator=generator(settings.seed, epoch, "order"))
        set_epoch(train_set, epoch)
        loader = DataLoader(train_set, batch_size=settings.batch_size, sampler=sampler,
                            num_workers=settings.workers, collate_fn=collate_skipping,
                            drop_last=True, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        steps = len(loader) if settings.steps_per_epoch is None else min(len(loader), settings.steps_per_epoch)
        noise_gen = generator(settings.seed, epoch, rank, "noise", device=device)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress,
                   dynamic_ncols=True)
        t0, seen, skipped, loss_sum, total_sum, batches = time.perf_counter(), 0, 0, 0.0, 0.0, 0
        with_classifier = classifier is not None and epoch >= settings.mse_epochs
        for step, (x, labels, bad) in enumerate(loader):
            if step >= steps:
                break
            skipped += bad
            if x is None:
                continue
            x, labels = x.to(device, non_blocking=True), labels.to(device)
            multiplier = 1.0 if settings.noise_warmup_steps <= 0 else min(1.0, (global_step + 1) / settings.noise_warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, global_step, steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                recon = net(x, noise_gen, multiplier)
                mse = F.mse_loss(recon.float(), x)
                loss = mse
                if with_classifier:
                    logits = classifier(recon)
                    if settings.stability_weight:
                        loss = loss + settings.stability_weight * stability_loss(
                            classifier, recon, x, logits, settings.stability_target, settings.stability_temperature)
                    if settings.classification_weight:
                        loss = loss + settings.classification_weight * classification_loss(logits.float(), labels)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopping. "
                    f"The last good checkpoint in {out} is kept; try a lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.constrain_(step_size, settings.constraint, settings.parseval_beta)
            global_step += 1
            seen += len(x)
            loss_sum += mse.item()
            total_sum += loss.item()
            batches += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr(mse.item()):.2f}")
        bar.close()
        if batches == 0:
            raise TrainingError(f"no readable training image in epoch {epoch + 1} ({skipped} skipped)")
        if skipped and rank == 0:
            print(f"warning: skipped {skipped} unreadable images in epoch {epoch + 1}", flush=True)
        seconds = time.perf_counter() - t0
        if settings.constraint in ("project", "both") and step_size != size:
            model.constrain_(size, "project")
        if rank == 0:
            val_psnr, _ = evaluate_psnr(model, val_set, settings.batch_size, device, settings.seed)
            record = {
                "epoch": epoch + 1, "steps": global_step, "train_loss": total_sum / batches,
                "train_mse": loss_sum / batches, "lr": optimizer.param_groups[0]["lr"],
                "train_psnr": psnr(loss_sum / batches), "val_psnr": val_psnr,
                "sensitivity": model.sensitivity(size), "images_per_s": seen * world / seconds,
                "seconds": seconds, "skipped": skipped,
            }
            # The log line goes first: a run stopped before the checkpoint that follows it leaves a line that
            # the resumed run drops and writes again, rather than a checkpoint whose line is lost.
            out.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_autoencoder(model, out, size, extra_tensors={"optimizer": opt_tensors}, training={
                "settings": asdict(settings), "epochs_done": epoch + 1, "steps": global_step,
                "world_size": world, "optimizer": opt_meta, "val_psnr": val_psnr,
                # What --init-from named may later hold other weights: the ones this run started from.
                **({"init_from_weights_sha256": init_sha} if init_sha else {}),
            })
            if progress:
                print(f"epoch {epoch + 1}: train PSNR {record['train_psnr']:.2f} dB, val PSNR {val_psnr:.2f} dB "
                      f"(noisy), Delta {record['sensitivity']:.4f}, {record['images_per_s']:.0f} images/s",
                      flush=True)
        if world > 1:
            dist.barrier()
    return out


def _initialize_from(model: PixelDPAutoencoder, name: str) -> str:
    """Copy the weights of the front-end ``name`` (a shipped name, a checkpoint folder or a hub name; verified by
    its sha256) into ``model``: the architecture must be the same; the noise may differ (e.g. an L = 0.3
    front-end started from an L = 0.1 one).  Returns the sha256 of the weights copied."""
    from ._registry import resolve_model

    other, config = load_autoencoder(resolve_model(name, "front-end").local_path())
    if other.arch != model.arch:
        raise TrainingError(f"--init-from {name}: its architecture {other.arch} differs from this run's {model.arch}")
    model.load_state_dict(other.state_dict())
    return config["files"]["weights"]["sha256"]


def _keep_log_lines_up_to(log_path: Path, epochs_done: int) -> None:
    """Drop the log lines of epochs the checkpoint does not hold, and a partial last line (a kill mid-write)."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_bytes().splitlines(keepends=True):
        try:
            complete = line.endswith(b"\n") and json.loads(line)["epoch"] <= epochs_done
        except (ValueError, KeyError, TypeError):
            complete = False
        if complete:
            kept.append(line)
    atomic_write_bytes(log_path, b"".join(kept))


def describe_checkpoint(directory) -> dict:
    """What `dpae inspect` prints: config, Delta recomputed, noise, sha256 check."""
    model, config = load_autoencoder(directory)
    size = tuple(config["sensitivity"]["image_size"])
    return {
        "path": str(directory),
        "architecture": config["architecture"],
        "noise": config["noise"],
        "image_size": config["image_size"],
        "sensitivity_stored": config["sensitivity"]["value"],
        "sensitivity_recomputed": model.sensitivity(size),
        "sensitivity_method": config["sensitivity"]["method"],
        "macs_224": autoencoder_macs(model, (224, 224)),
        "sha256_ok": True,
        "training": {k: v for k, v in config.get("training", {}).items() if k != "optimizer"},
    }
