"""Preconditioners in the PETSc PC style: an object with ``setup(A)`` (once per operator) and ``apply(r) -> z``.

The Krylov loops reach a preconditioner only through ``apply``, so any callable on fields (a network, a
multigrid cycle, a PETSc PC through :mod:`deepkrylov.solvers.petsc`) works; :func:`as_preconditioner` turns
``None``, a callable or an operator into one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, as_grid_tensor

from ._lift import layout_of

__all__ = ["Preconditioner", "Identity", "Jacobi", "CallablePreconditioner", "as_preconditioner"]


class Preconditioner:
    """Base class: ``z = M r`` with ``M`` approximating ``A^{-1}``.

    Subclasses override :meth:`apply` and, if they need the operator, :meth:`setup`.
    ``is_symmetric`` / ``is_positive_definite`` are structural facts (None = unknown); CG relies on an SPD ``M``,
    flexible CG and GMRES do not.
    """

    is_symmetric: Optional[bool] = None
    is_positive_definite: Optional[bool] = None
    is_setup: bool = True
    #: Whether apply takes GridTensors (a plain tensor's one-rank view among them); solvers adapt the others.
    takes_grid_tensors: bool = False

    def setup(self, A: Any) -> "Preconditioner":
        """Prepare for operator ``A`` (default: nothing). Returns self."""
        self.is_setup = True
        return self

    def apply(self, r: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_into(self, r: Any, out: Any) -> Any:
        """``out = M r`` into a preallocated ``out`` (saves an allocation per iteration); default: copy."""
        dst, src = as_grid_tensor(out)[0], as_grid_tensor(self.apply(r))[0]
        dst.local.copy_(src.local.reshape(dst.local.shape))
        return out

    def __call__(self, r: Any) -> Any:
        return self.apply(r)

    def reset(self) -> None:
        """Forget what :meth:`setup` computed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Preconditioner):
    """``M = I`` (no preconditioning)."""

    is_symmetric = True
    is_positive_definite = True
    takes_grid_tensors = True

    def apply(self, r: Any) -> Any:
        return r


