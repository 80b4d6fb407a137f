"""parsgd: data-parallel mini-batch SGD as explicit message passing."""

__version__ = "0.1.0"
