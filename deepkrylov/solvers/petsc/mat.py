"""Matrices: assembly into a parallel AIJ ``Mat`` in DMDA ordering (each rank inserts only its own rows), null
spaces, any deepkrylov operator as a ``MATPYTHON`` shell, and a PETSc ``Mat`` as a deepkrylov operator."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from ..matrix import LinearOperator
from ._core import _sizes, _track_petsc_object, import_petsc, petsc_comm
from .layout import _grid_for_vec, _local_natural_rows, _petsc_index
from .vec import _as_local, _through_petsc, from_petsc_vec, to_petsc_vec


def assemble_aij(A: Any, grid: ProcessGrid) -> Any:
    """Assemble a matrix into a PETSc AIJ ``Mat`` in DMDA ordering on ``grid``'s ranks; each rank inserts only its
    own rows.

    ``A``: an operator with ``local_stencil()`` (a :class:`~deepkrylov.mesh.DiffusionOperator`, built on ``grid``'s
    blocks with ``partition=`` or whole), assembled from this rank's rows of its stencil, so that no rank holds
    more than its own rows (:func:`_stencil_csr`); or a SciPy sparse matrix in natural (x-fastest) ordering, or
    another operator with ``to_scipy()``, whose whole CSR every rank then holds and takes its rows from."""
    import scipy.sparse as sp

    nloc, n = _sizes(grid)
    if not sp.issparse(A) and hasattr(A, "local_stencil"):
        return _create_aij(grid, *_stencil_csr(A, grid))
    if not sp.issparse(A):
        to_scipy = getattr(A, "to_scipy", None)
        if to_scipy is None:
            raise TypeError(f"assemble_aij needs a scipy.sparse matrix or an operator with to_scipy(), got {type(A).__name__}")
        A = to_scipy()
    A = sp.csr_matrix(A)
    if A.shape != (n, n):
        raise ValueError(f"matrix shape {A.shape} does not match the grid's {n} unknowns ({grid.global_shape})")
    rows = A[_local_natural_rows(grid)]
    cols = _petsc_index(grid, list(np.unravel_index(rows.indices, grid.global_shape)))
    local = sp.csr_matrix((rows.data.astype(np.float64), cols, rows.indptr), shape=(nloc, n))
    local.sort_indices()
    return _create_aij(grid, local.indptr, local.indices, local.data)


def _create_aij(grid: ProcessGrid, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> Any:
    """The AIJ ``Mat`` on ``grid``'s ranks from this rank's rows (CSR, PETSc column indices, sorted per row)."""
    PETSc = import_petsc()
    nloc, n = _sizes(grid)
    mat = PETSc.Mat().createAIJ(size=((nloc, n), (nloc, n)), csr=(
        np.asarray(indptr, dtype=PETSc.IntType), np.asarray(indices, dtype=PETSc.IntType),
        np.asarray(data, dtype=np.float64)), comm=petsc_comm(grid))
    mat.assemble()
    return mat


def _stencil_csr(op: Any, grid: ProcessGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's rows of a stencil operator as CSR in PETSc ordering, from ``op.local_stencil(grid)``: the block's
    diagonal and per-axis face weights (row ``i``: ``diag[i] u_i - lower_a[i] u_{i-e_a} - upper_a[i] u_{i+e_a}``).
    The neighbours' PETSc indices come from index arithmetic on the block's coordinates (:func:`_petsc_index`);
    zero weights are left out, as in ``to_scipy``. Memory: a few arrays of the block's size."""
    import scipy.sparse as sp

    PETSc = import_petsc()
    diag, weights = op.local_stencil(grid)
    nloc = int(diag.numel())
    if tuple(diag.shape) != tuple(grid.local_shape):
        raise ValueError(f"the operator's block {tuple(diag.shape)} is not the grid's {tuple(grid.local_shape)}")
    nd = grid.ndim
    axes = [np.arange(s.start, s.stop, dtype=np.int64).reshape([-1 if b == a else 1 for b in range(nd)])
            for a, s in enumerate(grid.local_slices)]
    width = 1 + 2 * nd
    cols = np.empty((nloc, width), dtype=PETSc.IntType)
    vals = np.empty((nloc, width), dtype=np.float64)
    cols[:, 0] = np.broadcast_to(_petsc_index(grid, axes), grid.local_shape).reshape(-1)
    vals[:, 0] = diag.numpy().reshape(-1)
    k = 1
    for a, pair in enumerate(weights):
        for w, step in zip(pair, (-1, 1)):
            shifted = list(axes)
            shifted[a] = axes[a] + step
            cols[:, k] = np.broadcast_to(_petsc_index(grid, shifted), grid.local_shape).reshape(-1)
            np.negative(w.numpy().reshape(-1), out=vals[:, k])
            k += 1
    keep = vals != 0
    keep[:, 0] = True
    indptr = np.zeros(nloc + 1, dtype=PETSc.IntType)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    local = sp.csr_matrix((vals[keep], cols[keep], indptr), shape=(nloc, int(np.prod(grid.global_shape))))
    del cols, vals, keep
    local.sum_duplicates()  # sorts each row (a neighbour on another rank may come first); a periodic axis of 2
    return local.indptr, local.indices, local.data


