"""cnnlab: a config-driven training CLI for convolutional neural networks.

The Python API (cnnlab/api.py), for notebooks: `cnnlab.compose(overrides)` -> config,
`cnnlab.train(cfg, run_dir=None)` -> metrics dict, `cnnlab.load(checkpoint)` -> (model, data spec).
They are imported on first use, so that `import cnnlab` (and `cnnlab --version`) stays light.
"""

__version__ = "0.1.0"
__all__ = ["compose", "train", "load", "__version__"]


def __getattr__(name: str):
    if name in ("compose", "train", "load"):
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
