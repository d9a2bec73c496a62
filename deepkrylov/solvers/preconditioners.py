"""Preconditioners in the PETSc PC style: an object with ``setup(A)`` (once per operator) and ``apply(r) -> z``.

The Krylov loops reach a preconditioner only through ``apply``, so any callable on fields (a network, a
multigrid cycle, a PETSc PC through :mod:`deepkrylov.solvers.petsc`) works; :func:`as_preconditioner` turns
``None``, a callable or an operator into one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor

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
        z = self.apply(r)
        if isinstance(out, GridTensor):
            out.local.copy_(z.local)
        else:
            out.copy_(z)
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
        local = d.local if isinstance(d, GridTensor) else d
        if not isinstance(local, torch.Tensor):
            local = torch.as_tensor(np.asarray(local))
        zero = local == 0
        bad = zero.any().to(torch.float64).reshape(1)
        if isinstance(d, GridTensor):
            d.grid.comm.allreduce_(bad)
        if bool(bad.item() > 0):
            if self.zero_pivot == "error":
                raise ValueError("Jacobi: the operator's diagonal has zero entries; use zero_pivot='one' or another preconditioner")
            local = torch.where(zero, torch.ones_like(local), local)
        inv = 1.0 / local
        self.inv_diag = d.with_local(inv) if isinstance(d, GridTensor) else inv
        self._local_cache = None
        neg = (local < 0).any().to(torch.float64).reshape(1)
        if isinstance(d, GridTensor):
            d.grid.comm.allreduce_(neg)
        self.is_positive_definite = not bool(neg.item() > 0)
        self.is_setup = True
        return self

    def reset(self) -> None:
        self.inv_diag, self.is_setup, self._local_cache = None, False, None

    def apply(self, r: Any) -> Any:
        out = r.zeros_like() if isinstance(r, GridTensor) else torch.empty_like(r)
        return self.apply_into(r, out)

    def apply_into(self, r: Any, out: Any) -> Any:
        inv = self._inv_for(r)
        if isinstance(r, GridTensor):
            torch.mul(r.local, inv, out=out.local)
        else:
            torch.mul(r, inv, out=out)
        return out

    def _inv_for(self, r: Any) -> torch.Tensor:
        """``1/diag`` shaped, typed and placed for ``r`` (this rank's block for a GridTensor); cached."""
        if self.inv_diag is None:
            raise RuntimeError("Jacobi.apply before setup(A): pass the operator to Jacobi(A) or to the solver")
        like = r.local if isinstance(r, GridTensor) else r
        key = (r.grid if isinstance(r, GridTensor) else None, like.dtype, like.device, like.dim())
        hit = self._local_cache
        if hit is not None and hit[0] == key:
            return hit[1]
        if isinstance(self.inv_diag, GridTensor):
            inv = self.inv_diag.local
        elif isinstance(r, GridTensor):  # a whole (replicated) diagonal: this rank's block of it
            g = r.grid
            if self.inv_diag.numel() != int(np.prod(g.global_shape)):
                raise ValueError(
                    f"the diagonal has {self.inv_diag.numel()} entries but the grid {g.global_shape} has "
                    f"{int(np.prod(g.global_shape))} cells"
                )
            inv = self.inv_diag.reshape(g.global_shape)[g.local_slices]
        else:
            inv = self.inv_diag
        inv = _fit(inv, like).contiguous()
        self._local_cache = (key, inv)
        return inv


def _fit(inv: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape/cast a diagonal to broadcast against ``like`` (batch, channels, *spatial) or (n,)."""
    inv = inv.to(dtype=like.dtype, device=like.device)
    if inv.shape == like.shape or inv.dim() == like.dim():
        return inv
    if like.dim() >= 2 and inv.numel() == int(np.prod(like.shape[1:])):
        return inv.reshape((1,) + tuple(like.shape[1:]))
    if inv.numel() == int(np.prod(like.shape[-inv.dim():])) and inv.dim():
        return inv.reshape(like.shape[-inv.dim():])
    raise ValueError(f"a diagonal of shape {tuple(inv.shape)} does not fit a field of shape {tuple(like.shape)}")


class CallablePreconditioner(Preconditioner):
    """Wrap any callable ``fn(r) -> z`` (a network, an operator's ``apply``, a multigrid cycle)."""

    def __init__(self, fn: Callable[[Any], Any], *, symmetric: Optional[bool] = None,
                 positive_definite: Optional[bool] = None) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, but got {type(fn).__name__}")
        self.fn = fn
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
        )
    if callable(M):
        return CallablePreconditioner(M)
    raise TypeError(f"M must be None, a Preconditioner, an operator with apply(), or a callable, but got {type(M).__name__}")