def set_constant_null_space(mat: Any) -> Any:
    """Attach the constant null space (pure Neumann / periodic problems) to ``mat``; returns the NullSpace."""
    PETSc = import_petsc()
    ns = PETSc.NullSpace().create(constant=True, comm=mat.getComm())
    mat.setNullSpace(ns)
    return ns


def set_null_space(mat: Any, basis: Any, grid: ProcessGrid) -> Any:
    """Attach a one-vector null space to ``mat``: ``basis`` is a GridTensor on ``grid`` or a whole field (e.g.
    ``DiffusionOperator.null_space()``, the constant on fluid cells of a pure-Neumann problem with obstacles).
    It is normalised here. Returns the NullSpace."""
    PETSc = import_petsc()
    if not isinstance(basis, GridTensor):
        t = torch.as_tensor(basis).to(torch.float64)
        if t.numel() != int(np.prod(grid.global_shape)):
            raise ValueError(f"null-space vector has {t.numel()} entries, but the grid has {grid.global_shape}")
        basis = GridTensor.from_global(t.reshape((1, 1) + grid.global_shape), grid)
    v = to_petsc_vec(basis, copy=True)
    v.normalize()
    ns = PETSc.NullSpace().create(constant=False, vectors=[v], comm=mat.getComm())
    mat.setNullSpace(ns)
    return ns


class ShellContext:
    """``MATPYTHON`` context applying a deepkrylov operator to PETSc vectors (zero copy on CPU float64)."""

    def __init__(self, op: Any, grid: ProcessGrid) -> None:
        self.op, self.grid = op, grid

    def mult(self, mat: Any, x: Any, y: Any) -> None:
        xt = from_petsc_vec(x, self.grid)
        yt = from_petsc_vec(y, self.grid)
        xin = xt if getattr(self.op, "dtype", torch.float64) == torch.float64 else xt.to(self.op.dtype)
        out = self.op.apply(xin)
        yt.local.copy_(_as_local(out, self.grid).reshape(yt.local.shape).to(torch.float64))

    def multTranspose(self, mat: Any, x: Any, y: Any) -> None:
        if getattr(self.op, "is_symmetric", None) is not True:
            raise NotImplementedError("the operator is not known to be symmetric; its transpose is not available")
        self.mult(mat, x, y)

    def getDiagonal(self, mat: Any, d: Any) -> None:
        diag = self.op.diagonal()
        dt = from_petsc_vec(d, self.grid)
        local = diag.local if isinstance(diag, GridTensor) else diag
        if not isinstance(diag, GridTensor) and local.numel() == int(np.prod(self.grid.global_shape)):
            local = local.reshape((1, 1) + self.grid.global_shape)[(slice(None), slice(None)) + self.grid.local_slices]
        dt.local.copy_(local.reshape(dt.local.shape).to(torch.float64))


