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
  default; ``-deepkrylov_pc_type jacobi|identity|module:factory`` under the PC's options prefix);
  ``-pc_python_type deepkrylov.solvers.petsc.MG`` / ``LearnedMG`` run the (learned) geometric multigrid on the
  operator that :func:`diffusion_operator_from_mat` reads back from the PC's matrix. Every plugin finds its grid
  with :func:`plugin_grid`: the KSP's/PC's DMDA, the vector's, or ``-<prefix>deepkrylov_grid nx,ny,nz`` (x first).
"""

from __future__ import annotations

import atexit
import itertools
import math
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
    "CG", "FCG", "PC", "Jacobi", "DCDM", "DCDMPC", "MatDiffusion", "FACE_KINDS", "diffusion_operator_from_mat", "MG",
    "LearnedMG", "embedding_environment",
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


# ---- multigrid as PETSc plugins: the operator read back from the PC's matrix ----------------------------------
FACE_KINDS = ("dirichlet", "vertex", "neumann")
"""How a face of the DMDA closes the rows next to it (:class:`MatDiffusion`): ``dirichlet`` adds ``2 t`` to the
diagonal (cell-centred, zero on the face), ``vertex`` adds ``t`` (the boundary lies one cell outside the grid: a
vertex-centred Dirichlet boundary eliminated from the matrix), ``neumann`` adds nothing."""
_FACE_ADDS = {2: "dirichlet", 1: "vertex", 0: "neumann"}
_GAMG_HINT = "deepkrylov's multigrid needs such an operator; for other matrices use -pc_type gamg (or hypre)"


class MatDiffusion:
    """A PETSc matrix on a DMDA read back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`
    (:func:`diffusion_operator_from_mat`).

    Attributes:
        operator: the DiffusionOperator on the matrix's unknowns (its fluid block). Its grid holds the DMDA's
            cells at ``offset`` and may be larger: one EMPTY layer outside a ``vertex`` face, and EMPTY cells
            appended at the high end of an axis (``multiple``); EMPTY cells are identity rows that no unknown
            couples to, so they change nothing for the unknowns.
        offset: index (tensor order ``z, y, x``) of the DMDA's first cell in ``operator``'s grid.
        boundary: bool tensor of the DMDA's shape: the diagonal-only rows (EMPTY cells).
        diagonal: the matrix's diagonal, a float64 tensor of the DMDA's shape.
        coupled: whether some unknown's row couples to a boundary column (as in PETSc's ex45): then the matrix is
            block lower-triangular and a preconditioner solves the boundary block first.
        weights: the link weight ``t_a`` per axis (tensor order).
        faces: per axis ``(low, high)``, one of :data:`FACE_KINDS`, or None where no unknown touches the face.
    """

    def __init__(self, operator: Any, offset: tuple, boundary: torch.Tensor, diagonal: torch.Tensor, coupled: bool,
                 weights: tuple, faces: tuple) -> None:
        self.operator, self.offset, self.boundary, self.diagonal = operator, offset, boundary, diagonal
        self.coupled, self.weights, self.faces = coupled, weights, faces

    @property
    def region(self) -> tuple[slice, ...]:
        """The DMDA's cells inside ``operator``'s grid (tensor order)."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.boundary.shape))

    def __repr__(self) -> str:
        return (f"MatDiffusion(dmda {tuple(reversed(self.boundary.shape))} -> grid "
                f"{tuple(reversed(self.operator.grid.shape))} (x first), weights {self.weights}, faces {self.faces}, "
                f"{int(self.boundary.sum())} boundary rows, coupled={self.coupled})")


def _xyz(index: Any, shape: tuple) -> str:
    """A cell's natural index as ``(x, y, z)`` (PETSc's order) for error messages."""
    coords = np.unravel_index(int(index), shape)
    return "(" + ", ".join(str(int(c)) for c in reversed(coords)) + ")"


_AXIS = ("x", "y", "z")


def _axis_name(a: int, nd: int) -> str:
    return _AXIS[nd - 1 - a]


def _gather_natural_coo(mat: Any, grid: ProcessGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole matrix's nonzero entries ``(rows, cols, values)``, on every rank, in natural (x-fastest)
    ordering of ``grid``."""
    import scipy.sparse as sp

    mtype = mat.getType()
    if "aij" not in mtype or "baij" in mtype:
        raise ValueError(f"the PC's matrix has type {mtype!r}, but reading it as a stencil needs an assembled AIJ "
                         f"matrix (seqaij, mpiaij); {_GAMG_HINT}")
    nloc, n = _sizes(grid)
    bad = tuple(mat.getSize()) != (n, n) or mat.getLocalSize()[0] != nloc
    if mat.getComm().tompi4py().allreduce(int(bad)):  # the same decision on every rank, not a hang in allgather
        raise ValueError(f"the PC's matrix has size {tuple(mat.getSize())} ({mat.getLocalSize()[0]} rows on this "
                         f"rank), but its grid {','.join(map(str, reversed(grid.global_shape)))} (x first) has {n} "
                         f"cells ({nloc} on this rank)")
    ai, aj, av = mat.getValuesCSR()
    rstart = mat.getOwnershipRange()[0]
    local = sp.csr_matrix((av, aj, ai), shape=(len(ai) - 1, n)).tocoo()
    rows, cols, vals = local.row.astype(np.int64) + rstart, local.col.astype(np.int64), local.data
    if grid.size > 1:  # PETSc's ordering (each rank's block contiguous) -> natural
        to_petsc = natural_to_petsc(grid)
        to_natural = np.empty_like(to_petsc)
        to_natural[to_petsc] = np.arange(n, dtype=np.int64)
        rows, cols = to_natural[rows], to_natural[cols]
        parts = mat.getComm().tompi4py().allgather((rows, cols, vals))
        rows, cols, vals = (np.concatenate([p[i] for p in parts]) for i in range(3))
    keep = vals != 0
    return rows[keep], cols[keep], np.asarray(vals[keep], dtype=np.float64)


class _Stencil:
    """The DMDA-shaped facts of :func:`diffusion_operator_from_mat` before the operator is built."""

    def __init__(self, shape: tuple, boundary: np.ndarray, diag: np.ndarray, coupled: bool, t: list,
                 faces: list) -> None:
        self.shape, self.boundary, self.diag, self.coupled, self.t, self.faces = shape, boundary, diag, coupled, t, faces


def _read_stencil(mat: Any, grid: ProcessGrid, rtol: float) -> _Stencil:
    """Check that ``mat`` is a constant-coefficient 2d+1-point operator on ``grid`` (with diagonal-only boundary
    rows) and return its weights, boundary rows and face kinds; a clear error otherwise."""
    r, c, v = _gather_natural_coo(mat, grid)
    shape = tuple(grid.global_shape)
    nd, n = len(shape), int(np.prod(shape))
    what = f"the PC's matrix on the grid {'x'.join(map(str, reversed(shape)))} (x first)"
    on_diag = r == c
    diag = np.bincount(r[on_diag], weights=v[on_diag], minlength=n)
    r, c, v = r[~on_diag], c[~on_diag], v[~on_diag]
    # which axis each off-diagonal entry links along (-1: not a neighbour), by index arithmetic
    axis = np.full(r.shape, -1, dtype=np.int8)
    delta = c - r
    for a in range(nd):
        stride = int(np.prod(shape[a + 1:]))
        if shape[a] == 1:
            continue
        for sign in (1, -1):
            sel = np.flatnonzero(delta == sign * stride)
            pos = (r[sel] // stride) % shape[a]
            axis[sel[pos < shape[a] - 1 if sign > 0 else pos > 0]] = a
    neighbour = axis >= 0
    if not bool(neighbour.all()):
        k = int(np.flatnonzero(~neighbour)[0])
        raise ValueError(
            f"{what} is not a {2 * nd + 1}-point stencil: row {_xyz(r[k], shape)} couples to {_xyz(c[k], shape)}, "
            f"which is not one of its {2 * nd} neighbours (a periodic DMDA or another discretisation); {_GAMG_HINT}")
    has_off = np.zeros(n, dtype=bool)
    has_off[r] = True
    boundary = ~has_off
    if not bool(has_off.any()):
        raise ValueError(f"{what} is diagonal (no unknown couples to another): nothing for a multigrid to do; "
                         "use -pc_type jacobi")
    bad = boundary & (diag == 0)
    if bool(bad.any()):
        raise ValueError(f"{what} has an empty row at {_xyz(np.flatnonzero(bad)[0], shape)}: the matrix is singular")
    bad = has_off & ~(diag > 0)
    if bool(bad.any()):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} has the diagonal {diag[k]:.6g} at {_xyz(k, shape)}, but a diffusion operator has a "
                         f"positive one; {_GAMG_HINT}")
    to_fluid = has_off[c]
    coupled = bool((~to_fluid).any())
    t = []
    for a in range(nd):
        name = _axis_name(a, nd)
        sel = (axis == a) & to_fluid
        vals = v[sel]
        if vals.size == 0:
            vals = v[(axis == a) & ~to_fluid]  # e.g. one layer of unknowns: the weight from its boundary links
        if vals.size == 0:
            raise ValueError(f"{what} has no link along {name}: the weight t_{name} cannot be read; {_GAMG_HINT}")
        ta = -float(vals[0])
        dev = np.abs(vals + ta)
        if not ta > 0 or float(dev.max()) > rtol * abs(ta):
            k = int(np.flatnonzero(sel)[int(dev.argmax())]) if sel.any() else 0
            raise ValueError(
                f"{what} does not have one negative link weight along {name}: found {-ta:.17g} and "
                f"{v[k]:.17g} (row {_xyz(r[k], shape)}, column {_xyz(c[k], shape)}); variable coefficients are not "
                f"read back; {_GAMG_HINT}")
        # every pair of adjacent unknowns must be linked (both ways)
        fl = has_off.reshape(shape)
        pairs = 2 * int((fl.take(range(1, shape[a]), axis=a) & fl.take(range(shape[a] - 1), axis=a)).sum())
        if int(sel.sum()) != pairs:
            raise ValueError(f"{what}: {pairs} links between adjacent unknowns along {name} expected, "
                             f"{int(sel.sum())} found (a missing coupling is a zero coefficient); {_GAMG_HINT}")
        t.append(ta)
    # the diagonal: t_a per neighbour inside the grid (unknown or boundary row), plus what each face adds
    idx = np.indices(shape).reshape(nd, -1)
    base = np.zeros(n)
    touches = []  # per face (a, side): cells in that layer
    for a in range(nd):
        lo, hi = idx[a] == 0, idx[a] == shape[a] - 1
        base += t[a] * (2 - lo.astype(int) - hi.astype(int))
        touches += [lo, hi]
    deficit = diag - base
    nfaces = np.sum(touches, axis=0)
    faces: list = [[None, None] for _ in range(nd)]
    adds: dict = {}  # face -> 0, 1 or 2 (units of t)
    for sweep in range(2):  # faces with single-face unknowns first, then those with only edge/corner unknowns
        for f, layer in enumerate(touches):
            a, side = divmod(f, 2)
            if f in adds or not (layer & has_off).any():
                continue
            sel = layer & has_off & (nfaces == 1)
            if sel.any():
                vals = deficit[sel] / t[a]
            elif sweep == 1:
                k = int(np.flatnonzero(layer & has_off)[0])
                others = [g for g in range(2 * nd) if g != f and touches[g][k]]
                if any(g not in adds for g in others):
                    continue  # undetermined: the row-by-row check of the operator decides
                sel = np.zeros(n, dtype=bool)
                sel[k] = True
                vals = np.array([(deficit[k] - sum(adds[g] * t[g // 2] for g in others)) / t[a]])
            else:
                continue
            m = int(round(float(vals[0])))
            if m not in _FACE_ADDS or float(np.abs(vals - m).max()) > 1e-8:
                j = int(np.argmax(np.abs(vals - m)))
                k = int(np.flatnonzero(sel)[j])
                name = _axis_name(a, nd)
                raise ValueError(
                    f"{what}: the diagonal {diag[k]:.17g} at {_xyz(k, shape)} (on the {('low', 'high')[side]} {name} "
                    f"face) is {float(vals[j]):.6g} t_{name} above the sum of its links, but a diffusion operator "
                    f"adds 0 (Neumann face), 1 (boundary one cell outside) or 2 (cell-centred Dirichlet face) "
                    f"t_{name} there, the same on the whole face; {_GAMG_HINT}")
            adds[f] = m
            faces[a][side] = _FACE_ADDS[m]
    return _Stencil(shape, boundary.reshape(shape), diag.reshape(shape), coupled, t, faces)


def _embed(st: _Stencil, multiple: int, rtol: float) -> MatDiffusion:
    """Build the DiffusionOperator of :func:`diffusion_operator_from_mat` from the facts read, and check its
    diagonal row by row against the matrix's."""
    from deepkrylov.mesh import EMPTY, FLUID, BoundaryConditions, DiffusionOperator, StructuredGrid

    shape, nd = st.shape, len(st.shape)
    lo = [1 if st.faces[a][0] == "vertex" else 0 for a in range(nd)]
    hi = [1 if st.faces[a][1] == "vertex" else 0 for a in range(nd)]
    size = [lo[a] + shape[a] + hi[a] for a in range(nd)]
    for a in range(nd):  # pad with EMPTY cells where no unknown touches the high face
        free = hi[a] == 1 or st.faces[a][1] is None
        if free and multiple > 1:
            size[a] = -(-size[a] // multiple) * multiple
    bc = BoundaryConditions([tuple("neumann" if st.faces[a][s] == "neumann" else "dirichlet" for s in (0, 1))
                             for a in range(nd)])
    mask = torch.full(tuple(size), EMPTY, dtype=torch.uint8)
    region = tuple(slice(lo[a], lo[a] + shape[a]) for a in range(nd))
    inner = torch.full(shape, FLUID, dtype=torch.uint8)
    inner[torch.from_numpy(st.boundary)] = EMPTY
    mask[region] = inner
    t = st.t
    if max(t) - min(t) <= 1e-14 * max(t):
        op = DiffusionOperator(StructuredGrid(size), bc, t[0], mask, scaled=False)
    else:  # k = 1 and spacings h_a = 1 / sqrt(t_a): k / h_a^2 = t_a
        extent = [size[a] / math.sqrt(t[a]) for a in range(nd)]
        op = DiffusionOperator(StructuredGrid(size, extent), bc, 1.0, mask, scaled=True)
    ours = op.diagonal().to(torch.float64)[region].numpy()
    fluid = ~st.boundary
    err = np.abs(ours - st.diag) > rtol * np.abs(st.diag)
    err &= fluid
    if bool(err.any()):
        k = int(np.flatnonzero(err.reshape(-1))[0])
        raise ValueError(
            f"the PC's matrix has the diagonal {st.diag.reshape(-1)[k]:.17g} at {_xyz(k, shape)}, but the diffusion "
            f"operator with its weights, boundary rows and faces {tuple(map(tuple, st.faces))} (z, y, x) gives {ours.reshape(-1)[k]:.17g}; "
            f"{_GAMG_HINT}")
    return MatDiffusion(op, tuple(lo), torch.from_numpy(st.boundary.copy()), torch.from_numpy(st.diag.copy()),
                        st.coupled, tuple(t), tuple(tuple(f) for f in st.faces))


def diffusion_operator_from_mat(mat: Any, grid: ProcessGrid, *, multiple: int = 1, rtol: float = 1e-10,
                                ) -> MatDiffusion:
    """Read a PETSc AIJ matrix on a DMDA back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`.

    The rows are taken in DMDA natural order (the whole matrix is gathered on every rank). Rows with only a
    diagonal are boundary rows (EMPTY cells); the others must form a 7-point (5, 3 in 2D, 1D) stencil with one
    link weight per axis ``t_a`` (checked to ``rtol``) whose diagonals are what a diffusion operator gives: ``t_a``
    per neighbour, boundary rows included, plus 0, 1 or 2 ``t_a`` at a Neumann, vertex-centred (boundary eliminated)
    or cell-centred Dirichlet face (:data:`FACE_KINDS`), checked row by row. Equal weights give ``scaled=False``
    with coefficient ``t``; unequal ones ``scaled=True`` with spacings ``h_a = 1 / sqrt(t_a)``. Links from unknowns
    to boundary rows (PETSc's ex45) are allowed: :attr:`MatDiffusion.coupled`.

    Args:
        mat: the matrix (``seqaij``/``mpiaij``), rows in PETSc's DMDA ordering.
        grid: its DMDA's grid (:func:`plugin_grid`, :func:`grid_from_dmda`).
        multiple: append EMPTY cells at the high end of every axis whose high face no unknown touches, up to a
            multiple of this (so that a multigrid can halve the axis; e.g. 33 -> 36 for ``multiple=4``).
        rtol: relative tolerance of the checks.

    Raises ValueError naming what was found (type, non-neighbour coupling, varying weights, a diagonal that does
    not fit) and suggesting ``-pc_type gamg``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, but got {multiple}")
    return _embed(_read_stencil(mat, grid, rtol), multiple, rtol)


def _multiple_for(st: _Stencil, levels: Optional[int], coarsest: int, max_coarse: int = 4096) -> int:
    """How far :func:`_embed` pads: to ``2^(levels-1)``, or by default the fewest halvings that leave a coarsest
    grid of at most ``max_coarse`` cells (a sparse LU there is cheap)."""
    if levels is not None:
        return 2 ** (levels - 1)
    nd = len(st.shape)
    base = [st.shape[a] + (st.faces[a][0] == "vertex") + (st.faces[a][1] == "vertex") for a in range(nd)]
    free = [st.faces[a][1] in ("vertex", None) for a in range(nd)]
    m = 1
    while True:
        size = [-(-n // m) * m if f else n for n, f in zip(base, free)]
        if any(n % m for n in size):
            return max(m // 2, 1)
        if int(np.prod([n // m for n in size])) <= max_coarse:
            return m
        if any(n // (2 * m) < max(coarsest, 2) for n in size):
            return m
        m *= 2


class MG:
    """PETSc ``PCPYTHON`` context: deepkrylov's geometric multigrid V-cycle
    (:class:`~deepkrylov.solvers.multigrid.Multigrid`) on the operator read back from the PC's matrix.

    ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.MG [-deepkrylov_mg_levels L]
    [-deepkrylov_mg_smoother chebyshev|jacobi] [-deepkrylov_mg_degree 2] [-deepkrylov_mg_omega 0.8]
    [-deepkrylov_mg_dtype float64|float32]`` (under the PC's prefix). Set-up reads the matrix on its DMDA
    (:func:`plugin_grid`) with :func:`diffusion_operator_from_mat`, padded so that the grid halves, and builds the
    hierarchy; a matrix that is not such an operator is a clear error suggesting ``-pc_type gamg``. When unknowns
    couple to diagonal-only boundary rows (PETSc's ex45) the matrix is block lower-triangular and each application
    is exact in the boundary block: ``z_b = r_b / d_b``, then ``z_f = M (r_f - A_fb z_b)``; without such coupling
    it is plain ``M`` (symmetric, for CG). The V-cycle runs on the DMDA's ranks (the fine level distributed, the
    coarse ones gathered where blocks stop halving), so 1 and 2 ranks give the same iterations.
    """

    kind = "multigrid"

    def create(self, pc: Any) -> None:
        self.levels: Optional[int] = None
        self.smoother, self.degree, self.omega, self.dtype = "chebyshev", 2, 0.8, "float64"
        self.inner: Any = None
        self.found: Optional[MatDiffusion] = None
        self.grid: Optional[ProcessGrid] = None
        self.setup_time: Optional[float] = None

    def setFromOptions(self, pc: Any) -> None:
        PETSc = import_petsc()
        opts = PETSc.Options(pc.getOptionsPrefix())
        levels = opts.getInt("deepkrylov_mg_levels", 0)
        self.levels = levels if levels else self.levels
        self.smoother = opts.getString("deepkrylov_mg_smoother", self.smoother)
        self.degree = opts.getInt("deepkrylov_mg_degree", self.degree)
        self.omega = opts.getReal("deepkrylov_mg_omega", self.omega)
        self.dtype = opts.getString("deepkrylov_mg_dtype", self.dtype)

    def _check_options(self, prefix: str) -> torch.dtype:
        """Each option's value checked (the error names the option); returns the cycle's dtype."""
        from .multigrid import SMOOTHERS

        o = f"-{prefix}deepkrylov_mg_"
        if self.levels is not None and self.levels < 1:
            raise ValueError(f"{o}levels must be at least 1, but got {self.levels}")
        if self.smoother not in SMOOTHERS:
            raise ValueError(f"{o}smoother must be one of {SMOOTHERS}, but got {self.smoother!r}")
        if self.degree < 1:
            raise ValueError(f"{o}degree must be at least 1, but got {self.degree}")
        if not 0 < self.omega < 2:
            raise ValueError(f"{o}omega must lie in (0, 2), but got {self.omega}")
        dtypes = {"float64": torch.float64, "float32": torch.float32}
        if self.dtype not in dtypes:
            raise ValueError(f"{o}dtype must be one of {tuple(dtypes)}, but got {self.dtype!r}")
        return dtypes[self.dtype]

    def _ndim(self) -> Optional[int]:
        return None

    def _make(self, grid: ProcessGrid, dtype: torch.dtype) -> Any:
        from .multigrid import Multigrid

        return Multigrid(levels=self.levels, smoother=self.smoother, degree=self.degree, omega=self.omega, dtype=dtype)

    @_reports_errors
    def setUp(self, pc: Any) -> None:
        t0 = time.perf_counter()
        dtype = self._check_options(pc.getOptionsPrefix() or "")
        _, P = pc.getOperators()
        x, _ = P.createVecs()
        try:
            grid = plugin_grid(pc, x, ndim=self._ndim(), what=f"deepkrylov.solvers.petsc.{type(self).__name__}")
        finally:
            x.destroy()
        M = self._make(grid, dtype)
        # The operator is built whole from the matrix rows gathered on every rank (simple, and cheap next to
        # PETSc's own set-up at these sizes); the V-cycle itself runs distributed.
        try:
            st = _read_stencil(P, grid, 1e-10)
        except ValueError as err:
            if grid.ndim > 1:
                raise
            raise ValueError(f"{err} (the grid is 1D, from no DMDA: for a matrix on a 2D or 3D grid set its DMDA on "
                             f"the KSP with KSPSetDM or give -{pc.getOptionsPrefix() or ''}{GRID_OPTION} nx,ny,nz)"
                             ) from err
        found = _embed(st, _multiple_for(st, self.levels, M.coarsest), 1e-10)
        op = found.operator
        egrid = None
        if grid.size > 1:  # the DMDA's blocks, the first along an axis grown by the low layer, the last by the rest
            splits = []
            for a, s in enumerate(grid.splits):
                s = list(s)
                s[0] += found.offset[a]
                s[-1] += op.grid.shape[a] - grid.global_shape[a] - found.offset[a]
                splits.append(s)
            egrid = ProcessGrid(grid.comm, op.grid.shape, dims=grid.dims, splits=splits)
        if op.grid.size > 4096 and any(n % 2 or n // 2 < max(M.coarsest, 2) for n in op.grid.shape):
            raise ValueError(
                f"the grid {'x'.join(map(str, reversed(op.grid.shape)))} (x first) cannot be halved (an odd size with "
                "unknowns on its high face): one level would be a direct solve; use an even DMDA size or "
                "-pc_type gamg")
        M.setup(op, egrid)
        self.grid, self.found, self.inner, self.egrid = grid, found, M, egrid
        # local pieces: where this rank's block sits in the padded block, its boundary rows and 1 / diagonal there
        sl = grid.local_slices
        self._fluid = (~found.boundary[sl]).to(torch.float64).reshape(-1)
        self._inv_db = torch.where(found.boundary[sl], 1.0 / found.diagonal[sl], torch.zeros(())).reshape(-1)
        local_e = egrid.local_shape if egrid is not None else op.grid.shape
        starts = [found.offset[a] if (egrid is None or egrid.coords[a] == 0) else 0 for a in range(grid.ndim)]
        self._inner_sl = (0, 0) + tuple(slice(s, s + n) for s, n in zip(starts, grid.local_shape))
        self._big = torch.zeros((1, 1) + tuple(local_e), dtype=torch.float64)
        self._zbig = torch.zeros_like(self._big)
        self._w = torch.zeros(self._fluid.numel(), dtype=torch.float64)
        self._free_work()
        self._wv, self._tv = P.createVecs() if found.coupled else (None, None)
        for v in (self._wv, self._tv):
            if v is not None:
                _track_petsc_object(v)  # destroyed before PETSc is finalized
        self._P = P
        self.setup_time = time.perf_counter() - t0

    def _free_work(self) -> None:
        for v in (getattr(self, "_wv", None), getattr(self, "_tv", None)):
            if v is not None:
                v.destroy()
        self._wv = self._tv = None

    def reset(self, pc: Any) -> None:
        self._free_work()
        self.inner = None

    def view(self, pc: Any, viewer: Any) -> None:
        M, f = self.inner, self.found
        if M is None or f is None:
            viewer.printfASCII(f"  deepkrylov {self.kind} (not set up)\n")
            return
        viewer.printfASCII(f"  deepkrylov {self.kind}: {M!r} (z, y, x), set-up {self.setup_time:.3g}s\n")
        viewer.printfASCII(f"  operator read from the matrix: weights (z,y,x) {f.weights}, faces {f.faces}, "
                           f"{int(f.boundary.sum())} boundary rows, coupled to them: {f.coupled}\n")

    @_reports_errors
    def apply(self, pc: Any, x: Any, y: Any) -> None:
        r = from_petsc_vec(x, self.grid).local.reshape(-1)
        z = from_petsc_vec(y, self.grid).local.reshape(-1)
        w = torch.mul(r, self._inv_db, out=self._w)  # the boundary block, exactly; zero on the unknowns
        big = self._big[self._inner_sl]
        if self.found.coupled:  # r_f - A_fb z_b
            self._wv.placeArray(w.numpy())
            try:
                self._P.mult(self._wv, self._tv)
            finally:
                self._wv.resetArray()
            t = torch.from_numpy(self._tv.getArray())
            big.copy_(((r - t) * self._fluid).reshape(big.shape))
        else:
            big.copy_((r * self._fluid).reshape(big.shape))
        if self.egrid is not None:
            self.inner.apply_into(GridTensor(self._big, self.egrid), GridTensor(self._zbig, self.egrid))
        else:
            self.inner.apply_into(self._big, self._zbig)
        z.copy_(self._zbig[self._inner_sl].reshape(-1)).mul_(self._fluid).add_(w)


_STENCIL_NETS: dict = {}


def _stencil_net(path: str, dim: int) -> Any:
    """Load (once per path) learned multigrid weights; ``""`` is the shipped file, ``classical`` the untrained
    network (the classical Chebyshev cycle)."""
    from .learned_multigrid import StencilNet, load_stencil_net

    if path == "classical":
        return StencilNet(dim=dim)
    if path not in _STENCIL_NETS:
        _STENCIL_NETS[path] = load_stencil_net(path or None)
    return _STENCIL_NETS[path]


class LearnedMG(MG):
    """PETSc ``PCPYTHON`` context: deepkrylov's learned multigrid
    (:class:`~deepkrylov.solvers.learned_multigrid.LearnedMultigrid`), otherwise as :class:`MG`.

    ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.LearnedMG [-deepkrylov_learned_model FILE]
    [-deepkrylov_mg_levels L] [-deepkrylov_mg_dtype float64|float32]``: ``FILE`` defaults to the shipped
    weights; ``classical`` takes the untrained network, which reproduces :class:`MG`'s Chebyshev cycle. The
    smoothing steps come from the weights (``-deepkrylov_mg_smoother/degree/omega`` do not apply).
    """

    kind = "learned multigrid"

    def create(self, pc: Any) -> None:
        super().create(pc)
        self.model_path = ""

    def setFromOptions(self, pc: Any) -> None:
        PETSc = import_petsc()
        super().setFromOptions(pc)
        self.model_path = PETSc.Options(pc.getOptionsPrefix()).getString("deepkrylov_learned_model", self.model_path)

    def _ndim(self) -> Optional[int]:
        return None if self.model_path == "classical" else _stencil_net(self.model_path, 3).dim

    def _make(self, grid: ProcessGrid, dtype: torch.dtype) -> Any:
        from .learned_multigrid import LearnedMultigrid

        return LearnedMultigrid(net=_stencil_net(self.model_path, grid.ndim), levels=self.levels, dtype=dtype)

    def view(self, pc: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  weights: {self.model_path or 'shipped'}\n")
        super().view(pc, viewer)


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
