"""The Python entry points: load, stack, certify and predict, with the numbers of `dpae certify`.

A :class:`Stack` is the defended pipeline x -> g(x) -> + noise -> rest of the auto-encoder ->
frozen classifier, with Cohen et al.'s two Monte-Carlo procedures on it (``Smooth.certify`` and
``Smooth.predict``) and the paper's PixelDP bound on the same draws.  The noise of image ``i``
comes from (seed, i), exactly as in `dpae certify`, so ``stack.certify(x, index=i)`` reproduces
the record of image ``i`` of a run with the same seed, draws, alpha, eta and precision.

The same numbers need the same device: the noise of image ``i`` is drawn by a generator on the stack's
device, and a CUDA generator gives another stream than the CPU's for the same seed (possibly another on
another GPU model), so ``stack.certify(x, index=i)`` reproduces a `dpae certify` record only on the device
type (and GPU model) that run used; `dpae certify` records it in run.json and refuses to resume on another
device type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .certificates import DEFAULT_PIXELDP_PROFILE, smoothed_predict
from .sampler import prepare_for_sampling, sample_votes

ABSTAIN = -1
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _resolve_shipped(spec) -> str:
    """Deprecated (0.1): the folder of a shipped name, any other name as given.  Use
    ``dp_autoencoder.resolve_model(name, kind)``, the one parser of model names."""
    from ._registry import _REGISTRY, shipped_path

    cfg = _REGISTRY.get(str(spec))
    return str(shipped_path(cfg)) if cfg is not None and cfg.source == "shipped" else str(spec)


def __getattr__(name):
    if name in ("resolve_shipped", "PRETRAINED"):
        import warnings

        from ._registry import pretrained_root

        warnings.warn(f"dp_autoencoder.api.{name} is deprecated and goes after 0.1.x: model names are parsed by "
                      "dp_autoencoder.resolve_model() and listed by dp_autoencoder.list_pretrained()",
                      DeprecationWarning, stacklevel=2)
        return _resolve_shipped if name == "resolve_shipped" else pretrained_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_autoencoder(spec):
    """A PixelDP auto-encoder, verified (sha256, config, Delta recomputed): a shipped name (``natural-ae-L0.1``;
    :func:`list_pretrained`), a checkpoint folder, or ``hf-hub:ORG/NAME[@REV]``.

    The checkpoint's config is kept as ``autoencoder.config``, the registry's entry (shipped names) as
    ``autoencoder.pretrained_cfg`` (None otherwise).
    """
    from ._pretrained import FRONT_END
    from ._registry import resolve_model
    from .autoencoder import load_autoencoder as load

    ref = resolve_model(spec, FRONT_END)
    model, config = load(ref.local_path())
    model.config, model.pretrained_cfg = config, ref.cfg
    return model


def load_classifier(spec, weights=None):
    """A frozen classifier with its preprocessing: a shipped name (``fmnist-classifier``,
    ``efficientnet_lite0-offline``), a checkpoint folder, ``hf-hub:ORG/NAME[@REV]``, or a timm model name
    (timm's hub weights unless ``weights``)."""
    from .classifiers import load_classifier as load

    return load(spec, weights=weights)


@dataclass(frozen=True)
class Certificate:
    """One image's certificates.

    ``predict``/``radius``: Cohen et al.'s CERTIFY on the smoothed stack (class or ABSTAIN = -1; certified
    radius in the noise's norm, L2 for Gaussian, L1 for Laplace, -1.0 on abstention); ``p_a_lower``: the
    one-sided (1 - alpha) Clopper-Pearson bound on p_A.  ``pixeldp_predict``/``pixeldp_size``: the paper's
    Prop. 2 (class with the largest expected vote; robustness size L', 0.0 when nothing certifies) at
    confidence eta.  The noise: ``noise`` kind, ``scale`` (sigma or b), ``sensitivity`` Delta, construction
    (``L``, ``eps``, ``delta``).  ``record``: the full dict, as a line of certify.jsonl.
    """

    predict: int
    radius: float
    p_a_lower: float
    pixeldp_predict: int
    pixeldp_size: float
    undefended_predict: int
    noise: str
    scale: float
    sensitivity: float
    L: float
    eps: float
    delta: float
    alpha: float
    eta: float
    n0: int
    n: int
    record: dict

    @property
    def abstained(self) -> bool:
        return self.predict == ABSTAIN


class Stack(torch.nn.Module):
    """The defended classifier, certifiable by post-processing; the classifier's weights never change.

    ``stack(x)`` is one noisy forward (logits); :meth:`certify` and :meth:`predict` take one image
    (C, H, W) or a batch (B, C, H, W) in [0, 1] and return one result or a list.
    """

    def __init__(self, model, num_classes: int, device, precision: str = "fp32", seed: int = 0):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.model, self.num_classes, self.device = model, num_classes, torch.device(device)
        self.precision, self.seed = precision, seed

    @property
    def autoencoder(self):
        return self.model.autoencoder

    @property
    def classifier(self):
        return self.model.classifier

    @property
    def noise(self):
        return self.model.noise

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model(x.to(self.device), generator)

    def _batch(self, x, index):
        x = torch.as_tensor(x, dtype=torch.float32)
        single = x.dim() == 3
        x = x.unsqueeze(0) if single else x
        if x.dim() != 4:
            raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}")
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"image(s) {bad} of the batch have NaN or Inf pixels; nothing can be certified")
        ids = list(range(len(x))) if index is None else ([index] if isinstance(index, int) else list(index))
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} indices for {len(x)} images")
        return x.to(self.device), ids, single

    def _votes(self, z, ids, num, purpose, size, batch_size):
        return sample_votes(self.model, z, ids, num, self.num_classes, size, self.seed, purpose, batch_size,
                            autocast_dtype=PRECISIONS[self.precision]).counts.cpu().numpy()

    def certify(self, x, n0: int = 100, n: int = 300, alpha: float = 0.001, batch_size: int = 256,
                eta: float = 0.95, index=None, pixeldp_profile: str = DEFAULT_PIXELDP_PROFILE):
        """Cohen et al.'s CERTIFY (n0 selection draws, n estimation draws, failure probability alpha)
        and the PixelDP size (confidence eta) on the same n draws.  ``index``: the image ids that seed
        the noise (as `dpae certify`'s ``idx``; default 0, 1, ...).  ``pixeldp_profile``: how the size
        reads Gaussian noise, ``analytic`` (Balle and Wang's exact profile, docs/pixeldp-analytic.md) or
        ``classical`` (the paper's calibration)."""
        from .certify import CertifySettings, certificates, sparse

        settings = CertifySettings(n0=n0, n=n, alpha=alpha, eta=eta, batch_size=batch_size, seed=self.seed,
                                   pixeldp_profile=pixeldp_profile)
        settings.check()
        x, ids, single = self._batch(x, index)
        size = tuple(x.shape[-2:])
        sensitivity = self.model.sensitivity(size)
        noise = self.noise
        with torch.inference_mode():
            z = self.model.pre_noise(x)
            undefended = self.classifier(x).argmax(1).tolist()
        selection = self._votes(z, ids, n0, "selection", size, batch_size)
        estimation = self._votes(z, ids, n, "estimation", size, batch_size)
        results = []
        for j, i in enumerate(ids):
            bounds = certificates(selection[j], estimation[j], noise=noise.kind, scale=noise.scale,
                                  sensitivity=sensitivity, eps=noise.eps, delta=noise.delta, alpha=alpha, eta=eta,
                                  pixeldp_profile=pixeldp_profile)
            record = {"idx": i, **bounds, "undefended_predict": undefended[j], "counts": sparse(estimation[j]),
                      "selection_counts": sparse(selection[j]), "noise": noise.kind, "scale": noise.scale,
                      "sensitivity": sensitivity, "L": noise.L, "eps": noise.eps, "delta": noise.delta,
                      "alpha": alpha, "eta": eta, "n0": n0, "n": n, "seed": self.seed, "precision": self.precision}
            results.append(Certificate(
                predict=bounds["predict"], radius=bounds["radius"], p_a_lower=bounds["p_a_lower"],
                pixeldp_predict=bounds["pixeldp_predict"], pixeldp_size=bounds["pixeldp_size"],
                undefended_predict=undefended[j], noise=noise.kind, scale=noise.scale, sensitivity=sensitivity,
                L=noise.L, eps=noise.eps, delta=noise.delta, alpha=alpha, eta=eta, n0=n0, n=n, record=record))
        return results[0] if single else results

    def predict(self, x, n: int = 100, alpha: float = 0.001, batch_size: int = 256, index=None,
                abstain: bool = True):
        """Cohen et al.'s PREDICT: the top class of n draws, or ABSTAIN when the binomial test of the top
        two counts does not reject at level alpha (``abstain=False``: the plain majority, the paper's)."""
        if n < 1 or not 0 < alpha < 1:
            raise ValueError(f"n must be >= 1 and alpha in (0, 1), got n = {n}, alpha = {alpha}")
        x, ids, single = self._batch(x, index)
        with torch.inference_mode():
            z = self.model.pre_noise(x)
        counts = self._votes(z, ids, n, "prediction", tuple(x.shape[-2:]), batch_size)
        out = [int(smoothed_predict(c, alpha)) if abstain else int(np.argmax(c)) for c in counts]
        return out[0] if single else out


