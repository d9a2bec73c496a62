"""PETSc interop (petsc4py, imported lazily): the only module of deepkrylov that touches PETSc.

* Vectors: :func:`to_petsc_vec` / :func:`from_petsc_vec` convert between a GridTensor and a DMDA global
  ``PETSc.Vec`` without copying when the layouts allow (CPU, float64, contiguous block with one sample and one
  channel): a DMDA global vector stores each rank's block x-fastest, exactly like ``GridTensor.local``.
* Operators: :func:`as_petsc_mat` exposes any deepkrylov operator as a ``MATPYTHON`` shell;
  :class:`PetscMatOperator` exposes a PETSc ``Mat`` as a deepkrylov operator; :func:`assemble_aij` assembles a
  SciPy CSR in natural (DMDA x-fastest) ordering into a parallel AIJ ``Mat`` in PETSc ordering, each rank its rows.
* Baseline: :func:`petsc_solve` runs ``KSPSolve`` (CG with Jacobi, ICC, GAMG, hypre BoomerAMG, ...) on the same
  operator and right-hand side and returns a :class:`~deepkrylov.solvers.SolveResult`.
* The other direction: :class:`PetscPC` wraps any PETSc PC as a deepkrylov preconditioner for deepkrylov's own
  iterations, e.g. ``cg(A, b, M=PetscPC(A, "hypre"))``.
* Plugins for PETSc programs, through the options database only:
  ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.CG`` runs deepkrylov's CG;
  ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.PC`` wraps a deepkrylov preconditioner (Jacobi by
  default; ``-deepkrylov_pc_type jacobi|identity|module:factory`` under the PC's options prefix). Every plugin
  finds its grid with :func:`plugin_grid`: the KSP's/PC's DMDA, the vector's, or ``-<prefix>deepkrylov_grid
  nx,ny,nz`` (x first).
"""

from __future__ import annotations

import atexit
import itertools
import weakref
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from .preconditioners import Preconditioner
from .result import ConvergedReason, SolveResult

__all__ = [
    "petsc_available", "import_petsc", "petsc_comm", "create_dmda", "grid_from_dmda", "to_petsc_vec",
    "from_petsc_vec", "natural_to_petsc", "assemble_aij", "as_petsc_mat", "PetscMatOperator", "ShellContext",
    "set_constant_null_space", "set_null_space", "petsc_solve", "PC_TYPES", "PetscPC", "plugin_grid", "GRID_OPTION",
    "CG", "FCG", "PC", "Jacobi", "DCDM", "DCDMPC", "embedding_environment",
]

_INSTALL_HINT = (
    "petsc4py is not installed: deepkrylov's PETSc interop needs it. Install it with "
    "`pip install deepkrylov[petsc]` (petsc4py 3.18, against the system PETSc; PETSC_DIR="
    "/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real) or run scripts/setup.sh"
)

PC_TYPES = ("none", "jacobi", "icc", "gamg", "hypre", "sor", "bjacobi", "lu", "cholesky")


def petsc_available() -> bool:
    try:
        import_petsc()
    except ImportError:
        return False
    return True


def import_petsc() -> Any:
    """``petsc4py.PETSc``, or ImportError saying how to install it."""
    try:
        from petsc4py import PETSc
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return PETSc


# ---- communicators, DMDA, vectors ----------------------------------------------------------------------------
def petsc_comm(grid: ProcessGrid) -> Any:
    """The PETSc communicator matching ``grid``'s ranks."""
    PETSc = import_petsc()
    comm = grid.comm
    mpi_comm = getattr(comm, "mpi_comm", None)
    if mpi_comm is not None:
        return PETSc.Comm(mpi_comm)
    if comm.size == 1:
        return PETSc.COMM_SELF
    if PETSc.COMM_WORLD.getSize() != comm.size:
        raise ValueError(f"grid has {comm.size} ranks but PETSc.COMM_WORLD has {PETSc.COMM_WORLD.getSize()}")
    return PETSc.COMM_WORLD


def create_dmda(grid: ProcessGrid, dof: int = 1, stencil_width: int = 1, stencil: str = "star") -> Any:
    """A DMDA with the same sizes, process layout and ownership ranges as ``grid`` (axes reversed: PETSc is x first)."""
    PETSc = import_petsc()
    if stencil not in ("star", "box"):
        raise ValueError(f"stencil must be 'star' or 'box', but got {stencil!r}")
    bt = tuple(PETSc.DM.BoundaryType.PERIODIC if p else PETSc.DM.BoundaryType.NONE for p in reversed(grid.periodic))
    da = PETSc.DMDA().create(
        dim=grid.ndim, dof=dof, sizes=tuple(reversed(grid.global_shape)), proc_sizes=tuple(reversed(grid.dims)),
        boundary_type=bt, stencil_type=PETSc.DMDA.StencilType.STAR if stencil == "star" else PETSc.DMDA.StencilType.BOX,
        stencil_width=stencil_width, ownership_ranges=tuple(tuple(s) for s in reversed(grid.splits)),
        comm=petsc_comm(grid),
    )
    return da


def grid_from_dmda(da: Any) -> ProcessGrid:
    """The ProcessGrid with ``da``'s layout (tensor order z, y, x)."""
    comm = da.getComm().tompi4py()
    return ProcessGrid(
        comm, tuple(reversed(da.getSizes())), dims=tuple(reversed(da.getProcSizes())),
        splits=tuple(tuple(int(v) for v in s) for s in reversed(da.getOwnershipRanges())),
    )


