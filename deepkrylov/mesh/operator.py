"""``LinearOperator``: what every operator in deepkrylov is -- stencils, matrices, PETSc Mats, networks.

An operator acts on fields (a tensor ``(batch, 1, *spatial)`` or a GridTensor) with :meth:`apply`; structural
facts are queries, so a solver can refuse an operator before doing any work. It lives in ``mesh`` (the lowest
layer that defines operators); :mod:`deepkrylov.solvers` re-exports it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from deepkrylov.distributed import as_grid_tensor

__all__ = ["LinearOperator"]


class LinearOperator:
    """Base class: subclasses set ``shape`` (n, n), ``dtype``, ``device`` and implement :meth:`apply`."""

    shape: tuple[int, int]
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    #: True/False when known, None when unknown (solvers refuse only a known False).
    is_symmetric: Optional[bool] = None
    is_positive_definite: Optional[bool] = None
    #: Whether apply takes GridTensors (a plain tensor's one-rank view among them); solvers adapt the others.
    takes_grid_tensors: bool = False

    def apply(self, x: Any) -> Any:
        """``A x`` for a field ``x``."""
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def apply_into(self, x: Any, out: Any) -> Any:
        """``out = A x``, reusing ``out``'s storage where the operator can (default: apply, then copy)."""
        dst, src = as_grid_tensor(out)[0], as_grid_tensor(self.apply(x))[0]
        dst.local.copy_(src.local.reshape(dst.local.shape))
        return out

    def diagonal(self) -> Any:
        """The diagonal of ``A`` (as a field of the grid's shape, or a vector)."""
        raise NotImplementedError(f"{type(self).__name__}.diagonal")

    def to_scipy(self) -> Any:
        """``A`` as a SciPy sparse matrix, when it can be assembled."""
        raise NotImplementedError(f"{type(self).__name__}.to_scipy")

    def __matmul__(self, x: Any) -> Any:
        return self.apply(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={getattr(self, 'shape', None)}, dtype={self.dtype})"