def stack(autoencoder, classifier, device=None, precision: str = "fp32", seed: int = 0,
          channels_last: bool = True) -> Stack:
    """Put ``autoencoder`` in front of the frozen ``classifier`` on ``device`` (default: cuda when there).

    ``precision``: autocast of the noisy forwards (fp32, bf16, fp16); the certificates hold for the
    classifier as run.  ``seed``: the noise of image i comes from (seed, i).
    """
    from .distributed import local_device
    from .pipeline import DefendedClassifier

    device = local_device(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model = DefendedClassifier(autoencoder, classifier).to(device)
    if channels_last:
        prepare_for_sampling(model)
    with torch.no_grad():
        c, h, w = classifier.prep.input_size
        num_classes = classifier(torch.zeros(1, c, h, w, device=device)).shape[-1]
    return Stack(model, num_classes, device, precision, seed)


def load_stack(autoencoder, classifier, classifier_weights=None, device=None, precision: str = "fp32",
               seed: int = 0, channels_last: bool = True) -> Stack:
    """:func:`stack` of :func:`load_autoencoder` and :func:`load_classifier` (any model name: shipped, a path,
    ``hf-hub:ORG/NAME[@REV]``, or a timm name for the classifier)."""
    return stack(load_autoencoder(autoencoder), load_classifier(classifier, classifier_weights), device,
                 precision, seed, channels_last)


def open_dataset(source, stack: Stack, labels=None, class_split=None, data_root=None):
    """The images of ``source`` (``samples``, ``fashion-mnist``, an image folder, an ImageNet tree) at the
    sizes ``stack`` needs; items ``(image, label)`` with label -1 when unknown."""
    from .sources import open_dataset_for

    return open_dataset_for(source, stack.model, labels=labels, class_split=class_split, data_root=data_root)
