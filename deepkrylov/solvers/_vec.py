"""Vector operations shared by the Krylov loops, for plain tensors and GridTensors alike (private)."""

from __future__ import annotations

from typing import Any, Union

import torch

from deepkrylov.distributed import GridTensor

Vector = Union[torch.Tensor, GridTensor]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def dot(a: Vector, b: Vector) -> torch.Tensor:
    """Global inner product as a 0-dim tensor (an all-reduce for GridTensors).

    One pass over memory (``vdot``, no temporary); the solvers run without autograd, so the all-reduce is the
    communicator's in-place one rather than GridTensor.dot's differentiable one.
    """
    if isinstance(a, GridTensor):
        if not isinstance(b, GridTensor) or b.grid is not a.grid and b.grid != a.grid:
            raise ValueError(f"dot: mismatched operands {describe(a)} and {describe(b)}")
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            return a.dot(b)
        part = torch.vdot(_flat(a.local), _flat(b.local)).reshape(1)
        if a.grid.size > 1:
            a.grid.comm.allreduce_(part)
        return part.reshape(())
    return torch.vdot(_flat(a), _flat(b))


def norm(a: Vector) -> torch.Tensor:
    if isinstance(a, GridTensor):
        if torch.is_grad_enabled() and a.requires_grad:
            return a.norm()
        if a.grid.size == 1:
            return torch.linalg.vector_norm(_flat(a.local))
        return torch.sqrt(dot(a, a))
    return torch.linalg.vector_norm(_flat(a))


def axpy_(y: Vector, alpha: Any, x: Vector) -> Vector:
    """In place ``y += alpha * x``."""
    return y.add_(x, alpha=alpha)


def xpay_(y: Vector, alpha: Any, x: Vector) -> Vector:
    """In place ``y = x + alpha * y`` in one pass over memory."""
    if isinstance(y, GridTensor):
        torch.add(x.local, y.local, alpha=alpha, out=y.local)
        return y
    return torch.add(x, y, alpha=alpha, out=y)


def apply_into(A: Any, x: Vector, out: Any) -> Vector:
    """``A x`` into ``out`` when ``out`` is a buffer and ``A`` can write into one (``apply_into``), else a new
    result: operators that only have ``apply`` still work."""
    if out is not None and hasattr(A, "apply_into"):
        return A.apply_into(x, out)
    return A.apply(x)


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
