"""Photo front-end recipes compared at equal CPU time, then scored with the development metric
(tools/screen_frontends.py) on the 250 validation photos: the figures of docs/results/natural-recipes.md.

Every experiment fine-tunes the same starting point (by default the shipped natural-ae-L0.1) with the
stability objective through the frozen EfficientNet-Lite0, at a constant learning rate, one epoch at a time,
until the process has spent --cpu-seconds of CPU time (user + system, all threads) in that experiment's
training; so each recipe gets the same compute whatever else shares the machine.  Resumable: each
experiment's run folder continues from its last epoch checkpoint, and its CPU time is kept in cpu.json.

Examples:
  python tools/recipe_experiments.py --list
  nohup python tools/recipe_experiments.py --cpu-seconds 900 > runs/recipes.log 2>&1 &
  python tools/recipe_experiments.py --only ft128-soft ft224-soft --cpu-seconds 600 --work runs/recipes
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dp_autoencoder.train import TrainSettings, train  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "imagenet-samples-dev"
START = ROOT / "pretrained" / "natural-ae-L0.1"

# The shipped recipe's fine-tune phase, continued: the control every other row changes one thing of.
BASE = dict(class_split="train", arch="unet-cpu", noise_placement="input", crop="random", image_size=128,
            batch_size=16, epoch_images=320, val_images=25, lr=2e-4, lr_schedule="constant",
            stability_classifier="efficientnet_lite0-offline", stability_weight=0.05, workers=0)
EXPERIMENTS = {
    "ft128-soft": dict(),  # the control: 128-pixel crops (upscaled to 224 by the classifier), soft target
    "ft224-soft": dict(image_size=224, batch_size=8, epoch_images=160),  # the classifier's own resolution
    "ft128-hard": dict(stability_target="hard"),  # cross-entropy to the clean prediction's argmax
    "ft128-kl-T4": dict(stability_temperature=4.0),  # KL to the clean softmax at temperature 4 (x T^2)
    "ft128-soft-labels": dict(classification_weight=0.05),  # plus cross-entropy against the labels
    "ft128-soft-w0.5": dict(stability_weight=0.5),  # the stability loss ten times heavier against the MSE
}
# The winner, trained on: copy runs/recipes/ft224-soft to runs/recipes/ft224-soft-long (and its .cpu.json) and
# give it a larger --cpu-seconds; it resumes from the last epoch checkpoint, the same run continued.
EXPERIMENTS["ft224-soft-long"] = EXPERIMENTS["ft224-soft"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_experiment(name: str, args) -> Path:
    out = Path(args.work) / name
    ledger = Path(args.work) / f"{name}.cpu.json"
    spent = json.loads(ledger.read_text())["cpu_seconds"] if ledger.exists() else 0.0
    settings = TrainSettings(data=str(args.data), out=str(out), L=args.L, init_from=str(args.start),
                             seed=args.seed, epochs=1, **{**BASE, **EXPERIMENTS[name]})
    epochs = json.loads((out / "config.json").read_text())["training"]["epochs_done"] if (out / "config.json").exists() else 0
    while spent < args.cpu_seconds:
        t0 = cpu_seconds()
        train(replace(settings, epochs=epochs + 1), resume=epochs > 0, device="cpu", progress=False)
        spent += cpu_seconds() - t0
        epochs += 1
        ledger.write_text(json.dumps({"cpu_seconds": spent, "epochs": epochs,
                                      "crops": epochs * settings.epoch_images}) + "\n")
        print(f"{name}: epoch {epochs}, {spent:.0f} / {args.cpu_seconds:.0f} CPU s", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), help="these experiments (default: all)")
    p.add_argument("--list", action="store_true", help="print the experiments and exit")
    p.add_argument("--cpu-seconds", type=float, default=900, help="CPU time per experiment (default: %(default)s)")
    p.add_argument("--start", default=str(START), help="checkpoint every experiment starts from (default: %(default)s)")
    p.add_argument("--L", type=float, default=0.1, help="construction bound (default: %(default)s)")
    p.add_argument("--data", default=str(DEV), help="training photos, an ImageNet synset tree (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data order and noise seed (default: %(default)s)")
    p.add_argument("--work", default="runs/recipes", help="run folders (default: %(default)s)")
    p.add_argument("--screen-work", default="runs/screen", help="screening cache (default: %(default)s)")
    p.add_argument("--draws", type=int, default=32, help="screening draws per photo (default: %(default)s)")
    p.add_argument("--no-screen", action="store_true", help="train only")
    args = p.parse_args(argv)
    if args.list:
        for name, change in EXPERIMENTS.items():
            print(f"{name}: {change or 'the control'}")
        return 0
    names = args.only or list(EXPERIMENTS)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    outs = {name: run_experiment(name, args) for name in names}
    if args.no_screen:
        return 0
    cmd = [sys.executable, str(ROOT / "tools" / "screen_frontends.py"), "--draws", str(args.draws),
           "--work", args.screen_work, "--out", str(Path(args.work) / "screen.md"), "--quiet",
           "--reference", Path(args.start).name,
           "--front-end", f"{Path(args.start).name}={args.start}", *[f"--front-end={n}={o}" for n, o in outs.items()]]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