def as_petsc_mat(op: Any, grid: ProcessGrid) -> Any:
    """A ``MATPYTHON`` shell ``Mat`` applying ``op`` (a deepkrylov operator on GridTensors of ``grid``)."""
    PETSc = import_petsc()
    nloc, n = _sizes(grid)
    mat = PETSc.Mat().createPython(((nloc, n), (nloc, n)), context=ShellContext(op, grid), comm=petsc_comm(grid))
    mat.setUp()
    _track_petsc_object(mat)
    if getattr(op, "is_symmetric", None):
        mat.setOption(PETSc.Mat.Option.SYMMETRIC, True)
    return mat


class PetscMatOperator(LinearOperator):
    """A PETSc ``Mat`` as a deepkrylov operator on GridTensors of ``grid`` (DMDA ordering).

    Vectors are wrapped without copies (``placeArray``) when they are CPU float64 and contiguous.
    """

    def __init__(self, mat: Any, grid: Optional[ProcessGrid] = None) -> None:
        import_petsc()
        self.mat = mat
        m, n = mat.getSize()
        if m != n:
            raise ValueError(f"the PETSc Mat must be square, but has size {(m, n)}")
        self._n = int(n)
        self._x, self._y = mat.createVecs()
        self.grid = grid if grid is not None else _grid_for_vec(self._x)
        if _sizes(self.grid) != (self._x.getLocalSize(), self._n):
            raise ValueError(f"grid {self.grid!r} does not match the Mat's row layout")

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def is_symmetric(self) -> Optional[bool]:
        known, flag = self.mat.isSymmetricKnown()
        return bool(flag) if known else None

    @property
    def is_positive_definite(self) -> Optional[bool]:
        try:
            known, flag = self.mat.isSPDKnown()  # type: ignore[attr-defined]
        except AttributeError:
            return None
        return bool(flag) if known else None

    def _wrap(self, x: Any) -> GridTensor:
        if isinstance(x, GridTensor):
            if x.grid != self.grid:
                raise ValueError(f"x lives on the grid {x.grid!r} but the operator on the grid {self.grid!r}")
            return x
        if isinstance(x, torch.Tensor) and x.numel() == self._n and self.grid.size == 1:
            return GridTensor(x.reshape((1, 1) + self.grid.local_shape), self.grid)
        raise TypeError(f"x must be a GridTensor on the operator's grid, but got {type(x).__name__}")

    def apply(self, x: Any) -> Any:
        xt = self._wrap(x)
        if xt.local.shape[:2] != (1, 1):
            out = [self.apply(xt.with_local(xt.local[i:i + 1, c:c + 1]))
                   for i in range(xt.local.shape[0]) for c in range(xt.local.shape[1])]
            loc = torch.cat([o.local for o in out]).reshape(xt.local.shape)
            return xt.with_local(loc) if isinstance(x, GridTensor) else loc.reshape(x.shape)
        dst = _through_petsc(self.mat.mult, self._x, self._y, xt.local)
        return xt.with_local(dst) if isinstance(x, GridTensor) else dst.reshape(x.shape)

    def close(self) -> None:
        """Destroy the work vectors now (PETSc may be finalized before Python collects them)."""
        self._x.destroy()
        self._y.destroy()

    def diagonal(self) -> GridTensor:
        d = self.mat.createVecLeft()
        self.mat.getDiagonal(d)
        return from_petsc_vec(d, self.grid, copy=True)

    def to_scipy(self) -> Any:
        import scipy.sparse as sp

        if self.grid.size != 1:
            raise NotImplementedError("to_scipy is only available on one rank")
        ai, aj, av = self.mat.getValuesCSR()
        return sp.csr_matrix((av, aj, ai), shape=self.shape)

