"""Data: `build(cfg.data, cfg.augment, device, seed)` -> DataBundle(train, val, test loaders, DataSpec).

Honest evaluation by default: `data.val_split` (a fraction) is held out of the training set with a seeded
permutation and picks the best checkpoint; the test split is only for the final report.
`data.val_split=test` selects on the test split instead, as much published code does.

Modules: build.py orchestrates (load -> split -> statistics -> spec -> loaders; the dataset loaders by
`data.name`), spec.py holds what it returns (DataSpec, DataBundle); sources.py names the datasets (idx.py,
cifar.py, svhn.py + matlab.py, stl10.py, folders.py, datasets.py for what they share); augment.py turns the
augment group into a pipeline, built from transforms.py (batched ops) and mix.py (mixup/cutmix); loaders.py
has the device-resident loader and the DataLoader one, and sharding.py the share of each rank in a
distributed run. `data.loader=auto` keeps everything on the device except image files larger than
DEVICE_MAX_FILE_SIZE, which stream through DataLoader workers (`data.num_workers`).
The package reads config groups as plain mappings and never imports the config schemas (cnnlab.schema).
"""

from cnnlab.data.build import DATASETS, build, channel_stats, load_arrays
from cnnlab.data.sharding import Shard
from cnnlab.data.spec import DataBundle, DataSpec, Loader

__all__ = ["DATASETS", "DataBundle", "DataSpec", "Loader", "Shard", "build", "channel_stats", "load_arrays"]
