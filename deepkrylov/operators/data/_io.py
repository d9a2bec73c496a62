"""HDF5 storage of generated data sets: arrays as datasets, the generator's parameters and seed as attributes."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Optional

import numpy as np

__all__ = ["save_dataset", "load_dataset"]


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
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    with h5py.File(path, "r") as f:
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
