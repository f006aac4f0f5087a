"""A minimal MATLAB v5 .mat reader: the numeric arrays SVHN and Flowers-102 ship in (scipy is no dependency).

Format (MathWorks "MAT-File Format", level 5): a 128-byte header ending in the endian mark, then data
elements, each an 8-byte tag (type, byte count; or a 4-byte "small element" tag with its data inline),
padded to 8 bytes. miCOMPRESSED elements hold one zlib-compressed element. A numeric matrix (miMATRIX) has
sub-elements: array flags (class), dimensions, name, real part (stored in any numeric type, column-major).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from cnnlab.data.datasets import corrupt, read_bytes
from cnnlab.errors import CnnlabError

MI_MATRIX, MI_COMPRESSED = 14, 15
MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}


class _Truncated(Exception):
    pass


def _elements(buf: bytes, order: str):
    """Yield (type, payload) for each data element in `buf`."""
    pos = 0
    while pos < len(buf):
        if pos + 8 > len(buf):
            raise _Truncated(f"a tag at byte {pos} runs past the end")
        first = int(np.frombuffer(buf, order + "u4", 1, pos)[0])
        if first >> 16:  # small element: 2-byte byte count, 2-byte type, up to 4 data bytes in the tag
            kind, size = first & 0xFFFF, first >> 16
            if size > 4:
                raise _Truncated(f"a small element at byte {pos} says {size} bytes (at most 4 fit)")
            yield kind, buf[pos + 4 : pos + 4 + size]
            pos += 8
            continue
        size = int(np.frombuffer(buf, order + "u4", 1, pos + 4)[0])
        if pos + 8 + size > len(buf):
            raise _Truncated(f"an element at byte {pos} says {size} bytes, {len(buf) - pos - 8} are left")
        yield first, buf[pos + 8 : pos + 8 + size]
        pos += 8 + size if first == MI_COMPRESSED else 8 + (size + 7) // 8 * 8


def _numbers(data: bytes, dtype: str, what: str) -> np.ndarray:
    if len(data) % np.dtype(dtype).itemsize:
        raise _Truncated(f"{what}: {len(data)} bytes is not a whole number of {np.dtype(dtype).name} values")
    return np.frombuffer(data, dtype)


def _matrix(payload: bytes, order: str) -> tuple[str, np.ndarray | None]:
    """(name, array) of an miMATRIX; array None for classes this reader does not handle (cells, structs...)."""
    parts = list(_elements(payload, order))
    if len(parts) < 3:
        raise _Truncated("a matrix with fewer than 3 parts")
    flags = _numbers(parts[0][1], order + "u4", "array flags")
    dims = tuple(int(d) for d in _numbers(parts[1][1], order + "i4", "dimensions"))
    if not len(flags) or not dims or min(dims) < 0:
        raise _Truncated(f"a matrix with array flags {flags.tolist()} and dimensions {dims}")
    mx_class = int(flags[0]) & 0xFF
    name = parts[2][1].decode("ascii", "replace")
    if mx_class not in MX_CLASSES or len(parts) < 4:
        return name, None
    kind, data = parts[3]
    if kind not in MI_TYPES:
        raise _Truncated(f"variable {name!r} stores its data as unknown type {kind}")
    values = _numbers(data, order + MI_TYPES[kind], f"variable {name!r}")
    if values.size != int(np.prod(dims, dtype=object)):
        raise _Truncated(f"variable {name!r} has {values.size} values for dimensions {dims}")
    return name, values.astype(MX_CLASSES[mx_class]).reshape(dims, order="F")  # MATLAB is column-major


def read_mat(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The numeric variables `names` of a v5 .mat file (as numpy arrays in MATLAB's shape)."""
    raw = read_bytes(path)
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        raise CnnlabError(f"{path} is not a MATLAB v5 .mat file (header too short or no endian mark)")
    if b"MATLAB 7.3" in raw[:116]:
        raise CnnlabError(f"{path} is a MATLAB 7.3 (HDF5) file; cnnlab reads v5 .mat files (save -v6 or -v7)")
    order = "<" if raw[126:128] == b"IM" else ">"
    found: dict[str, np.ndarray] = {}
    try:
        for kind, payload in _elements(raw[128:], order):
            if kind == MI_COMPRESSED:
                try:
                    payload = zlib.decompress(payload)
                except zlib.error as ex:
                    raise _Truncated(f"compressed data: {ex}") from None
                kind, payload = next(_elements(payload, order), (None, b""))
            if kind == MI_MATRIX:
                name, array = _matrix(payload, order)
                if name in names and array is not None:
                    found[name] = array
    except _Truncated as ex:
        raise corrupt(path, str(ex)) from None
    missing = [n for n in names if n not in found]
    if missing:
        raise CnnlabError(f"{path} has no numeric variable(s) {', '.join(missing)}: is it the right file?")
    return found