def _dmda_layout(dm: Any) -> Optional[tuple]:
    """(sizes, proc_sizes, ownership ranges), x first, of a DM of type ``da`` that petsc4py hands out as a plain
    ``DM`` (e.g. from ``Vec.getDM()`` on a vector made in C): read through the C API with ctypes."""
    import ctypes

    PETSc = import_petsc()
    try:
        lib = ctypes.CDLL(_libpetsc_path(), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    Int = ctypes.c_int64 if np.dtype(PETSc.IntType).itemsize == 8 else ctypes.c_int32
    vals = [Int(0) for _ in range(9)]  # dim, M, N, P, m, n, p, dof, stencil width
    h = ctypes.c_void_p(dm.handle)
    err = lib.DMDAGetInfo(h, *[ctypes.byref(v) for v in vals], None, None, None, None)
    if err:
        return None
    dim, M, N, Pz, m, n, p, dof, _ = (int(v.value) for v in vals)
    if dof != 1:
        return None
    ptrs = [ctypes.POINTER(Int)() for _ in range(3)]
    if lib.DMDAGetOwnershipRanges(h, *[ctypes.byref(q) for q in ptrs]):
        return None
    sizes, procs = (M, N, Pz)[:dim], (m, n, p)[:dim]
    ranges = tuple(tuple(int(ptrs[a][i]) for i in range(procs[a])) for a in range(dim))
    return sizes, procs, ranges


def _libpetsc_path() -> str:
    import os

    import petsc4py

    cfg = petsc4py.get_config()
    base = os.path.join(cfg.get("PETSC_DIR", ""), cfg.get("PETSC_ARCH", "") or "", "lib")
    for name in ("libpetsc_real.so", "libpetsc.so", "libpetsc_real.so.3.18"):
        path = os.path.join(base, name)
        if os.path.exists(path):
            return path
    return "libpetsc.so"


def _grid_from_dm(dm: Any) -> Optional[ProcessGrid]:
    """The grid of a DMDA with one degree of freedom per cell (None for no DM, another DM type, or dof > 1); also
    for a DMDA made in C that petsc4py hands out as a plain ``DM``."""
    if not dm or dm.getType() != "da":
        return None
    if hasattr(dm, "getOwnershipRanges"):
        return grid_from_dmda(dm) if dm.getDof() == 1 else None
    layout = _dmda_layout(dm)
    if layout is None:
        return None
    sizes, procs, ranges = layout
    return ProcessGrid(dm.getComm().tompi4py(), tuple(reversed(sizes)), dims=tuple(reversed(procs)),
                       splits=tuple(reversed(ranges)))


def _layout_grid(vec: Any) -> ProcessGrid:
    """The 1D grid of a vector's ownership ranges."""
    ranges = vec.getOwnershipRanges()
    return ProcessGrid(vec.getComm().tompi4py(), (int(vec.getSize()),),
                       splits=(tuple(int(b - a) for a, b in zip(ranges[:-1], ranges[1:])),))


def _grid_for_vec(vec: Any) -> ProcessGrid:
    """A grid for a PETSc vector: its DMDA's when it has one, else 1D with the vector's ownership ranges."""
    grid = _grid_from_dm(vec.getDM())
    return grid if grid is not None else _layout_grid(vec)


GRID_OPTION = "deepkrylov_grid"
"""The option (under the KSP's or PC's options prefix) that gives a python plugin its grid when the KSP has no
DMDA: ``-deepkrylov_grid 64,64,64`` (``-<prefix>deepkrylov_grid``), cells per axis **x first**, like DMDA sizes
and ``-da_grid_x/y/z``."""


def _option_grid_shape(obj: Any) -> Optional[tuple[int, ...]]:
    """The ``-<prefix>deepkrylov_grid`` option of a KSP or PC in tensor order (z, y, x), or None when not given."""
    PETSc = import_petsc()
    prefix = obj.getOptionsPrefix() or ""
    opts = PETSc.Options(prefix)
    if not opts.hasName(GRID_OPTION):
        return None
    text = (opts.getString(GRID_OPTION, "") or "").strip()
    try:
        sizes = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if not 1 <= len(sizes) <= 3 or any(v < 1 for v in sizes):
        raise ValueError(f"-{prefix}{GRID_OPTION} must be 1 to 3 positive cell counts separated by commas, x first "
                         f"(e.g. 64,64,64), but got {text!r}")
    return tuple(reversed(sizes))


def plugin_grid(obj: Any, vec: Any, *, ndim: Optional[int] = None, what: str = "this plugin") -> ProcessGrid:
    """The grid a python KSP/PC plugin works on, for every plugin (CG, FCG, PC, Jacobi, DCDM, DCDMPC).

    In this order: the DMDA of ``obj`` (a KSP's DM, or a PC's, which ``KSPSetDM`` sets too), the DMDA of ``vec``,
    the option ``-<prefix>deepkrylov_grid nx,ny,nz`` (:data:`GRID_OPTION`, under ``obj``'s options prefix; when
    a DMDA is present too, they must agree), else the 1D layout of ``vec``. ``ndim`` is the number of axes the
    plugin needs (e.g. 3 for a 3D network); when no source gives that many, the error names the option to give.
    Every rank takes the same decision, so a failure is the same error on every rank, not a hang.
    """
    prefix = obj.getOptionsPrefix() or ""
    option = f"-{prefix}{GRID_OPTION}"
    shape = _option_grid_shape(obj)
    grid, source = _grid_from_dm(obj.getDM()), f"the {type(obj).__name__}'s DMDA"  # a KSP without one: a DMShell
    if grid is None:
        grid, source = _grid_from_dm(vec.getDM()), "the vector's DMDA"
    if grid is not None and shape is not None and tuple(grid.global_shape) != shape:
        raise ValueError(f"{option} {','.join(map(str, reversed(shape)))} disagrees with {source} of "
                         f"{','.join(map(str, reversed(grid.global_shape)))} cells (x first)")
    if grid is None and shape is not None:
        comm = vec.getComm().tompi4py()
        grid, source = ProcessGrid(comm, shape), option
        nloc, n = _sizes(grid)
        if comm.allreduce(int(n != vec.getSize() or nloc != vec.getLocalSize())):  # the same decision on every rank
            raise ValueError(
                f"{option} {','.join(map(str, reversed(shape)))} gives {n} cells, {nloc} on this rank (DMDA's default "
                f"split), but the vector has {vec.getSize()}, {vec.getLocalSize()} on this rank; give the grid the "
                "matrix was built on, or set the DMDA on the KSP (KSPSetDM, KSPSetDMActive(ksp, PETSC_FALSE))"
            )
    if grid is None:
        grid, source = _layout_grid(vec), "the vector's 1D layout (no DMDA, no option)"
    if ndim is not None and grid.ndim != ndim:
        example = ",".join(["64"] * ndim)
        raise ValueError(
            f"{what} needs a {ndim}D grid, but found a {grid.ndim}D grid of "
            f"{','.join(map(str, reversed(grid.global_shape)))} cells from {source}; give the grid with "
            f"{option} {example} (cells per axis, x first) or set a DMDA on the KSP (KSPSetDM with "
            "KSPSetDMActive(ksp, PETSC_FALSE))"
        )
    if _sizes(grid)[1] != vec.getSize():
        raise ValueError(f"the grid from {source} has {_sizes(grid)[1]} cells but the vector {vec.getSize()} entries")
    return grid


def _through_petsc(op: Any, xvec: Any, yvec: Any, local: torch.Tensor) -> torch.Tensor:
    """``op(xvec, yvec)`` with the work vectors lent ``local`` (zero-copy where possible) and a fresh result
    buffer; returns the result in ``local``'s dtype and device."""
    src = local if _zero_copy_ok(local) else local.detach().to("cpu", torch.float64).contiguous()
    dst = torch.empty_like(src)
    xvec.placeArray(src.numpy().reshape(-1))
    yvec.placeArray(dst.numpy().reshape(-1))
    try:
        op(xvec, yvec)
    finally:
        xvec.resetArray()
        yvec.resetArray()
    return dst.to(device=local.device, dtype=local.dtype)


def _sizes(grid: ProcessGrid) -> tuple[int, int]:
    return int(np.prod(grid.local_shape)), int(np.prod(grid.global_shape))


def _zero_copy_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float64 and t.is_contiguous() and not t.requires_grad


def to_petsc_vec(x: GridTensor, copy: bool = False) -> Any:
    """A DMDA-ordered global ``PETSc.Vec`` over ``x``'s data (one sample, one channel).

    Shares memory (writes through either are seen through the other) when ``x.local`` is a contiguous CPU
    float64 tensor and ``copy`` is False; otherwise the data are copied (PETSc here is real double on the CPU).
    """
    PETSc = import_petsc()
    if not isinstance(x, GridTensor):
        raise TypeError(f"x must be a GridTensor, but got {type(x).__name__}")
    if x.local.shape[:2] != (1, 1):
        raise ValueError(f"to_petsc_vec needs one sample and one channel, but got local shape {tuple(x.local.shape)}")
    nloc, n = _sizes(x.grid)
    t = x.local
    if copy or not _zero_copy_ok(t):
        t = t.detach().to(device="cpu", dtype=torch.float64).contiguous().clone()
    arr = t.numpy().reshape(-1)
    vec = PETSc.Vec().createWithArray(arr, size=(nloc, n), comm=petsc_comm(x.grid))
    vec.setAttr("__deepkrylov_owner__", t)  # keep the torch storage alive as long as the Vec
    return vec


def from_petsc_vec(vec: Any, grid: Optional[ProcessGrid] = None, copy: bool = False) -> GridTensor:
    """A GridTensor over a PETSc global vector's local array (zero copy unless ``copy``).

    ``grid`` defaults to the vector's DMDA layout, or a 1D layout with its ownership ranges.
    """
    import_petsc()
    grid = grid if grid is not None else _grid_for_vec(vec)
    nloc, n = _sizes(grid)
    if vec.getLocalSize() != nloc or vec.getSize() != n:
        raise ValueError(
            f"vector sizes (local {vec.getLocalSize()}, global {vec.getSize()}) do not match the grid "
            f"(local {nloc} = {grid.local_shape}, global {n})"
        )
    t = torch.from_numpy(vec.getArray())
    if copy:
        t = t.clone()
    return GridTensor(t.reshape((1, 1) + grid.local_shape), grid)


def _as_local(x: Any, grid: ProcessGrid) -> torch.Tensor:
    return x.local if isinstance(x, GridTensor) else x


# ---- orderings and assembly ------------------------------------------------------------------------------
def natural_to_petsc(grid: ProcessGrid) -> np.ndarray:
    """Map natural (global x-fastest) indices to PETSc's DMDA global indices (each rank's block contiguous)."""
    n = int(np.prod(grid.global_shape))
    nat = np.arange(n, dtype=np.int64).reshape(grid.global_shape)
    out = np.empty(n, dtype=np.int64)
    start = 0
    for r in range(grid.size):
        idx = nat[grid.local_slices_of(r)].reshape(-1)
        out[idx] = np.arange(start, start + idx.size, dtype=np.int64)
        start += idx.size
    return out


def _local_natural_rows(grid: ProcessGrid) -> np.ndarray:
    nat = np.arange(int(np.prod(grid.global_shape)), dtype=np.int64).reshape(grid.global_shape)
    return nat[grid.local_slices].reshape(-1)


def assemble_aij(A: Any, grid: ProcessGrid) -> Any:
    """Assemble a matrix in natural ordering (SciPy sparse, or an operator with ``to_scipy()``) into a PETSc AIJ
    ``Mat`` in DMDA ordering on ``grid``'s ranks; each rank inserts only its own rows."""
    PETSc = import_petsc()
    import scipy.sparse as sp

    if not sp.issparse(A):
        to_scipy = getattr(A, "to_scipy", None)
        if to_scipy is None:
            raise TypeError(f"assemble_aij needs a scipy.sparse matrix or an operator with to_scipy(), got {type(A).__name__}")
        A = to_scipy()
    A = sp.csr_matrix(A)
    nloc, n = _sizes(grid)
    if A.shape != (n, n):
        raise ValueError(f"matrix shape {A.shape} does not match the grid's {n} unknowns ({grid.global_shape})")
    perm = natural_to_petsc(grid)
    rows = A[_local_natural_rows(grid)]
    local = sp.csr_matrix((rows.data.astype(np.float64), perm[rows.indices], rows.indptr), shape=(nloc, n))
    local.sort_indices()
    mat = PETSc.Mat().createAIJ(
        size=((nloc, n), (nloc, n)),
        csr=(local.indptr.astype(PETSc.IntType), local.indices.astype(PETSc.IntType), local.data),
        comm=petsc_comm(grid),
    )
    mat.assemble()
    return mat


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


# ---- operators both ways -------------------------------------------------------------------------------------
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


_live_shells: dict = {}
_atexit_registered = False


def _destroy_live_shells() -> None:
    """Destroy shell Mats still alive at exit, while Python can still run their contexts (PETSc finalizes
    after the interpreter and would otherwise call into a dead interpreter)."""
    for ref in list(_live_shells.values()):
        mat = ref()
        if mat is None:
            continue
        try:
            mat.destroy()
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


def _track_petsc_object(obj: Any) -> None:
    """Destroy ``obj`` (a PETSc Mat, PC, Vec) at exit if it is still alive then: before PETSc is finalized."""
    global _atexit_registered
    key = id(obj)
    _live_shells[key] = weakref.ref(obj, lambda _r, key=key: _live_shells.pop(key, None))
    if not _atexit_registered:
        atexit.register(_destroy_live_shells)
        _atexit_registered = True


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


def _base_operator() -> type:
    from .matrix import LinearOperator

    return LinearOperator


class PetscMatOperator(_base_operator()):  # type: ignore[misc]
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


# ---- baseline runner ---------------------------------------------------------------------------------------
_counter = itertools.count()

_NORMS = {"unpreconditioned": "UNPRECONDITIONED", "preconditioned": "PRECONDITIONED", "natural": "NATURAL"}


def _pc_options(pc_type: str, size: int) -> dict:
    if pc_type == "icc":
        return {"pc_type": "icc"} if size == 1 else {"pc_type": "bjacobi", "sub_pc_type": "icc"}
    if pc_type == "hypre":
        return {"pc_type": "hypre", "pc_hypre_type": "boomeramg"}
    return {"pc_type": pc_type}


def petsc_solve(
    A: Any, b: GridTensor, x0: Optional[GridTensor] = None, *, ksp_type: str = "cg", pc_type: str = "jacobi",
    rtol: float = 1e-5, atol: float = 1e-50, dtol: float = 1e5, max_it: int = 10000,
    norm_type: str = "unpreconditioned", reference: str = "rhs", null_space: Any = False,
    options: Optional[dict] = None, monitor: Optional[Callable[[int, float], None]] = None,
) -> SolveResult:
    """Solve ``A x = b`` with PETSc KSP (the baseline): same tolerances and stopping test as deepkrylov's solvers.

    Args:
        A: a PETSc ``Mat``, a SciPy sparse matrix in natural ordering, or a deepkrylov operator (assembled via
            ``to_scipy()`` when it has one, else used as a ``MATPYTHON`` shell: then only ``jacobi``/``none`` PCs).
        b, x0: GridTensors (one sample, one channel).
        ksp_type: any PETSc KSP type (``cg``, ``gmres``, ...). pc_type: one of :data:`PC_TYPES` (``icc`` in
            parallel becomes block Jacobi with ICC per block; ``hypre`` is BoomerAMG).
        norm_type: ``unpreconditioned`` (default, like deepkrylov), ``preconditioned`` or ``natural``.
        reference: ``rhs``, ``initial`` or ``min`` (see :mod:`deepkrylov.solvers.stopping`).
        null_space: ``True`` attaches the constant null space, a GridTensor or whole field attaches that vector
            (e.g. ``op.null_space()`` for pure Neumann with obstacles); it is projected out of ``b`` (the Mat keeps
            it attached).
        options: extra PETSc options (without the prefix), e.g. ``{"pc_gamg_agg_nsmooths": 1}``.
        monitor: called as ``monitor(it, rnorm)`` at every iteration (a KSP monitor), e.g. to show progress.

    Returns a :class:`SolveResult` with ``info`` holding ``setup_time``, ``solve_time``, ``ksp_type``,
    ``pc_type``; ``wall_time`` is set-up plus solve.
    """
    PETSc = import_petsc()
    if pc_type not in PC_TYPES:
        raise ValueError(f"pc_type must be one of {PC_TYPES}, but got {pc_type!r}")
    if norm_type not in _NORMS:
        raise ValueError(f"norm_type must be one of {tuple(_NORMS)}, but got {norm_type!r}")
    if reference not in ("rhs", "initial", "min"):
        raise ValueError(f"reference must be one of ('rhs', 'initial', 'min'), but got {reference!r}")
    if not isinstance(b, GridTensor):
        raise TypeError(f"b must be a GridTensor, but got {type(b).__name__}")
    grid = b.grid
    if isinstance(A, PETSc.Mat):
        mat = A
    elif hasattr(A, "to_scipy") or type(A).__module__.startswith("scipy.sparse"):
        try:
            mat = assemble_aij(A, grid)
        except NotImplementedError:
            mat = as_petsc_mat(A, grid)
    elif hasattr(A, "apply"):
        mat = as_petsc_mat(A, grid)
    else:
        raise TypeError(f"A must be a PETSc Mat, scipy.sparse matrix or deepkrylov operator, but got {type(A).__name__}")
    if mat.getSize()[0] != int(np.prod(grid.global_shape)):
        raise ValueError(f"A has size {mat.getSize()} but b has {int(np.prod(grid.global_shape))} unknowns")
    prefix = f"dkbase{next(_counter)}_"
    opts = PETSc.Options()
    settings = {"ksp_type": ksp_type, "ksp_norm_type": _NORMS[norm_type].lower(), **_pc_options(pc_type, grid.size)}
    if reference == "initial":
        settings["ksp_converged_use_initial_residual_norm"] = None
    elif reference == "min":
        settings["ksp_converged_use_min_initial_residual_norm"] = None
    settings.update(options or {})
    for k, v in settings.items():
        opts.setValue(prefix + k, "" if v is None else str(v))
    ns = None
    bv = to_petsc_vec(b, copy=True)
    xv = to_petsc_vec(x0, copy=True) if x0 is not None else bv.duplicate()
    if x0 is None:
        xv.set(0.0)
    if null_space is True:
        ns = set_constant_null_space(mat)
    elif null_space is not None and null_space is not False:
        ns = set_null_space(mat, null_space, grid)
    if ns is not None:
        ns.remove(bv)
    ksp = PETSc.KSP().create(comm=mat.getComm())
    try:
        ksp.setOptionsPrefix(prefix)
        ksp.setOperators(mat)
        if grid.ndim > 1:  # tell python KSPs/PCs (e.g. DCDM) the grid behind the assembled matrix
            ksp.setDM(create_dmda(grid))
            ksp.setDMActive(False)
        ksp.setTolerances(rtol=rtol, atol=atol, divtol=dtol, max_it=max_it)
        ksp.setInitialGuessNonzero(x0 is not None)
        ksp.setConvergenceHistory(length=max_it + 1)
        if monitor is not None:
            ksp.setMonitor(lambda _ksp, it, rnorm: monitor(int(it), float(rnorm)))
        ksp.setFromOptions()
        t0 = time.perf_counter()
        ksp.setUp()
        t1 = time.perf_counter()
        ksp.solve(bv, xv)
        t2 = time.perf_counter()
        hist = [float(v) for v in ksp.getConvergenceHistory()]
        reason = ConvergedReason(int(ksp.getConvergedReason()))
        its = int(ksp.getIterationNumber())
        x = from_petsc_vec(xv, grid, copy=True)
        x = x.with_local(x.local.to(dtype=b.dtype, device=b.device))
        info = {"setup_time": t1 - t0, "solve_time": t2 - t1, "ksp_type": ksp.getType(),
                "pc_type": ksp.getPC().getType(), "norm_type": norm_type}
    finally:
        ksp.destroy()
        for k in settings:
            opts.delValue(prefix + k)
    return SolveResult(x=x, iterations=its, residual_norms=hist, reason=reason, wall_time=t2 - t0, info=info)


# ---- plugins: python KSP and PC types ----------------------------------------------------------------------
_PETSC_ERR_ARG_WRONG = 62  # petscerror.h; stable across PETSc versions
_PETSC_ERROR_INITIAL = 0   # PetscErrorType


def _report_to_petsc(where: str, err: BaseException) -> None:
    """Put ``err``'s message on PETSc's error trace (``PetscError``), so that a C program that runs a plugin prints
    it in its ``PETSC ERROR`` report: petsc4py hands PETSc only the code of a Python exception, and an embedded
    Python's traceback is never printed. Under a Python host, petsc4py's handler records it silently and the
    exception itself propagates."""
    import ctypes

    try:
        from mpi4py import MPI

        lib = ctypes.CDLL(_libpetsc_path(), mode=ctypes.RTLD_GLOBAL)
        handle = MPI._handleof(MPI.COMM_SELF)
        comm = ctypes.c_void_p(handle) if MPI._sizeof(MPI.Comm) == ctypes.sizeof(ctypes.c_void_p) else ctypes.c_int(handle)
        msg = f"{type(err).__name__}: {err}".encode(errors="replace")
        lib.PetscError(comm, ctypes.c_int(0), where.encode(), b"deepkrylov/solvers/petsc.py",
                       ctypes.c_int(_PETSC_ERR_ARG_WRONG), ctypes.c_int(_PETSC_ERROR_INITIAL), b"%s", msg)
    except Exception:  # noqa: BLE001 - reporting is best effort; the exception itself still goes to PETSc
        pass


def _reports_errors(method: Callable) -> Callable:
    """Decorate a plugin method (``setUp``, ``solve``, ``apply``) so that an exception is reported to PETSc with its
    message (see :func:`_report_to_petsc`) before PETSc gets the error code."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as err:
            _report_to_petsc(f"deepkrylov.solvers.petsc.{type(self).__name__}.{method.__name__}", err)
            raise

    return wrapper


def _norm_name(ksp: Any) -> str:
    PETSc = import_petsc()
    nt = ksp.getNormType()
    if nt == PETSc.KSP.NormType.UNPRECONDITIONED:
        return "unpreconditioned"
    if nt == PETSc.KSP.NormType.NATURAL:
        return "natural"
    return "preconditioned"


# ---- any PETSc PC as a deepkrylov preconditioner ---------------------------------------------------------------
_SYMMETRIC_PCS = {
    "none": True, "jacobi": True, "pbjacobi": True, "icc": True, "cholesky": True,
    "sor": True,    # PETSc's default SOR is the local symmetric sweep
    "gamg": True,   # symmetric V-cycle: Chebyshev/Jacobi smoothing before and after, Galerkin coarse operators
    "hypre": True,  # BoomerAMG with PETSc's default symmetric relaxation and Galerkin coarse operators
}
"""PC types whose default settings give a symmetric ``M`` for a symmetric matrix (checked, ``<M u, v> = <u, M v>``,
in tests/solvers/test_petsc.py for jacobi, icc, gamg, hypre). Other types: unknown (None)."""


def _pc_type_names() -> tuple[str, ...]:
    PETSc = import_petsc()
    return tuple(sorted({v for k, v in vars(PETSc.PC.Type).items() if not k.startswith("_") and isinstance(v, str)}))


class PetscPC(Preconditioner):
    """Any PETSc preconditioner (``hypre``, ``gamg``, ``icc``, ``jacobi``, ...) for deepkrylov's own iterations.

    ``cg(A, b, M=PetscPC(A, "hypre"))``: ``A`` is assembled once into a PETSc AIJ matrix (DMDA ordering), the PC
    is set up on it once (``setup_time`` records assembly plus ``PCSetUp``), and every :meth:`apply` is one
    ``PCApply`` on the vector's memory (no copy for CPU float64). ``icc`` on several ranks is block Jacobi with
    ICC per block and ``hypre`` is BoomerAMG, as in :func:`petsc_solve`, so iteration counts compare with it.

    Args:
        A: the matrix: a deepkrylov operator with ``to_scipy()`` (e.g. ``laplacian(...)``), a
            :class:`PetscMatOperator`, a SciPy sparse matrix (natural x-fastest ordering) or a PETSc ``Mat``.
        pc_type: a PETSc PC type name.
        grid: the :class:`ProcessGrid` of the vectors it will be applied to. Default: a PetscMatOperator's grid, or
            the grid of the first GridTensor applied (a plain tensor: one process); set-up happens then.
        options: PETSc options for this PC without the prefix, e.g. ``{"pc_hypre_boomeramg_strong_threshold":
            0.5}``. Options already in PETSc's database under this prefix (command line, ``PETSC_OPTIONS``) win.
        prefix: the options prefix (default ``dkpcN_``); ``-<prefix>pc_...`` on the command line configures it.
        symmetric: whether ``M`` is symmetric. Default: True for the types of :data:`_SYMMETRIC_PCS` (jacobi, icc,
            sor, gamg, hypre, ...) with their default settings, else unknown (None). Options that break symmetry
            (e.g. non-symmetric smoothers) need ``symmetric=False`` (then ``cg`` refuses it: use ``fcg``).

    Call :meth:`close` (or :meth:`reset`) to free the PETSc objects; they are also freed at exit.
    """

    is_positive_definite = None

    def __init__(self, A: Any = None, pc_type: str = "jacobi", *, grid: Optional[ProcessGrid] = None,
                 options: Optional[dict] = None, prefix: Optional[str] = None,
                 symmetric: Optional[bool] = None) -> None:
        names = _pc_type_names()
        if pc_type not in names:
            raise ValueError(f"pc_type must be a PETSc PC type, one of {names}, but got {pc_type!r}")
        if grid is not None and not isinstance(grid, ProcessGrid):
            raise TypeError(f"grid must be a ProcessGrid or None, but got {type(grid).__name__}")
        self.pc_type = pc_type
        self.grid = grid
        self.options = dict(options or {})
        self.prefix = prefix if prefix is not None else f"dkpc{next(_counter)}_"
        self.is_symmetric = symmetric if symmetric is not None else _SYMMETRIC_PCS.get(pc_type)
        self.setup_time: Optional[float] = None
        self.assembly_time: Optional[float] = None
        self.pc: Any = None
        self.A: Any = None
        self._mat: Any = None
        self._owns = (False, False)  # (the PC, the Mat)
        self._work: Any = None
        self.is_setup = False
        if A is not None:
            self.setup(A)

    @classmethod
    def from_petsc(cls, pc: Any, grid: ProcessGrid) -> "PetscPC":
        """Wrap a PETSc ``PC`` that PETSc already set up (e.g. a KSP's, inside a python KSP plugin); the PC stays
        its owner's (:meth:`close` frees only the work vectors)."""
        self = cls.__new__(cls)
        self.pc_type, self.grid, self.options, self.prefix = pc.getType(), grid, {}, pc.getOptionsPrefix() or ""
        self.is_symmetric = _SYMMETRIC_PCS.get(self.pc_type)
        self.setup_time = self.assembly_time = None
        self.pc, self.A, self._owns = pc, None, (False, False)
        self._mat = pc.getOperators()[1]
        self._work = self._mat.createVecs()
        self.is_setup = True
        return self

    def setup(self, A: Any) -> "PetscPC":
        """Take the matrix ``A``; assemble and set the PC up now if the vectors' grid is known, else at the first
        :meth:`apply`. Returns self."""
        PETSc = import_petsc()
        self.reset()
        if isinstance(A, PetscMatOperator):
            self.grid = self.grid if self.grid is not None else A.grid
        elif isinstance(A, PETSc.Mat):
            if self.grid is None:
                x, _ = A.createVecs()
                self.grid = _grid_for_vec(x)
                x.destroy()
        elif not (hasattr(A, "to_scipy") or type(A).__module__.startswith("scipy.sparse")):
            raise TypeError(
                "PetscPC needs an assembled matrix: a deepkrylov operator with to_scipy(), a PetscMatOperator, a "
                f"scipy.sparse matrix or a PETSc Mat, but got {type(A).__name__}"
            )
        self.A = A
        self.is_setup = True
        if self.grid is not None:
            self._build(self.grid)
        return self

    def _build(self, grid: ProcessGrid) -> None:
        """Assemble (unless ``A`` is a PETSc matrix already) and ``PCSetUp`` on ``grid``'s ranks."""
        PETSc = import_petsc()
        t0 = time.perf_counter()
        A = self.A
        if isinstance(A, PetscMatOperator):
            if A.grid != grid:
                raise ValueError(f"the PetscMatOperator lives on {A.grid!r} but the vectors on {grid!r}")
            mat, own_mat = A.mat, False
        elif isinstance(A, PETSc.Mat):
            mat, own_mat = A, False
        else:
            mat, own_mat = assemble_aij(A, grid), True
        if mat.getSize()[0] != _sizes(grid)[1]:
            raise ValueError(f"the matrix has size {mat.getSize()} but the grid {grid.global_shape} has "
                             f"{_sizes(grid)[1]} cells")
        t1 = time.perf_counter()
        opts = PETSc.Options()
        settings = {**_pc_options(self.pc_type, grid.size), **self.options}
        inserted = [k for k in settings if not opts.hasName(self.prefix + k)]
        for k in inserted:
            v = settings[k]
            opts.setValue(self.prefix + k, "" if v is None else str(v))
        pc = PETSc.PC().create(comm=mat.getComm())
        try:
            pc.setOptionsPrefix(self.prefix)
            pc.setOperators(mat, mat)
            pc.setType(settings["pc_type"])
            pc.setFromOptions()
            pc.setUp()
            pc.setUpOnBlocks()  # block Jacobi factors its blocks here, not at the first apply
        except Exception:
            pc.destroy()
            if own_mat:
                mat.destroy()
            raise
        finally:
            for k in inserted:
                opts.delValue(self.prefix + k)
        t2 = time.perf_counter()
        self.pc, self._mat, self._owns, self.grid = pc, mat, (True, own_mat), grid
        self._work = mat.createVecs()
        for obj in (pc, *self._work) + ((mat,) if own_mat else ()):
            _track_petsc_object(obj)
        self.assembly_time, self.setup_time = t1 - t0, t2 - t0

    def _grid_for(self, r: Any) -> ProcessGrid:
        if isinstance(r, GridTensor):
            return r.grid
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"PetscPC applies to a torch.Tensor or GridTensor, but got {type(r).__name__}")
        if self.grid is not None:
            return self.grid
        mesh = getattr(self.A, "grid", None)
        shape = tuple(getattr(mesh, "shape", ())) or (int(self.A.shape[0]),)
        return ProcessGrid(None, shape)  # a plain tensor: one process

    def apply(self, r: Any) -> Any:
        if not self.is_setup:
            raise RuntimeError("PetscPC.apply before setup(A): pass the matrix to PetscPC(A, ...) or to the solver")
        grid = self._grid_for(r)
        if self.pc is None:
            self._build(grid)
        elif isinstance(r, GridTensor) and r.grid != self.grid:
            raise ValueError(f"r lives on {r.grid!r} but this PetscPC was set up on {self.grid!r}")
        local = r.local if isinstance(r, GridTensor) else r
        nloc = _sizes(self.grid)[0]
        per = local.numel() // max(local.shape[0] * local.shape[1], 1) if local.dim() > 2 else local.numel()
        if local.dim() > 2 and local.shape[:2] != (1, 1):  # a batch or several channels: one PCApply each
            parts = [self._apply_local(local[i:i + 1, c:c + 1]) for i in range(local.shape[0])
                     for c in range(local.shape[1])]
            out = torch.cat([p.reshape(1, -1) for p in parts]).reshape(local.shape)
        elif per == nloc:
            out = self._apply_local(local)
        else:
            raise ValueError(f"r has {per} entries per sample on this rank but the PC {nloc}")
        return r.with_local(out) if isinstance(r, GridTensor) else out

    def _apply_local(self, local: torch.Tensor) -> torch.Tensor:
        xv, yv = self._work
        return _through_petsc(self.pc.apply, xv, yv, local.contiguous())

    def reset(self) -> None:
        """Free the PETSc objects this object made (the PC, an assembled matrix, work vectors)."""
        for v in self._work or ():
            v.destroy()
        own_pc, own_mat = self._owns
        if own_pc and self.pc is not None:
            self.pc.destroy()
        if own_mat and self._mat is not None:
            self._mat.destroy()
        self.pc, self._mat, self._work, self._owns = None, None, None, (False, False)
        self.is_setup = False

    def close(self) -> None:
        """Free the PETSc objects now (PETSc may be finalized before Python collects them)."""
        self.reset()

    def __repr__(self) -> str:
        t = f", setup {self.setup_time:.3g}s" if self.setup_time is not None else ""
        return f"PetscPC({self.pc_type!r}, prefix={self.prefix!r}, symmetric={self.is_symmetric}{t})"


def _ksp_monitor(ksp: Any) -> Callable[[int, float], None]:
    """A deepkrylov ``callback(it, rnorm)`` that reports to the KSP: iteration number, residual norm, convergence
    history and PETSc monitors (``-ksp_monitor``)."""

    def monitor(it: int, rnorm: float) -> None:
        ksp.setIterationNumber(it)
        ksp.setResidualNorm(rnorm)
        ksp.logConvergenceHistory(rnorm)
        ksp.monitor(it, rnorm)

    return monitor


def _finish(ksp: Any, res: SolveResult, xt: GridTensor) -> None:
    xt.local.copy_(res.x.local)
    ksp.setIterationNumber(res.iterations)
    ksp.setResidualNorm(res.residual_norm)
    ksp.setConvergedReason(int(res.reason))


def _reference(ksp: Any) -> str:
    PETSc = import_petsc()
    opts = PETSc.Options(ksp.getOptionsPrefix())
    if opts.getBool("ksp_converged_use_initial_residual_norm", False):
        return "initial"
    return "min" if opts.getBool("ksp_converged_use_min_initial_residual_norm", False) else "rhs"


class CG:
    """PETSc ``KSPPYTHON`` context running deepkrylov's :func:`~deepkrylov.solvers.cg`.

    Use ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.CG``. Tolerances, the initial-guess flag,
    the norm type (``-ksp_norm_type``), ``-ksp_converged_use_initial_residual_norm`` and the KSP's PC (through
    :class:`PetscPC`) are taken from PETSc; monitors (``-ksp_monitor``) and the convergence history see every
    iteration. The grid comes from :func:`plugin_grid` (the KSP's DMDA, the vector's, or
    ``-<prefix>deepkrylov_grid``).
    """

    method = "cg"
    grid_ndim: Optional[int] = None  # the number of axes the method needs (None: any grid, the 1D layout too)

    def create(self, ksp: Any) -> None:
        self.grid: Optional[ProcessGrid] = None
        self.last: Optional[SolveResult] = None

    def setFromOptions(self, ksp: Any) -> None:
        pass

    def setUp(self, ksp: Any) -> None:
        self.grid = None

    def reset(self, ksp: Any) -> None:
        self.grid = None

    def view(self, ksp: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  deepkrylov {self.method} (deepkrylov.solvers.petsc.{type(self).__name__})\n")

    def _grid(self, ksp: Any, b: Any) -> ProcessGrid:
        if self.grid is None:
            self.grid = plugin_grid(ksp, b, ndim=self.grid_ndim, what=f"deepkrylov.solvers.petsc.{type(self).__name__}")
        return self.grid

    @_reports_errors
    def solve(self, ksp: Any, b: Any, x: Any) -> None:
        PETSc = import_petsc()
        from .krylov import cg, fcg

        A, _ = ksp.getOperators()
        grid = self._grid(ksp, b)
        op = PetscMatOperator(A, grid)
        bt, xt = from_petsc_vec(b, grid), from_petsc_vec(x, grid)
        pc = ksp.getPC()
        M = None if pc.getType() == PETSc.PC.Type.NONE else PetscPC.from_petsc(pc, grid)
        rtol, atol, dtol, max_it = ksp.getTolerances()
        kw = dict(rtol=rtol, atol=atol, dtol=dtol, max_it=int(max_it), reference=_reference(ksp),
                  callback=_ksp_monitor(ksp))
        x0 = xt.clone() if ksp.getInitialGuessNonzero() else None
        try:
            if self.method == "fcg":
                res = fcg(op, bt, x0, M=M, **kw)
            else:
                res = cg(op, bt, x0, M=M, norm_type=_norm_name(ksp), **kw)
        finally:
            if M is not None:
                M.close()
            op.close()
        _finish(ksp, res, xt)
        self.last = res


class FCG(CG):
    """Like :class:`CG` but flexible CG (for a preconditioner that changes between applications)."""

    method = "fcg"


def _make_preconditioner(kind: str, op: Any) -> Any:
    from .preconditioners import Identity, Jacobi as _Jacobi

    if kind == "jacobi":
        return _Jacobi(op)
    if kind in ("identity", "none"):
        return Identity()
    if ":" in kind:
        import importlib

        mod, _, attr = kind.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
        return factory(op)
    raise ValueError(f"-deepkrylov_pc_type must be jacobi, identity or module:factory, but got {kind!r}")


class PC:
    """PETSc ``PCPYTHON`` context wrapping a deepkrylov preconditioner.

    Use ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.PC [-deepkrylov_pc_type jacobi]``; the option
    is read under the PC's prefix. ``module:factory`` calls ``factory(operator)`` with the preconditioning matrix
    as a :class:`PetscMatOperator` and uses the returned preconditioner or callable on GridTensors. The grid comes
    from :func:`plugin_grid` (the PC's DMDA, which ``KSPSetDM`` sets, or ``-<prefix>deepkrylov_grid nx,ny,nz``).
    """

    default = "jacobi"

    def create(self, pc: Any) -> None:
        self.kind = self.default
        self.inner: Any = None
        self.grid: Optional[ProcessGrid] = None

    def setFromOptions(self, pc: Any) -> None:
        PETSc = import_petsc()
        self.kind = PETSc.Options(pc.getOptionsPrefix()).getString("deepkrylov_pc_type", self.kind)

    def _grid(self, pc: Any, ndim: Optional[int] = None) -> ProcessGrid:
        _, P = pc.getOperators()
        x, _ = P.createVecs()
        try:
            return plugin_grid(pc, x, ndim=ndim, what=f"deepkrylov.solvers.petsc.{type(self).__name__}")
        finally:
            x.destroy()

    @_reports_errors
    def setUp(self, pc: Any) -> None:
        _, P = pc.getOperators()
        self.grid = self._grid(pc)
        self.inner = _make_preconditioner(self.kind, PetscMatOperator(P, self.grid))

    def reset(self, pc: Any) -> None:
        self.inner = None

    def view(self, pc: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  deepkrylov preconditioner: {self.kind} ({self.inner!r})\n")

    @_reports_errors
    def apply(self, pc: Any, x: Any, y: Any) -> None:
        xt = from_petsc_vec(x, self.grid)
        yt = from_petsc_vec(y, self.grid)
        fn = self.inner.apply if hasattr(self.inner, "apply") else self.inner
        yt.local.copy_(_as_local(fn(xt), self.grid).reshape(yt.local.shape))

    applySymmetricLeft = apply
    applySymmetricRight = apply

    def applyTranspose(self, pc: Any, x: Any, y: Any) -> None:
        self.apply(pc, x, y)


class Jacobi(PC):
    """:class:`PC` with deepkrylov's Jacobi (``-pc_python_type deepkrylov.solvers.petsc.Jacobi``)."""

    default = "jacobi"


# ---- DCDM as a PETSc plugin ------------------------------------------------------------------------------------
_MODELS: dict = {}


def _dcdm_model(path: str) -> Any:
    """Load (once per path) a DCDM network; ``""`` is the shipped model."""
    if path not in _MODELS:
        from .dcdm.model import load_model

        _MODELS[path] = load_model(path or None)
    return _MODELS[path]


class DCDM(CG):
    """PETSc ``KSPPYTHON`` context running deepkrylov's DCDM (the network predicts the search directions).

    ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.DCDM [-ksp_dcdm_model FILE]
    [-ksp_dcdm_memory 2] [-deepkrylov_grid nx,ny,nz]`` (options under the KSP's prefix). Tolerances,
    initial-guess flag and monitors come from PETSc; the residual norms are true (unpreconditioned) residuals; the
    KSP's PC is not used. The network is applied by :class:`~deepkrylov.solvers.dcdm.NetworkPreconditioner`.
    """

    method = "dcdm"

    def create(self, ksp: Any) -> None:
        super().create(ksp)
        self.model_path, self.memory = "", 2

    def setFromOptions(self, ksp: Any) -> None:
        PETSc = import_petsc()
        opts = PETSc.Options(ksp.getOptionsPrefix())
        self.model_path = opts.getString("ksp_dcdm_model", self.model_path)
        self.memory = opts.getInt("ksp_dcdm_memory", self.memory)

    def view(self, ksp: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  deepkrylov DCDM, model {self.model_path or 'shipped'}, memory {self.memory}\n")

    @_reports_errors
    def solve(self, ksp: Any, b: Any, x: Any) -> None:
        from .dcdm import NetworkPreconditioner, dcdm

        M = NetworkPreconditioner(_dcdm_model(self.model_path))
        self.grid_ndim = M.dim
        A, _ = ksp.getOperators()
        grid = self._grid(ksp, b)
        op = PetscMatOperator(A, grid)
        bt, xt = from_petsc_vec(b, grid), from_petsc_vec(x, grid)
        rtol, atol, dtol, max_it = ksp.getTolerances()
        x0 = xt.clone() if ksp.getInitialGuessNonzero() else None
        try:
            res = dcdm(op, bt, M, x0, rtol=rtol, atol=atol, dtol=dtol, max_it=int(max_it), memory=self.memory,
                       reference=_reference(ksp), callback=_ksp_monitor(ksp))
        finally:
            op.close()
        _finish(ksp, res, xt)
        self.last = res


class DCDMPC(PC):
    """PETSc ``PCPYTHON`` context applying the DCDM network, ``z = ||r|| f(r / ||r||)``
    (:class:`~deepkrylov.solvers.dcdm.NetworkPreconditioner`): a nonlinear preconditioner for flexible CG.

    ``-ksp_type fcg -ksp_fcg_mmax 2 -pc_type python -pc_python_type deepkrylov.solvers.petsc.DCDMPC
    [-pc_dcdm_model FILE] [-deepkrylov_grid nx,ny,nz]`` (options under the PC's prefix). The network needs a grid
    of its dimension: the KSP's DMDA (``KSPSetDM`` with ``KSPSetDMActive(ksp, PETSC_FALSE)``) or the option.
    """

    def create(self, pc: Any) -> None:
        super().create(pc)
        self.model_path = ""

    def setFromOptions(self, pc: Any) -> None:
        PETSc = import_petsc()
        self.model_path = PETSc.Options(pc.getOptionsPrefix()).getString("pc_dcdm_model", self.model_path)

    @_reports_errors
    def setUp(self, pc: Any) -> None:
        from .dcdm import NetworkPreconditioner

        M = NetworkPreconditioner(_dcdm_model(self.model_path))
        self.grid = self._grid(pc, ndim=M.dim)
        self.inner = M

    def view(self, pc: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  deepkrylov DCDM network preconditioner, model {self.model_path or 'shipped'}\n")


# ---- running the plugins from a C program ---------------------------------------------------------------------
def embedding_environment() -> dict:
    """What a PETSc C program needs to run deepkrylov's plugins in the Python it embeds.

    PETSc starts Python itself when given ``-python [executable]``: it runs that executable to find its
    ``libpython`` and loads it. The embedded interpreter does not know it belongs to this virtual environment
    (no ``sys.executable``), so this environment's ``site-packages`` and deepkrylov's source root go on
    ``PYTHONPATH``. Returns ``{"PYTHONPATH": ..., "python": <this interpreter>}``; see
    ``examples/petsc_plugin/README.md``.
    """
    import os
    import sys
    import sysconfig

    import deepkrylov

    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
             os.path.dirname(os.path.dirname(os.path.abspath(deepkrylov.__file__)))]
    seen: list[str] = []
    for p in paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]:
        if p not in seen:
            seen.append(p)
    return {"PYTHONPATH": os.pathsep.join(seen), "python": sys.executable}


if __name__ == "__main__":  # python -m deepkrylov.solvers.petsc  -> shell lines for running a PETSc C program
    env = embedding_environment()
    print(f"export PYTHONPATH={env['PYTHONPATH']}")
    print(f"# then add to the PETSc program's options:  -python {env['python']}")
