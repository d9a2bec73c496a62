"""Matrices as linear operators: :class:`MatrixOperator` (dense torch/numpy or sparse torch/SciPy) and
:class:`FunctionOperator` (any function ``x -> A x`` with a declared shape).

A matrix acts on fields flattened in C order, i.e. x fastest for ``(z, y, x)`` fields -- PETSc DMDA's natural
ordering -- so a SciPy CSR from :mod:`deepkrylov.mesh` applies to tensors ``(batch, 1, *spatial)``. On a
GridTensor the whole vector is gathered, multiplied and scattered back: a replicated matrix is meant for tests
and small problems; use the stencil operators or :mod:`deepkrylov.solvers.petsc` for distributed ones.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Union

import numpy as np
import scipy.sparse as sp
import torch

from deepkrylov.distributed import GridTensor, as_grid_tensor

from deepkrylov.mesh.operator import LinearOperator

__all__ = ["MatrixOperator", "FunctionOperator", "aslinearoperator"]


def _flat(x: torch.Tensor, n: int) -> torch.Tensor:
    """A block ``(batch, channels, *spatial)`` as ``(batch, n)``."""
    per = math.prod(x.shape[1:])
    if per != n:
        raise ValueError(f"the field has {per} unknowns per sample (shape {tuple(x.shape)}) but the operator has size {n}")
    return x.reshape(x.shape[0], n)


class MatrixOperator(LinearOperator):
    """A matrix as a :class:`LinearOperator`.

    Args:
        matrix: a square torch tensor (dense or sparse), numpy array or SciPy sparse matrix.
        symmetric / positive_definite: structural facts if known. For a matrix, symmetry is checked once
            when not given; definiteness stays unknown (None) unless given.
        dtype / device: where the operator lives (default: float64 for numpy/SciPy, the tensor's own).
    """

    takes_grid_tensors = True

    def __init__(
        self, matrix: Any, *, symmetric: Optional[bool] = None, positive_definite: Optional[bool] = None,
        dtype: Optional[torch.dtype] = None, device: Union[str, torch.device, None] = None,
    ) -> None:
        self._scipy: Optional[sp.csr_matrix] = None
        if sp.issparse(matrix):
            csr = sp.csr_matrix(matrix)
            self._scipy = csr
            dtype = dtype or torch.float64
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
                mat = torch.sparse_csr_tensor(
                    torch.from_numpy(csr.indptr.astype(np.int64)), torch.from_numpy(csr.indices.astype(np.int64)),
                    torch.from_numpy(csr.data).to(dtype), size=csr.shape, check_invariants=False,
                )
        elif isinstance(matrix, np.ndarray):
            mat = torch.from_numpy(np.ascontiguousarray(matrix)).to(dtype or torch.float64)
        elif isinstance(matrix, torch.Tensor):
            mat = matrix.to(dtype) if dtype is not None else matrix
        else:
            raise TypeError(
                f"matrix must be a torch tensor, numpy array or scipy.sparse matrix, but got {type(matrix).__name__}"
            )
        if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(f"matrix must be square (n, n), but got shape {tuple(mat.shape)}")
        if device is not None:
            mat = mat.to(device)
        self.matrix = mat
        self._n = int(mat.shape[0])
        if symmetric is None:
            symmetric = self._check_symmetric()
        self._symmetric = symmetric
        self._spd = positive_definite

    def _check_symmetric(self) -> bool:
        if self._scipy is not None:
            d = self._scipy - self._scipy.T
            scale = abs(self._scipy).max() if self._scipy.nnz else 1.0
            return bool(d.nnz == 0 or abs(d).max() <= 1e-12 * scale)
        m = self.matrix.to_dense() if self.matrix.layout != torch.strided else self.matrix
        return bool(torch.allclose(m, m.mT, rtol=1e-12, atol=1e-12 * float(m.abs().max().clamp_min(1e-300))))

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    @property
    def is_symmetric(self) -> Optional[bool]:
        return self._symmetric

    @property
    def is_positive_definite(self) -> Optional[bool]:
        return self._spd

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        m = self.matrix
        xs = x2.to(dtype=m.dtype, device=m.device)
        y = (m @ xs.T).T
        return y.to(x2.dtype)

    def apply(self, x: Any) -> Any:
        """``A x`` for a tensor ``(batch, channels, *spatial)`` / ``(n,)`` or a GridTensor."""
        if not isinstance(x, (torch.Tensor, GridTensor)):
            raise TypeError(f"x must be a torch.Tensor or GridTensor, but got {type(x).__name__}")
        g, restore = as_grid_tensor(x)
        whole = g.local if g.grid.size == 1 else g.gather()  # a replicated matrix needs the whole vector
        return restore(GridTensor.from_global(self._matmul(_flat(whole, self._n)).reshape(whole.shape), g.grid))

    def diagonal(self) -> torch.Tensor:
        if self._scipy is not None:
            return torch.from_numpy(self._scipy.diagonal()).to(self.matrix.dtype)
        m = self.matrix.to_dense() if self.matrix.layout != torch.strided else self.matrix
        return torch.diagonal(m).clone()

    def to_scipy(self) -> sp.csr_matrix:
        if self._scipy is not None:
            return self._scipy
        m = self.matrix.to_dense() if self.matrix.layout != torch.strided else self.matrix
        return sp.csr_matrix(m.detach().cpu().numpy())

    def __repr__(self) -> str:
        kind = "scipy CSR" if self._scipy is not None else str(self.matrix.layout)
        return f"MatrixOperator(n={self._n}, {kind}, dtype={self.dtype})"


class FunctionOperator(LinearOperator):
    """A function ``fn(x) -> A x`` with a declared size ``n`` (a network, a matrix-free stencil, a closure)."""

    def __init__(
        self, fn: Callable[[Any], Any], n: Union[int, tuple], *, symmetric: Optional[bool] = None,
        positive_definite: Optional[bool] = None, dtype: torch.dtype = torch.float64,
        device: Union[str, torch.device] = "cpu", diagonal: Optional[Callable[[], Any]] = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, but got {type(fn).__name__}")
        if isinstance(n, tuple):
            if len(n) != 2 or n[0] != n[1]:
                raise ValueError(f"shape must be square (n, n), but got {n}")
            n = n[0]
        self.fn, self._n = fn, int(n)
        self._symmetric, self._spd = symmetric, positive_definite
        self._dtype, self._device, self._diag = dtype, torch.device(device), diagonal

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def is_symmetric(self) -> Optional[bool]:
        return self._symmetric

    @property
    def is_positive_definite(self) -> Optional[bool]:
        return self._spd

    def apply(self, x: Any) -> Any:
        return self.fn(x)

    def diagonal(self) -> Any:
        if self._diag is None:
            raise NotImplementedError("FunctionOperator has no diagonal; pass diagonal=callable to provide one")
        return self._diag()


def aslinearoperator(A: Any) -> LinearOperator:
    """A :class:`LinearOperator` as is; a matrix (dense/sparse torch, numpy, SciPy) wrapped in :class:`MatrixOperator`."""
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, (torch.Tensor, np.ndarray)) or sp.issparse(A):
        return MatrixOperator(A)
    raise TypeError(
        f"cannot make a linear operator from {type(A).__name__}; use MatrixOperator (matrices) or "
        "FunctionOperator(fn, n) (functions)"
    )
