"""fpdsl: declarative experiments on how neural networks learn in frequency space."""

__version__ = "0.1.0"
