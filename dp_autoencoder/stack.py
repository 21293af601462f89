"""Deprecated: this module is now :mod:`dp_autoencoder.pipeline`; importable here for one release (0.1.x).

``dp_autoencoder.stack`` is also the public function :func:`dp_autoencoder.stack` (put an auto-encoder
in front of a classifier).  Importing this old submodule makes Python set the package's ``stack``
attribute to the module, which used to replace the function; so the module is callable and forwards
calls to the function: ``dp_autoencoder.stack(autoencoder, classifier)`` works whichever was imported.
Every name of the old module (``Classify``, ``DefendedClassifier``, ``Preprocessing``, ...) is still here,
from :mod:`dp_autoencoder.pipeline`.
"""

import sys
import types
import warnings

from .pipeline import (Classify, DefendedClassifier, InputNoiseClassifier, Preprocessing,  # noqa: F401
                       freeze, state_fingerprint)

warnings.warn("dp_autoencoder.stack (the module) is deprecated and will be removed after 0.1.x: import "
              "Classify, DefendedClassifier, Preprocessing, ... from dp_autoencoder.pipeline; the function "
              "dp_autoencoder.stack() is unchanged", DeprecationWarning, stacklevel=2)


class _CallableModule(types.ModuleType):
    """The old module, callable as the function it used to shadow."""

    def __call__(self, *args, **kwargs):
        from .api import stack

        return stack(*args, **kwargs)

    def __repr__(self) -> str:
        return "<deprecated module 'dp_autoencoder.stack' (now dp_autoencoder.pipeline), callable as dp_autoencoder.api.stack>"


sys.modules[__name__].__class__ = _CallableModule
