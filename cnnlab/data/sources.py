"""The dataset sources by `data.name`: each `(root, download) -> ArrayDataset` (imagefolder, which takes more
options, is wired in `cnnlab.data.load_arrays`)."""

from __future__ import annotations

from cnnlab.data.cifar import load_cifar10, load_cifar100
from cnnlab.data.datasets import load_digits
from cnnlab.data.folders import load_flowers102, load_oxford_pets
from cnnlab.data.idx import load_fashion_mnist, load_kmnist, load_mnist
from cnnlab.data.stl10 import load_stl10
from cnnlab.data.svhn import load_svhn

SOURCES = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "kmnist": load_kmnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "stl10": load_stl10,
    "flowers102": load_flowers102,
    "oxford_pets": load_oxford_pets,
}
