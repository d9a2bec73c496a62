"""Vector operations shared by the Krylov loops, for plain tensors and GridTensors alike (private)."""

from __future__ import annotations

from typing import Any, Union

import torch

from deepkrylov.distributed import GridTensor

Vector = Union[torch.Tensor, GridTensor]


def dot(a: Vector, b: Vector) -> torch.Tensor:
    """Global inner product as a 0-dim tensor (an all-reduce for GridTensors)."""
    if isinstance(a, GridTensor):
        return a.dot(b)
    return torch.vdot(a.reshape(-1), b.reshape(-1))


def norm(a: Vector) -> torch.Tensor:
    if isinstance(a, GridTensor):
        return a.norm()
    return torch.linalg.vector_norm(a.reshape(-1))


def axpy_(y: Vector, alpha: Any, x: Vector) -> Vector:
    """In place ``y += alpha * x``."""
    return y.add_(x, alpha=alpha)


def xpay_(y: Vector, alpha: Any, x: Vector) -> Vector:
    """In place ``y = x + alpha * y`` in one pass over memory."""
    if isinstance(y, GridTensor):
        torch.add(x.local, y.local, alpha=alpha, out=y.local)
        return y
    return torch.add(x, y, alpha=alpha, out=y)


def zeros_like(a: Vector) -> Vector:
    return a.zeros_like() if isinstance(a, GridTensor) else torch.zeros_like(a)


def clone(a: Vector) -> Vector:
    return a.clone()


def has_nonfinite(a: Vector) -> bool:
    local = a.local if isinstance(a, GridTensor) else a
    bad = torch.logical_not(torch.isfinite(local)).any().to(torch.float64).reshape(1)
    if isinstance(a, GridTensor):
        a.grid.comm.allreduce_(bad)
    return bool(bad.item() > 0)


def describe(a: Any) -> str:
    if isinstance(a, GridTensor):
        return f"GridTensor of shape {a.shape} on {a.grid!r}"
    if isinstance(a, torch.Tensor):
        return f"tensor of shape {tuple(a.shape)}"
    return type(a).__name__
