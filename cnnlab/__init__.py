"""cnnlab: a config-driven training CLI for convolutional neural networks."""

__version__ = "0.1.0"
