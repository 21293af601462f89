"""PixelDP auto-encoder defense (Lecuyer et al., IEEE S&P 2019) for frozen pretrained classifiers.

Load a PixelDP auto-encoder and a classifier (checkpoint folders, shipped names, timm model names:
the same as the ``dpae`` command line), stack them, then certify and predict by Monte-Carlo draws
of the noise as Cohen et al.'s ``Smooth`` does, with the paper's PixelDP bound on the same draws:

>>> import dp_autoencoder as dpae
>>> stack = dpae.load_stack("natural-ae-L0.1", "efficientnet_lite0-offline")
>>> x, label = dpae.open_dataset("samples", stack)[1]      # scikit-image's coffee: espresso, class 967
>>> cert = stack.certify(x, n0=20, n=100, alpha=0.001, index=1)
>>> cert.predict, cert.radius > 0.2, stack.predict(x, n=50, index=1)
(967, True, 967)

``dpae.list_pretrained()`` names the shipped models (``dpae models``), ``dpae.get_pretrained_cfg(name)`` gives
one's frozen config (noise, L, sigma, architecture, data, certified figures, files and sha256).
``cert.radius`` is the randomized-smoothing radius (L2 for Gaussian noise), ``cert.pixeldp_size``
the PixelDP robustness size; ``cert.record`` is the line `dpae certify` writes for this image.
"""

__version__ = "0.1.0"

__all__ = ["ABSTAIN", "Certificate", "Stack", "get_pretrained_cfg", "list_pretrained", "load_autoencoder",
           "load_classifier", "load_stack", "open_dataset", "resolve_model", "stack", "__version__"]
_REGISTRY_NAMES = ("get_pretrained_cfg", "list_pretrained", "resolve_model")


def __getattr__(name):
    # Lazy: `import dp_autoencoder`, `dpae --help`, `--version` and `dpae models` import no torch.
    if name in _REGISTRY_NAMES:
        from . import _registry

        return getattr(_registry, name)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
