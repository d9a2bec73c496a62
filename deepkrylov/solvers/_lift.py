"""The solvers' entry point to one field type (private): a plain right-hand side becomes a GridTensor on a
one-rank grid, so every loop below runs one code path; operators and preconditioners that only know plain tensors
(a user's function) are adapted, and the solution goes back in the caller's layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from deepkrylov.distributed import GridTensor, as_grid_tensor


def layout_of(x: Any, shape: Any) -> Optional[tuple[int, ...]]:
    """``shape`` when ``x`` is a plain tensor laid out on it (``shape``, ``(batch, *shape)`` or
    ``(batch, channels, *shape)``), else None."""
    if not isinstance(x, torch.Tensor) or shape is None:
        return None
    shape = tuple(shape)
    nd = len(shape)
    return shape if nd <= x.dim() <= nd + 2 and tuple(x.shape[x.dim() - nd:]) == shape else None


def spatial_of(A: Any, b: Any) -> Optional[tuple[int, ...]]:
    """The grid shape a plain ``b`` is laid out on: the operator's mesh grid when ``b`` ends with it; else the
    spatial axes of a ``(batch, channels, *spatial)`` field; else None (each sample flattened, as a matrix sees
    a vector)."""
    if not isinstance(b, torch.Tensor):
        return None
    grid = getattr(A, "grid", None)
    shape = getattr(grid, "shape", None)
    mesh = layout_of(b, shape) if isinstance(shape, tuple) and hasattr(grid, "ndim") else None
    return mesh or (tuple(b.shape[2:]) if 3 <= b.dim() <= 5 else None)


class _Adapted:
    """An operator or preconditioner that takes the caller's plain tensors, seen as one that takes GridTensors."""

    takes_grid_tensors = True

    def __init__(self, inner: Any, apply: Callable[[Any], Any], restore: Callable, spatial: Any) -> None:
        self._inner, self._apply, self._restore, self._spatial = inner, apply, restore, spatial

    def apply(self, x: GridTensor) -> GridTensor:
        y = self._apply(self._restore(x))
        if isinstance(y, GridTensor):  # a user function that made a GridTensor itself
            y = y.local
        if not isinstance(y, torch.Tensor) or y.numel() != x.local.numel():
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{type(self._inner).__name__} returned {got} for an input of shape "
                             f"{tuple(self._restore(x).shape)}; it must return a tensor of the input's shape")
        return x.with_local(y.reshape(x.local.shape))

    def apply_into(self, x: GridTensor, out: GridTensor) -> GridTensor:
        out.local.copy_(self.apply(x).local)
        return out

    def __getattr__(self, name: str) -> Any:  # shape, dtype, diagonal, is_symmetric, ... of the wrapped object
        return getattr(self._inner, name)


@dataclass
class System:
    """A system on GridTensors: the operator, right-hand side, initial guess and preconditioner the loops see,
    and ``restore`` for the solution."""

    A: Any
    b: GridTensor
    x0: Optional[GridTensor]
    M: Any
    restore: Callable[[GridTensor], Any]


def lift_system(A: Any, b: Any, x0: Any = None, M: Any = None) -> System:
    """``(A, b, x0, M)`` on GridTensors. A GridTensor ``b`` passes through with ``A`` and ``M`` as they are; a
    plain ``b`` (and ``x0``) becomes a one-rank view, and ``A``/``M`` (operators or plain callables) without
    ``takes_grid_tensors`` are adapted."""
    spatial = spatial_of(A, b)
    bg, restore = as_grid_tensor(b, spatial)
    x0g = None if x0 is None else as_grid_tensor(x0, spatial)[0]
    if bg is not b:
        if not getattr(A, "takes_grid_tensors", False):
            A = _Adapted(A, apply_of(A), restore, spatial)
        if M is not None and not getattr(M, "takes_grid_tensors", False):
            M = _Adapted(M, apply_of(M), restore, spatial)
    return System(A, bg, x0g, M, restore)


def apply_of(obj: Any) -> Callable[[Any], Any]:
    """An operator's or preconditioner's ``apply``, or the object itself when it is a plain callable."""
    return obj.apply if hasattr(obj, "apply") else obj
