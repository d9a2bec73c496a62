"""Vector operations of the Krylov loops on GridTensors (private); a plain tensor reaches them as a one-rank
GridTensor (see ``_lift``), so there is one path whatever the rank count."""

from __future__ import annotations

from typing import Any

import torch

from deepkrylov.distributed import GridTensor


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def dot(a: GridTensor, b: GridTensor) -> torch.Tensor:
    """Global inner product as a 0-dim tensor.

    One pass over memory (``vdot``, no temporary); the solvers run without autograd, so the all-reduce is the
    communicator's in-place one rather than GridTensor.dot's differentiable one.
    """
    if b.grid is not a.grid and b.grid != a.grid:
        raise ValueError(f"dot: mismatched operands {describe(a)} and {describe(b)}")
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return a.dot(b)
    part = torch.vdot(_flat(a.local), _flat(b.local))
    if a.grid.size > 1:
        part = part.reshape(1)
        a.grid.comm.allreduce_(part)
        part = part.reshape(())
    return part


def norm(a: GridTensor) -> torch.Tensor:
    if torch.is_grad_enabled() and a.requires_grad:
        return a.norm()
    if a.grid.size == 1:
        return torch.linalg.vector_norm(_flat(a.local))
    return torch.sqrt(dot(a, a))


def axpy_(y: GridTensor, alpha: Any, x: GridTensor) -> GridTensor:
    """In place ``y += alpha * x`` (the loop's vectors all derive from ``b``: no grid check per update)."""
    y.local.add_(x.local, alpha=alpha)
    return y


def xpay_(y: GridTensor, alpha: Any, x: GridTensor) -> GridTensor:
    """In place ``y = x + alpha * y`` in one pass over memory."""
    torch.add(x.local, y.local, alpha=alpha, out=y.local)
    return y


def apply_into(A: Any, x: GridTensor, out: Any) -> GridTensor:
    """``A x`` into ``out`` when ``out`` is a buffer and ``A`` can write into one (``apply_into``), else a new
    result: operators that only have ``apply`` still work."""
    if out is not None and hasattr(A, "apply_into"):
        return A.apply_into(x, out)
    return A.apply(x)


def zeros_like(a: GridTensor) -> GridTensor:
    return a.zeros_like()


def clone(a: GridTensor) -> GridTensor:
    return a.clone()


def has_nonfinite(a: GridTensor) -> bool:
    bad = torch.logical_not(torch.isfinite(a.local)).any().to(torch.float64).reshape(1)
    if a.grid.size > 1:
        a.grid.comm.allreduce_(bad)
    return bool(bad.item() > 0)


def describe(a: Any) -> str:
    """How an operand reads in an error message."""
    if isinstance(a, GridTensor):
        return f"GridTensor of shape {a.shape} on {a.grid!r}"
    if isinstance(a, torch.Tensor):
        return f"tensor of shape {tuple(a.shape)}"
    return type(a).__name__
