"""cnnlab's Hydra configs. The repo keeps them at top level; the wheel ships them as cnnlab.configs."""
