"""PixelDP auto-encoder defense (Lecuyer et al., IEEE S&P 2019) for frozen pretrained classifiers."""

__version__ = "0.1.0"
