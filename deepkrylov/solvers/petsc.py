"""PETSc interop (petsc4py, imported lazily): the only module of deepkrylov that touches PETSc.

* Vectors: :func:`to_petsc_vec` / :func:`from_petsc_vec` convert between a GridTensor and a DMDA global
  ``PETSc.Vec`` without copying when the layouts allow (CPU, float64, contiguous block with one sample and one
  channel): a DMDA global vector stores each rank's block x-fastest, exactly like ``GridTensor.local``.
* Operators: :func:`as_petsc_mat` exposes any deepkrylov operator as a ``MATPYTHON`` shell;
  :class:`PetscMatOperator` exposes a PETSc ``Mat`` as a deepkrylov operator; :func:`assemble_aij` assembles a
  SciPy CSR in natural (DMDA x-fastest) ordering into a parallel AIJ ``Mat`` in PETSc ordering, each rank its rows.
* Baseline: :func:`petsc_solve` runs ``KSPSolve`` (CG with Jacobi, ICC, GAMG, hypre BoomerAMG, ...) on the same
  operator and right-hand side and returns a :class:`~deepkrylov.solvers.SolveResult`.
* Plugins for PETSc programs, through the options database only:
  ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.CG`` runs deepkrylov's CG;
  ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.PC`` wraps a deepkrylov preconditioner (Jacobi by
  default; ``-deepkrylov_pc_type jacobi|identity|module:factory`` under the PC's options prefix).
"""

from __future__ import annotations

import atexit
import itertools
import weakref
import time
from typing import Any, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from .result import ConvergedReason, SolveResult

