"""HDF5 storage of generated data sets: arrays as datasets, the generator's parameters and seed as attributes;
:class:`HDF5Fields` reads grid samples from such a file lazily, whole or only one rank's block of each."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["save_dataset", "load_dataset", "HDF5Fields"]


def _attr_value(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool, np.integer, np.floating)):
        return v
    return json.dumps(v)


def save_dataset(path: str, data: Mapping[str, np.ndarray], attrs: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``data`` (name -> array) to ``path`` with ``attrs`` (parameters, seed) as file attributes."""
    import h5py

    if not data:
        raise ValueError("data must contain at least one array, but got an empty mapping")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=np.asarray(v))
        for k, v in (attrs or {}).items():
            f.attrs[k] = _attr_value(v)


def load_dataset(path: str, fields: Optional[Iterable[str]] = None,
                 shapes: Optional[Mapping[str, tuple]] = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read ``(arrays, attributes)`` from ``path``. ``fields``: names that must be present (clear KeyError
    otherwise); ``shapes``: name -> expected shape with ``None`` or ``-1`` as a wildcard (ValueError otherwise)."""
    with _open(path) as f:
        present = sorted(f.keys())
        missing = [k for k in (fields or []) if k not in f]
        if missing:
            raise KeyError(f"data file {path!r} lacks field(s) {missing}; it has {present}")
        arrays = {k: f[k][()] for k in present}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    for k, shape in (shapes or {}).items():
        if k not in arrays:
            raise KeyError(f"data file {path!r} lacks field {k!r}; it has {present}")
        got = arrays[k].shape
        if len(got) != len(shape) or any(s not in (None, -1) and s != g for s, g in zip(shape, got)):
            raise ValueError(f"field {k!r} in {path!r} has shape {got}, expected {tuple(shape)}")
    return arrays, attrs


FieldSpec = Union[str, tuple[str, int]]


def _open(path: str) -> Any:
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path!r} is not a readable HDF5 file ({err})") from None


class HDF5Fields(torch.utils.data.Dataset):
    """Samples ``(field_1, ..., field_k)`` of grid data in an HDF5 file, read on demand.

    Each field is stored as ``(N, *spatial)`` (or ``(N, C, *spatial)`` with ``channels=True``); a field given as
    ``(name, i)`` takes index ``i`` of the axis after the sample axis (e.g. the last time step ``("w", -1)``).
    A sample is returned as tensors ``(C, *spatial)``. With a ``grid`` (a ``ProcessGrid`` over the spatial axes)
    only this rank's block ``grid.local_slices`` of every sample is read -- an h5py hyperslab read, so no rank
    holds or reads a whole field (domain-parallel training). ``samples``: the sample indices used (default all).
    A batch (``__getitems__``, used by the Trainer and ``DataLoader``) is one read per field.
    """

    def __init__(self, path: str, fields: Sequence[FieldSpec], grid: Any = None,
                 samples: Optional[Union[range, Sequence[int]]] = None, dtype: torch.dtype = torch.float32,
                 channels: bool = False) -> None:
        if not fields:
            raise ValueError("fields must name at least one dataset of the file")
        self.path, self.grid, self.dtype, self.channels = str(path), grid, dtype, bool(channels)
        self.fields: list[tuple[str, Optional[int]]] = []
        with _open(self.path) as f:
            n = None
            for spec in fields:
                name, sel = (spec, None) if isinstance(spec, str) else (str(spec[0]), int(spec[1]))
                if name not in f:
                    raise KeyError(f"data file {self.path!r} lacks field {name!r}; it has {sorted(f.keys())}")
                shape = f[name].shape
                if sel is not None:
                    if len(shape) < 2 or not -shape[1] <= sel < shape[1]:
                        raise ValueError(f"field {name!r} of shape {shape} has no index {sel} on axis 1")
                    sel %= shape[1]
                    shape = shape[:1] + shape[2:]
                spatial = shape[2:] if self.channels else shape[1:]
                if grid is not None and tuple(spatial) != tuple(grid.global_shape):
                    raise ValueError(f"field {name!r} of {self.path!r} has grid {tuple(spatial)}, but the process "
                                     f"grid is {tuple(grid.global_shape)}")
                if n is not None and shape[0] != n:
                    raise ValueError(f"fields of {self.path!r} differ in sample count: {shape[0]} and {n}")
                n = shape[0]
                self.fields.append((name, sel))
                self.spatial = tuple(spatial)
        self.samples = np.arange(n) if samples is None else np.asarray(samples, dtype=np.int64)
        if self.samples.ndim != 1 or (self.samples.size and not (0 <= self.samples.min() and self.samples.max() < n)):
            raise ValueError(f"samples must be indices in [0, {n}) of {self.path!r}, but got {samples!r}")
        self._file: Any = None

    def __len__(self) -> int:
        return int(self.samples.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        rows = self.samples[np.asarray([int(i) for i in idx], dtype=np.int64)]
        order, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing, distinct indices
        if self._file is None:
            self._file = _open(self.path)
        space = tuple(self.grid.local_slices) if self.grid is not None else ()
        out = []
        for name, sel in self.fields:
            head = (order.tolist(),) if sel is None else (order.tolist(), sel)
            block = self._file[name][head + ((slice(None),) if self.channels else ()) + space]
            t = torch.as_tensor(np.ascontiguousarray(block[inverse.reshape(-1)]), dtype=self.dtype)
            out.append(t if self.channels else t.unsqueeze(1))
        return [tuple(t[k] for t in out) for k in range(len(rows))]

    def __getstate__(self) -> dict:  # an open h5py file does not pickle (DataLoader workers reopen it)
        return {k: (None if k == "_file" else v) for k, v in self.__dict__.items()}