class Jacobi(Preconditioner):
    """Point Jacobi: ``z = r / diag(A)``; the diagonal comes from ``A.diagonal()`` at :meth:`setup`.

    Args:
        A: the operator now (optional; the solver calls ``setup(A)`` otherwise).
        zero_pivot: what to do with zero diagonal entries: ``"error"`` (raise) or ``"one"`` (use 1 there, so
            those entries of ``r`` pass through unchanged).
    """

    is_symmetric = True
    takes_grid_tensors = True

    def __init__(self, A: Any = None, *, zero_pivot: str = "error") -> None:
        if zero_pivot not in ("error", "one"):
            raise ValueError(f"zero_pivot must be 'error' or 'one', but got {zero_pivot!r}")
        self.zero_pivot = zero_pivot
        self.inv_diag: Any = None
        self._local_cache: Any = None
        self.is_setup = False
        self.is_positive_definite = None
        if A is not None:
            self.setup(A)

    def setup(self, A: Any) -> "Jacobi":
        diagonal = getattr(A, "diagonal", None)
        if diagonal is None:
            raise TypeError(f"Jacobi needs an operator with diagonal(), but got {type(A).__name__}")
        try:
            d = diagonal()
        except NotImplementedError as exc:
            raise TypeError(
                f"Jacobi needs the operator's diagonal, but {type(A).__name__}.diagonal() is not implemented"
            ) from exc
        if not isinstance(d, (torch.Tensor, GridTensor)):
            d = torch.as_tensor(np.asarray(d))
        d, _ = as_grid_tensor(d)  # a whole diagonal (any shape) as one flat block, or the operator's blocks
        comm = d.grid.comm
        zero = d.local == 0
        bad = zero.any().to(torch.float64).reshape(1)
        comm.allreduce_(bad)
        if bool(bad.item() > 0):
            if self.zero_pivot == "error":
                raise ValueError("Jacobi: the operator's diagonal has zero entries; use zero_pivot='one' or another preconditioner")
            d = d.with_local(torch.where(zero, torch.ones_like(d.local), d.local))
        self.inv_diag = d.map(torch.reciprocal)
        self._local_cache = None
        neg = (d.local < 0).any().to(torch.float64).reshape(1)
        comm.allreduce_(neg)
        self.is_positive_definite = not bool(neg.item() > 0)
        self.is_setup = True
        return self

    def reset(self) -> None:
        self.inv_diag, self.is_setup, self._local_cache = None, False, None

    def apply(self, r: Any) -> Any:
        g, restore = as_grid_tensor(r, self._spatial(r))
        return restore(self.apply_into(g, g.zeros_like()))

    def apply_into(self, r: Any, out: Any) -> Any:
        spatial = self._spatial(r)
        g, o = as_grid_tensor(r, spatial)[0], as_grid_tensor(out, spatial)[0]
        torch.mul(g.local, self._inv_for(g), out=o.local)
        return out

    def _spatial(self, r: Any) -> Optional[tuple]:
        """The grid shape a plain ``r`` is read on: the diagonal's when ``r`` ends with it."""
        return None if self.inv_diag is None else layout_of(r, self.inv_diag.grid.global_shape)

    def _inv_for(self, r: GridTensor) -> torch.Tensor:
        """``1/diag`` for ``r``'s block, shaped to broadcast against it, in its dtype and device; cached."""
        if self.inv_diag is None:
            raise RuntimeError("Jacobi.apply before setup(A): pass the operator to Jacobi(A) or to the solver")
        key = (r.grid, r.local.dtype, r.local.device, r.local.shape[1])
        hit = self._local_cache
        if hit is not None and hit[0] == key:
            return hit[1]
        inv, g = self.inv_diag, r.grid
        if inv.grid.size > 1:  # the operator's own blocks
            if inv.grid.local_shape != g.local_shape or inv.grid.global_shape != g.global_shape:
                raise ValueError(f"the diagonal lives on {inv.grid!r}, but the field on {g!r}")
            block = inv.local
        else:  # a whole diagonal: this block of it (per cell, or per channel and cell)
            n, c = math.prod(g.global_shape), r.local.shape[1]
            w = inv.local.reshape(-1)
            if w.numel() not in (n, c * n):
                raise ValueError(f"the diagonal has {w.numel()} entries but the grid {g.global_shape} has {n} cells")
            whole = w.reshape((1, w.numel() // n) + g.global_shape)
            block = whole[(slice(None), slice(None)) + g.local_slices]
        block = block.to(dtype=r.local.dtype, device=r.local.device).contiguous()
        self._local_cache = (key, block)
        return block


class CallablePreconditioner(Preconditioner):
    """Wrap any callable ``fn(r) -> z`` (a network, an operator's ``apply``, a multigrid cycle)."""

    def __init__(self, fn: Callable[[Any], Any], *, symmetric: Optional[bool] = None,
                 positive_definite: Optional[bool] = None, takes_grid_tensors: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, but got {type(fn).__name__}")
        self.fn = fn
        self.takes_grid_tensors = takes_grid_tensors
        self.is_symmetric = symmetric
        self.is_positive_definite = positive_definite

    def apply(self, r: Any) -> Any:
        return self.fn(r)

    def __repr__(self) -> str:
        return f"CallablePreconditioner({self.fn!r})"


def as_preconditioner(M: Any) -> Preconditioner:
    """``None`` -> :class:`Identity`; a :class:`Preconditioner` as is; an operator (``apply``) or a callable wrapped.

    A raw matrix is refused: wrap it with ``MatrixOperator`` (it then acts as ``z = M r``).
    """
    if M is None:
        return Identity()
    if isinstance(M, Preconditioner):
        return M
    if isinstance(M, (torch.Tensor, np.ndarray)) or type(M).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"a preconditioner must be an operator or callable, but got a raw {type(M).__name__}; wrap it with "
            "deepkrylov.solvers.MatrixOperator(M) (applied as z = M r)"
        )
    if hasattr(M, "apply") and callable(M.apply):
        return CallablePreconditioner(
            M.apply, symmetric=getattr(M, "is_symmetric", None),
            positive_definite=getattr(M, "is_positive_definite", None),
            takes_grid_tensors=getattr(M, "takes_grid_tensors", False),
        )
    if callable(M):
        return CallablePreconditioner(M)
    raise TypeError(f"M must be None, a Preconditioner, an operator with apply(), or a callable, but got {type(M).__name__}")