__all__ = [
    "petsc_available", "import_petsc", "petsc_comm", "create_dmda", "grid_from_dmda", "to_petsc_vec",
    "from_petsc_vec", "natural_to_petsc", "assemble_aij", "as_petsc_mat", "PetscMatOperator", "ShellContext",
    "set_constant_null_space", "set_null_space", "petsc_solve", "PC_TYPES", "CG", "FCG", "PC", "Jacobi", "DCDM", "DCDMPC",
    "embedding_environment",
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


def _grid_for_vec(vec: Any) -> ProcessGrid:
    """A grid for a PETSc vector: its DMDA's when it has one, else 1D with the vector's ownership ranges."""
    dm = vec.getDM()
    if dm and dm.getType() == "da":
        layout = grid_from_dmda(dm) if hasattr(dm, "getOwnershipRanges") else _dmda_layout(dm)
        if isinstance(layout, ProcessGrid):
            return layout
        if layout is not None:
            sizes, procs, ranges = layout
            return ProcessGrid(vec.getComm().tompi4py(), tuple(reversed(sizes)), dims=tuple(reversed(procs)),
                               splits=tuple(reversed(ranges)))
    comm = vec.getComm().tompi4py()
    ranges = vec.getOwnershipRanges()
    return ProcessGrid(comm, (int(vec.getSize()),), splits=(tuple(int(b - a) for a, b in zip(ranges[:-1], ranges[1:])),))


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


def _track_shell(mat: Any) -> None:
    global _atexit_registered
    key = id(mat)
    _live_shells[key] = weakref.ref(mat, lambda _r, key=key: _live_shells.pop(key, None))
    if not _atexit_registered:
        atexit.register(_destroy_live_shells)
        _atexit_registered = True


def as_petsc_mat(op: Any, grid: ProcessGrid) -> Any:
    """A ``MATPYTHON`` shell ``Mat`` applying ``op`` (a deepkrylov operator on GridTensors of ``grid``)."""
    PETSc = import_petsc()
    nloc, n = _sizes(grid)
    mat = PETSc.Mat().createPython(((nloc, n), (nloc, n)), context=ShellContext(op, grid), comm=petsc_comm(grid))
    mat.setUp()
    _track_shell(mat)
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
    options: Optional[dict] = None,
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
def _norm_name(ksp: Any) -> str:
    PETSc = import_petsc()
    nt = ksp.getNormType()
    if nt == PETSc.KSP.NormType.UNPRECONDITIONED:
        return "unpreconditioned"
    if nt == PETSc.KSP.NormType.NATURAL:
        return "natural"
    return "preconditioned"


class _PetscPCApply:
    """A PETSc ``PC`` as a deepkrylov preconditioner callable on GridTensors of ``grid``."""

    def __init__(self, pc: Any, grid: ProcessGrid, work: Any) -> None:
        self.pc, self.grid = pc, grid
        self._r, self._z = work, work.duplicate()

    def close(self) -> None:
        """Destroy the work vectors now (PETSc may be finalized before Python collects them)."""
        self._r.destroy()
        self._z.destroy()
        self.pc = None

    def __call__(self, r: GridTensor) -> GridTensor:
        return r.with_local(_through_petsc(self.pc.apply, self._r, self._z, r.local))


class CG:
    """PETSc ``KSPPYTHON`` context running deepkrylov's :func:`~deepkrylov.solvers.cg`.

    Use ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.CG``. Tolerances, the initial-guess flag,
    the norm type (``-ksp_norm_type``), ``-ksp_converged_use_initial_residual_norm`` and the KSP's PC are taken
    from PETSc; monitors (``-ksp_monitor``) and the convergence history see every iteration.
    """

    method = "cg"

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

    def solve(self, ksp: Any, b: Any, x: Any) -> None:
        PETSc = import_petsc()
        from .krylov import cg, fcg

        A, _ = ksp.getOperators()
        if self.grid is None:
            self.grid = _grid_for_vec(b)
        op = PetscMatOperator(A, self.grid)
        bt = from_petsc_vec(b, self.grid)
        xt = from_petsc_vec(x, self.grid)
        pc = ksp.getPC()
        M = None if pc.getType() == PETSc.PC.Type.NONE else _PetscPCApply(pc, self.grid, b.duplicate())
        rtol, atol, dtol, max_it = ksp.getTolerances()
        opts = PETSc.Options(ksp.getOptionsPrefix())
        reference = "initial" if opts.getBool("ksp_converged_use_initial_residual_norm", False) else (
            "min" if opts.getBool("ksp_converged_use_min_initial_residual_norm", False) else "rhs")

        def monitor(it: int, rnorm: float) -> None:
            ksp.setIterationNumber(it)
            ksp.setResidualNorm(rnorm)
            ksp.logConvergenceHistory(rnorm)
            ksp.monitor(it, rnorm)

        kw = dict(rtol=rtol, atol=atol, dtol=dtol, max_it=int(max_it), reference=reference, callback=monitor)
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
        xt.local.copy_(res.x.local)
        ksp.setIterationNumber(res.iterations)
        ksp.setResidualNorm(res.residual_norm)
        ksp.setConvergedReason(int(res.reason))
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
    as a :class:`PetscMatOperator` and uses the returned preconditioner or callable on GridTensors.
    """

    default = "jacobi"

    def create(self, pc: Any) -> None:
        self.kind = self.default
        self.inner: Any = None
        self.grid: Optional[ProcessGrid] = None

    def setFromOptions(self, pc: Any) -> None:
        PETSc = import_petsc()
        self.kind = PETSc.Options(pc.getOptionsPrefix()).getString("deepkrylov_pc_type", self.kind)

    def setUp(self, pc: Any) -> None:
        _, P = pc.getOperators()
        x, _ = P.createVecs()
        self.grid = _grid_for_vec(x)
        self.inner = _make_preconditioner(self.kind, PetscMatOperator(P, self.grid))

    def reset(self, pc: Any) -> None:
        self.inner = None

    def view(self, pc: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  deepkrylov preconditioner: {self.kind} ({self.inner!r})\n")

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
    [-ksp_dcdm_memory 2]`` (options under the KSP's prefix). Tolerances, initial-guess flag and monitors come from
    PETSc; the residual norms are true (unpreconditioned) residuals; the KSP's PC is not used.
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

    def solve(self, ksp: Any, b: Any, x: Any) -> None:
        PETSc = import_petsc()
        from .dcdm import dcdm

        A, _ = ksp.getOperators()
        if self.grid is None:
            dm = ksp.getDM()
            self.grid = grid_from_dmda(dm) if dm and dm.getType() == "da" else _grid_for_vec(b)
        op = PetscMatOperator(A, self.grid)
        bt, xt = from_petsc_vec(b, self.grid), from_petsc_vec(x, self.grid)
        rtol, atol, dtol, max_it = ksp.getTolerances()
        opts = PETSc.Options(ksp.getOptionsPrefix())
        reference = "initial" if opts.getBool("ksp_converged_use_initial_residual_norm", False) else "rhs"

        def monitor(it: int, rnorm: float) -> None:
            ksp.setIterationNumber(it)
            ksp.setResidualNorm(rnorm)
            ksp.logConvergenceHistory(rnorm)
            ksp.monitor(it, rnorm)

        x0 = xt.clone() if ksp.getInitialGuessNonzero() else None
        try:
            res = dcdm(op, bt, _dcdm_model(self.model_path), x0, rtol=rtol, atol=atol, dtol=dtol,
                       max_it=int(max_it), memory=self.memory, reference=reference, callback=monitor)
        finally:
            op.close()
        xt.local.copy_(res.x.local)
        ksp.setIterationNumber(res.iterations)
        ksp.setResidualNorm(res.residual_norm)
        ksp.setConvergedReason(int(res.reason))
        self.last = res


class DCDMPC(PC):
    """PETSc ``PCPYTHON`` context applying the DCDM network, ``z = f(r / ||r||)``: a nonlinear preconditioner for
    flexible CG (``-ksp_type fcg -ksp_fcg_mmax 2 -pc_type python -pc_python_type
    deepkrylov.solvers.petsc.DCDMPC [-pc_dcdm_model FILE]``)."""

    def setFromOptions(self, pc: Any) -> None:
        PETSc = import_petsc()
        self.kind = PETSc.Options(pc.getOptionsPrefix()).getString("pc_dcdm_model", "")

    def setUp(self, pc: Any) -> None:
        _, P = pc.getOperators()
        x, _ = P.createVecs()
        dm = pc.getDM()
        self.grid = grid_from_dmda(dm) if dm and dm.getType() == "da" else _grid_for_vec(x)
        model = _dcdm_model(self.kind if self.kind != self.default else "")

        def apply(r: GridTensor) -> GridTensor:
            with torch.no_grad():
                n = r.norm()
                rin = r / n if float(n) > 0 else r
                dtype = next(model.parameters()).dtype
                return model(rin.to(dtype)).to(r.dtype)

        self.inner = apply

    def view(self, pc: Any, viewer: Any) -> None:
        viewer.printfASCII(f"  deepkrylov DCDM network preconditioner, model {self.kind or 'shipped'}\n")


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
