"""Matrices: assembly into a parallel AIJ ``Mat`` in DMDA ordering (each rank inserts only its own rows), null
spaces, any deepkrylov operator as a ``MATPYTHON`` shell, and a PETSc ``Mat`` as a deepkrylov operator."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from ..matrix import LinearOperator
from ._core import _sizes, _track_petsc_object, import_petsc, petsc_comm
from .layout import _check_grid, _grid_for_vec, _lift, _local_natural_rows, _petsc_index, _same_cells
from .vec import _each_sample, _through_petsc, from_petsc_vec, to_petsc_vec


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
    v = to_petsc_vec(_on_grid(basis, grid, "null-space vector"), copy=True)
    v.normalize()
    ns = PETSc.NullSpace().create(constant=False, vectors=[v], comm=mat.getComm())
    mat.setNullSpace(ns)
    return ns


def _on_grid(v: Any, grid: ProcessGrid, what: str) -> GridTensor:
    """``v`` as a float64 GridTensor on ``grid``: a GridTensor there as it is, or a whole field (every rank holds all
    of it, any shape with the grid's number of cells) cut to this rank's block."""
    if isinstance(v, GridTensor):
        if v.grid != grid and not _same_cells(v.grid, grid):
            raise ValueError(f"{what} lives on {v.grid!r}, not on the grid {grid!r}")
        return GridTensor(v.local.detach().to(torch.float64).reshape((1, 1) + grid.local_shape), grid)
    t = torch.as_tensor(v).detach().to(torch.float64)
    if t.numel() != int(np.prod(grid.global_shape)):
        raise ValueError(f"{what} has {t.numel()} entries, but the grid has {grid.global_shape}")
    return GridTensor.from_global(t.reshape((1, 1) + grid.global_shape), grid)


def _result_local(y: Any, x: GridTensor, op: Any) -> torch.Tensor:
    """The float64 block of ``y = op(x)``, which must be a GridTensor like ``x``."""
    if not isinstance(y, GridTensor):
        raise TypeError(f"{type(op).__name__} returned a {type(y).__name__} for a GridTensor; PETSc needs an operator "
                        "on GridTensors (takes_grid_tensors) that returns one like its input")
    if y.local.numel() != x.local.numel():
        raise ValueError(f"{type(op).__name__} returned local shape {tuple(y.local.shape)} for an input of local "
                         f"shape {tuple(x.local.shape)}; it must return a field like its input")
    return y.local.to(torch.float64)


class ShellContext:
    """``MATPYTHON`` context applying a deepkrylov operator to PETSc vectors (zero copy on CPU float64)."""

    def __init__(self, op: Any, grid: ProcessGrid) -> None:
        self.op, self.grid = op, grid

    def mult(self, mat: Any, x: Any, y: Any) -> None:
        xt = from_petsc_vec(x, self.grid)
        yt = from_petsc_vec(y, self.grid)
        xin = xt if getattr(self.op, "dtype", torch.float64) == torch.float64 else xt.to(self.op.dtype)
        yt.local.copy_(_result_local(self.op.apply(xin), xt, self.op).reshape(yt.local.shape))

    def multTranspose(self, mat: Any, x: Any, y: Any) -> None:
        if getattr(self.op, "is_symmetric", None) is not True:
            raise NotImplementedError("the operator is not known to be symmetric; its transpose is not available")
        self.mult(mat, x, y)

    def getDiagonal(self, mat: Any, d: Any) -> None:
        dt = from_petsc_vec(d, self.grid)
        dt.local.copy_(_on_grid(self.op.diagonal(), self.grid, "the diagonal").local.reshape(dt.local.shape))


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

    takes_grid_tensors = True

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

    def apply(self, x: Any) -> Any:
        """``A x`` for a GridTensor on the operator's grid (or, on one rank, on any one-rank grid with its number
        of cells), or a plain tensor on one rank (each sample ``(n,)`` or laid out on the grid)."""
        g, restore = _lift(x, self.grid)
        _check_grid(g, self.grid, "x", "the operator lives on")
        return restore(g.with_local(_each_sample(self._mult, g.local)))  # one MatMult per sample and channel

    def _mult(self, local: torch.Tensor) -> torch.Tensor:
        return _through_petsc(self.mat.mult, self._x, self._y, local)

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

