"""PETSc's Krylov solvers and preconditioners next to deepkrylov's: :func:`petsc_solve`, the KSP baseline with the
same tolerances and stopping test, and :class:`PetscPC`, any PETSc PC as a deepkrylov preconditioner."""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, serial_grid

from ..preconditioners import Preconditioner
from ..result import ConvergedReason, SolveResult
from ._core import _sizes, _track_petsc_object, import_petsc
from .layout import _check_grid, _grid_for_vec, _lift, create_dmda
from .mat import PetscMatOperator, as_petsc_mat, assemble_aij, set_constant_null_space, set_null_space
from .vec import _each_sample, _through_petsc, from_petsc_vec, to_petsc_vec

PC_TYPES = ("none", "jacobi", "icc", "gamg", "hypre", "sor", "bjacobi", "lu", "cholesky")
"""The PC types of :func:`petsc_solve`."""

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
        A: a PETSc ``Mat`` (or :class:`PetscMatOperator`), a SciPy sparse matrix in natural ordering, or a
            deepkrylov operator (assembled by :func:`assemble_aij`: from each rank's stencil rows for a
            DiffusionOperator, else via ``to_scipy()``; without either a ``MATPYTHON`` shell: then only
            ``jacobi``/``none`` PCs).
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
    elif isinstance(A, PetscMatOperator):
        mat = A.mat
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
    takes_grid_tensors = True

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

    def _one_rank_grid(self) -> ProcessGrid:
        """The grid of a plain tensor before set-up: one process, the matrix's mesh shape (or its size)."""
        mesh = getattr(self.A, "grid", None)
        return serial_grid(tuple(getattr(mesh, "shape", ())) or (int(self.A.shape[0]),))

    def apply(self, r: Any) -> Any:
        """``M r`` for a GridTensor on the PC's grid (on one rank: on any one-rank grid with its cells) or a plain
        tensor on one rank (each sample ``(n,)`` or laid out on the grid); a batch or several channels get one
        ``PCApply`` each."""
        if not self.is_setup:
            raise RuntimeError("PetscPC.apply before setup(A): pass the matrix to PetscPC(A, ...) or to the solver")
        g, restore = _lift(r, self.grid if self.grid is not None else self._one_rank_grid())
        if self.pc is None:
            self._build(g.grid if g.grid.size > 1 else self._one_rank_grid())
        _check_grid(g, self.grid, "r", "this PetscPC was set up on")
        return restore(g.with_local(_each_sample(self._apply_local, g.local)))  # one PCApply per sample and channel

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

