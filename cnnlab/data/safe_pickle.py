"""Read a dataset's pickle file (CIFAR batches) without running code from it.

`pickle.load` calls whatever callable a file names (os.system, eval, ...), so a downloaded batch file is
as dangerous as a script. This unpickler resolves only the globals the CIFAR batch format needs (numpy
array reconstruction, plain containers); any other name is refused before anything is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from cnnlab.data.datasets import corrupt
from cnnlab.errors import CnnlabError


def _numpy_core(module: str):
    """numpy's core submodule under its numpy 2 name (numpy._core) or numpy 1 name (numpy.core)."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _allowed() -> dict[tuple[str, str], object]:
    """(module, name) as a pickle spells it -> the object it stands for. Files written by numpy 1 and 2, by
    Python 2 (__builtin__, latin-1 strings) and 3, with any pickle protocol."""
    import codecs

    import numpy as np

    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    for builtins in ("builtins", "__builtin__"):
        for kind in (bytes, bytearray, list, dict, tuple, set, frozenset):
            table[(builtins, kind.__name__)] = kind
    return table


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a callable outside the allowed set: nothing was called."""


class DataUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose find_class resolves only `_allowed()` names."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._table = _allowed()

    def find_class(self, module: str, name: str):
        try:
            return self._table[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"it asks to load {module}.{name}, which a dataset file never needs") from None


def load_data_pickle(path: Path):
    """Unpickle a dataset file with DataUnpickler; anything wrong with it -> one CnnlabError line naming it."""
    try:
        with open(path, "rb") as f:
            return DataUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as ex:
        raise CnnlabError(
            f"{path} is not a plain data file ({ex}); refused to unpickle it: "
            "delete it and download it again from the official source"
        ) from None
    except Exception as ex:  # OSError, or anything a malformed pickle stream raises: the file's fault, not ours
        raise corrupt(path, f"{type(ex).__name__}: {ex}") from None
