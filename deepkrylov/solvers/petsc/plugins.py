"""deepkrylov's solvers and preconditioners as PETSc python types, for PETSc programs (also C ones), through the
options database only.

Every plugin is a :class:`Plugin`: the options it reads under the KSP's or PC's prefix are declared in one table
(:attr:`Plugin.options`: attribute, option name, parser), its grid comes from :func:`~.layout.plugin_grid`, and a
Python error in ``setUp``/``solve``/``apply`` is reported to PETSc with its message. :class:`KSPPlugin` is the
template of the ``KSPPYTHON`` types (PETSc's tolerances, initial guess, reference norm and monitors around one
``_run``); :class:`PCPlugin` that of the ``PCPYTHON`` types (``_setup`` once, ``_apply`` on GridTensors).

=========================================================  =======================================================
``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.CG``   deepkrylov's CG with the KSP's PC
``... .FCG``                                                flexible CG
``... .DCDM [-ksp_dcdm_model FILE] [-ksp_dcdm_memory 2]``   DCDM (the network picks the directions)
``-pc_type python -pc_python_type deepkrylov.solvers.petsc.PC [-deepkrylov_pc_type jacobi|identity|module:factory]``
``... .Jacobi``                                             deepkrylov's Jacobi
``... .DCDMPC [-pc_dcdm_model FILE]``                       the DCDM network as a (nonlinear) PC for flexible CG
``... .MG [-deepkrylov_mg_levels L ...]``                   geometric multigrid on the operator read back
``... .LearnedMG [-deepkrylov_learned_model FILE]``         learned multigrid, likewise
=========================================================  =======================================================
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, serial_grid

from ..result import SolveResult
from ._core import _reports_errors, _track_petsc_object, import_petsc
from .ksp import PetscPC
from .layout import GRID_OPTION, plugin_grid
from .mat import PetscMatOperator, _result_local
from .readback import MatDiffusion, _embed, _multiple_for, _read_stencil
from .vec import from_petsc_vec

__all__ = ["Plugin", "KSPPlugin", "PCPlugin", "CG", "FCG", "DCDM", "PC", "Jacobi", "DCDMPC", "MG", "LearnedMG",
           "embedding_environment"]


def _levels(text: str) -> Optional[int]:
    """``-deepkrylov_mg_levels``: 0 means as many as the grid allows (None)."""
    return int(text) or None


class Plugin:
    """Template of every deepkrylov python type for PETSc (KSP or PC): options, grid, view.

    ``options`` lists ``(attribute, option name, parser)``; the default of each attribute is the class attribute
    of the same name, and ``-<prefix><option name> VALUE`` (under the KSP's/PC's prefix) replaces it, parsed
    with ``parser`` (``str``, ``int``, ``float`` or a function; a bad value is an error naming the option).
    :meth:`_check` validates them at set-up; :meth:`_ndim` is the number of axes the plugin's grid must have.
    """

    options: tuple[tuple[str, str, Callable[[str], Any]], ...] = ()
    grid_ndim: Optional[int] = None

    @property
    def name(self) -> str:
        """The python type name PETSc is given: ``deepkrylov.solvers.petsc.<class>``."""
        return f"deepkrylov.solvers.petsc.{type(self).__name__}"

    def create(self, obj: Any) -> None:
        self.grid: Optional[ProcessGrid] = None
        for attr, _, _ in self.options:
            setattr(self, attr, getattr(type(self), attr))

    def setFromOptions(self, obj: Any) -> None:
        PETSc = import_petsc()
        prefix = obj.getOptionsPrefix() or ""
        opts = PETSc.Options(prefix)
        for attr, option, parse in self.options:
            if not opts.hasName(option):
                continue
            text = opts.getString(option, "")
            try:
                setattr(self, attr, parse(text))
            except ValueError:
                kind = {int: "an integer", float: "a number"}.get(parse, "an integer")
                raise ValueError(f"-{prefix}{option} must be {kind}, but got {text!r}") from None

    def _check(self, obj: Any) -> None:
        """Validate the options (an error names the option); called first at set-up."""

    def _ndim(self) -> Optional[int]:
        return self.grid_ndim

    def _find_grid(self, obj: Any, vec: Any) -> ProcessGrid:
        return plugin_grid(obj, vec, ndim=self._ndim(), what=self.name)

    def describe(self) -> str:
        """What ``-ksp_view``/``-pc_view`` prints (one or more lines)."""
        return f"deepkrylov {type(self).__name__} ({self.name})"

    def view(self, obj: Any, viewer: Any) -> None:
        for line in self.describe().splitlines():
            viewer.printfASCII(f"  {line}\n")


# ---- KSP plugins ------------------------------------------------------------------------------------------------
def _ksp_monitor(ksp: Any) -> Callable[[int, float], None]:
    """A deepkrylov ``callback(it, rnorm)`` that reports to the KSP: iteration number, residual norm, convergence
    history and PETSc monitors (``-ksp_monitor``)."""

    def monitor(it: int, rnorm: float) -> None:
        ksp.setIterationNumber(it)
        ksp.setResidualNorm(rnorm)
        ksp.logConvergenceHistory(rnorm)
        ksp.monitor(it, rnorm)

    return monitor


def _reference(ksp: Any) -> str:
    PETSc = import_petsc()
    opts = PETSc.Options(ksp.getOptionsPrefix())
    if opts.getBool("ksp_converged_use_initial_residual_norm", False):
        return "initial"
    return "min" if opts.getBool("ksp_converged_use_min_initial_residual_norm", False) else "rhs"


def _norm_name(ksp: Any) -> str:
    PETSc = import_petsc()
    nt = ksp.getNormType()
    if nt == PETSc.KSP.NormType.UNPRECONDITIONED:
        return "unpreconditioned"
    if nt == PETSc.KSP.NormType.NATURAL:
        return "natural"
    return "preconditioned"


class KSPPlugin(Plugin):
    """Template of the ``KSPPYTHON`` types: :meth:`solve` wraps the KSP's operator (:class:`PetscMatOperator`) and
    vectors (zero copy), takes PETSc's tolerances, initial-guess flag and reference norm
    (``-ksp_converged_use_initial_residual_norm``), reports every iteration to the KSP (``-ksp_monitor``, the
    convergence history) and hands the result back (iterations, residual, converged reason). A subclass gives
    ``_run``. The grid is found at the first solve after set-up."""

    last: Optional[SolveResult] = None

    def create(self, ksp: Any) -> None:
        super().create(ksp)
        self.last = None

    @_reports_errors
    def setUp(self, ksp: Any) -> None:
        self._check(ksp)
        self.grid = None

    def reset(self, ksp: Any) -> None:
        self.grid = None

    def _run(self, ksp: Any, op: PetscMatOperator, b: GridTensor, x0: Optional[GridTensor], **kw: Any
             ) -> SolveResult:
        raise NotImplementedError

    @_reports_errors
    def solve(self, ksp: Any, b: Any, x: Any) -> None:
        A, _ = ksp.getOperators()
        if self.grid is None:
            self.grid = self._find_grid(ksp, b)
        grid = self.grid
        op = PetscMatOperator(A, grid)
        bt, xt = from_petsc_vec(b, grid), from_petsc_vec(x, grid)
        rtol, atol, dtol, max_it = ksp.getTolerances()
        x0 = xt.clone() if ksp.getInitialGuessNonzero() else None
        try:
            res = self._run(ksp, op, bt, x0, rtol=rtol, atol=atol, dtol=dtol, max_it=int(max_it),
                            reference=_reference(ksp), callback=_ksp_monitor(ksp))
        finally:
            op.close()
        xt.local.copy_(res.x.local)
        ksp.setIterationNumber(res.iterations)
        ksp.setResidualNorm(res.residual_norm)
        ksp.setConvergedReason(int(res.reason))
        self.last = res


class CG(KSPPlugin):
    """deepkrylov's :func:`~deepkrylov.solvers.cg` as a KSP: ``-ksp_type python -ksp_python_type
    deepkrylov.solvers.petsc.CG``. The norm type (``-ksp_norm_type``) and the KSP's PC (through
    :class:`PetscPC`) are PETSc's; the grid comes from :func:`plugin_grid` (the KSP's DMDA, the vector's, or
    ``-<prefix>deepkrylov_grid``)."""

    method = "cg"

    def describe(self) -> str:
        return f"deepkrylov {self.method} ({self.name})"

    def _run(self, ksp: Any, op: PetscMatOperator, b: GridTensor, x0: Optional[GridTensor], **kw: Any
             ) -> SolveResult:
        PETSc = import_petsc()
        from ..krylov import cg, fcg

        pc = ksp.getPC()
        M = None if pc.getType() == PETSc.PC.Type.NONE else PetscPC.from_petsc(pc, op.grid)
        try:
            if self.method == "fcg":
                return fcg(op, b, x0, M=M, **kw)
            return cg(op, b, x0, M=M, norm_type=_norm_name(ksp), **kw)
        finally:
            if M is not None:
                M.close()


class FCG(CG):
    """Like :class:`CG` but flexible CG (for a preconditioner that changes between applications)."""

    method = "fcg"


_MODELS: dict = {}


def _dcdm_model(path: str) -> Any:
    """Load (once per path) a DCDM network; ``""`` is the shipped model."""
    if path not in _MODELS:
        from ..dcdm.model import load_model

        _MODELS[path] = load_model(path or None)
    return _MODELS[path]


class DCDM(KSPPlugin):
    """deepkrylov's DCDM (the network predicts the search directions) as a KSP:
    ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.DCDM [-ksp_dcdm_model FILE] [-ksp_dcdm_memory 2]
    [-deepkrylov_grid nx,ny,nz]`` (under the KSP's prefix). The residual norms are true (unpreconditioned)
    residuals; the KSP's PC is not used. The network is applied by
    :class:`~deepkrylov.solvers.dcdm.NetworkPreconditioner` and needs a grid of its dimension."""

    options = (("model_path", "ksp_dcdm_model", str), ("memory", "ksp_dcdm_memory", int))
    model_path = ""
    memory = 2

    def _check(self, ksp: Any) -> None:
        if self.memory < 1:
            raise ValueError(f"-{ksp.getOptionsPrefix() or ''}ksp_dcdm_memory must be at least 1, but got {self.memory}")

    def _ndim(self) -> Optional[int]:
        from ..dcdm import NetworkPreconditioner

        return NetworkPreconditioner(_dcdm_model(self.model_path)).dim

    def describe(self) -> str:
        return f"deepkrylov DCDM, model {self.model_path or 'shipped'}, memory {self.memory}"

    def _run(self, ksp: Any, op: PetscMatOperator, b: GridTensor, x0: Optional[GridTensor], **kw: Any
             ) -> SolveResult:
        from ..dcdm import NetworkPreconditioner, dcdm

        M = NetworkPreconditioner(_dcdm_model(self.model_path))
        return dcdm(op, b, M, x0, memory=self.memory, **kw)


# ---- PC plugins -------------------------------------------------------------------------------------------------
class PCPlugin(Plugin):
    """Template of the ``PCPYTHON`` types: :meth:`setUp` checks the options, finds the grid of the PC's matrix
    and calls ``_setup(pc, P, grid)`` (timed: ``setup_time``); :meth:`apply` hands ``_apply`` the vectors as
    GridTensors (zero copy)."""

    inner: Any = None
    setup_time: Optional[float] = None

    def create(self, pc: Any) -> None:
        super().create(pc)
        self.inner, self.setup_time = None, None

    @_reports_errors
    def setUp(self, pc: Any) -> None:
        t0 = time.perf_counter()
        self._check(pc)
        _, P = pc.getOperators()
        x, _ = P.createVecs()
        try:
            self.grid = self._find_grid(pc, x)
        finally:
            x.destroy()
        self._setup(pc, P, self.grid)
        self.setup_time = time.perf_counter() - t0

    def _setup(self, pc: Any, P: Any, grid: ProcessGrid) -> None:
        raise NotImplementedError

    def reset(self, pc: Any) -> None:
        self.inner = None

    @_reports_errors
    def apply(self, pc: Any, x: Any, y: Any) -> None:
        self._apply(from_petsc_vec(x, self.grid), from_petsc_vec(y, self.grid))

    def _apply(self, x: GridTensor, y: GridTensor) -> None:
        """``y = M x`` for a deepkrylov preconditioner (or callable) ``self.inner`` on GridTensors."""
        fn = self.inner.apply if hasattr(self.inner, "apply") else self.inner
        y.local.copy_(_result_local(fn(x), x, self.inner).reshape(y.local.shape))


def _make_preconditioner(kind: str, op: Any) -> Any:
    from ..preconditioners import Identity, Jacobi as _Jacobi

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


class PC(PCPlugin):
    """A deepkrylov preconditioner as a PC: ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.PC
    [-deepkrylov_pc_type jacobi]`` (under the PC's prefix). ``module:factory`` calls ``factory(operator)`` with the
    preconditioning matrix as a :class:`PetscMatOperator` and uses the returned preconditioner or callable on
    GridTensors. The grid comes from :func:`plugin_grid` (the PC's DMDA, which ``KSPSetDM`` sets, or
    ``-<prefix>deepkrylov_grid nx,ny,nz``). Symmetric preconditioners only (``applyTranspose`` is ``apply``)."""

    options = (("kind", "deepkrylov_pc_type", str),)
    kind = "jacobi"

    def _setup(self, pc: Any, P: Any, grid: ProcessGrid) -> None:
        self.inner = _make_preconditioner(self.kind, PetscMatOperator(P, grid))

    def describe(self) -> str:
        return f"deepkrylov preconditioner: {self.kind} ({self.inner!r})"

    def applyTranspose(self, pc: Any, x: Any, y: Any) -> None:
        self.apply(pc, x, y)

    applySymmetricLeft = PCPlugin.apply
    applySymmetricRight = PCPlugin.apply


class Jacobi(PC):
    """:class:`PC` with deepkrylov's Jacobi (``-pc_python_type deepkrylov.solvers.petsc.Jacobi``)."""

    options = ()


class DCDMPC(PCPlugin):
    """The DCDM network as a PC, ``z = ||r|| f(r / ||r||)``
    (:class:`~deepkrylov.solvers.dcdm.NetworkPreconditioner`): a nonlinear preconditioner for flexible CG.

    ``-ksp_type fcg -ksp_fcg_mmax 2 -pc_type python -pc_python_type deepkrylov.solvers.petsc.DCDMPC
    [-pc_dcdm_model FILE] [-deepkrylov_grid nx,ny,nz]`` (under the PC's prefix). The network needs a grid of its
    dimension: the KSP's DMDA (``KSPSetDM`` with ``KSPSetDMActive(ksp, PETSC_FALSE)``) or the option.
    """

    options = (("model_path", "pc_dcdm_model", str),)
    model_path = ""

    def _ndim(self) -> Optional[int]:
        from ..dcdm import NetworkPreconditioner

        return NetworkPreconditioner(_dcdm_model(self.model_path)).dim

    def _setup(self, pc: Any, P: Any, grid: ProcessGrid) -> None:
        from ..dcdm import NetworkPreconditioner

        self.inner = NetworkPreconditioner(_dcdm_model(self.model_path))

    def describe(self) -> str:
        return f"deepkrylov DCDM network preconditioner, model {self.model_path or 'shipped'}"


class MG(PCPlugin):
    """deepkrylov's geometric multigrid V-cycle (:class:`~deepkrylov.solvers.multigrid.Multigrid`) as a PC, on
    the operator read back from the PC's matrix.

    ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.MG [-deepkrylov_mg_levels L]
    [-deepkrylov_mg_smoother chebyshev|jacobi] [-deepkrylov_mg_degree 2] [-deepkrylov_mg_omega 0.8]
    [-deepkrylov_mg_dtype float64|float32]`` (under the PC's prefix). Set-up reads the matrix on its DMDA
    (:func:`plugin_grid`) with :func:`diffusion_operator_from_mat`, padded so that the grid halves, and builds the
    hierarchy; a matrix that is not such an operator is a clear error suggesting ``-pc_type gamg``. When unknowns
    couple to diagonal-only boundary rows (PETSc's ex45) the matrix is block lower-triangular and each application
    is exact in the boundary block: ``z_b = r_b / d_b``, then ``z_f = M (r_f - A_fb z_b)``; without such coupling
    it is plain ``M`` (symmetric, for CG). Set-up is local: each rank reads its own rows and builds its block of the
    padded operator (the DMDA's blocks); the V-cycle runs on those blocks (the coarse levels gathered where blocks
    stop halving), so 1, 2 and 4 ranks give the same iterations.
    """

    kind = "multigrid"
    options = (("levels", "deepkrylov_mg_levels", _levels), ("smoother", "deepkrylov_mg_smoother", str),
               ("degree", "deepkrylov_mg_degree", int), ("omega", "deepkrylov_mg_omega", float),
               ("dtype", "deepkrylov_mg_dtype", str))
    levels: Optional[int] = None
    smoother, degree, omega, dtype = "chebyshev", 2, 0.8, "float64"
    _DTYPES = {"float64": torch.float64, "float32": torch.float32}

    def create(self, pc: Any) -> None:
        super().create(pc)
        self.found: Optional[MatDiffusion] = None
        self._wv = self._tv = None

    def _check(self, pc: Any) -> None:
        from ..multigrid import SMOOTHERS

        o = f"-{pc.getOptionsPrefix() or ''}deepkrylov_mg_"
        if self.levels is not None and self.levels < 1:
            raise ValueError(f"{o}levels must be at least 1, but got {self.levels}")
        if self.smoother not in SMOOTHERS:
            raise ValueError(f"{o}smoother must be one of {SMOOTHERS}, but got {self.smoother!r}")
        if self.degree < 1:
            raise ValueError(f"{o}degree must be at least 1, but got {self.degree}")
        if not 0 < self.omega < 2:
            raise ValueError(f"{o}omega must lie in (0, 2), but got {self.omega}")
        if self.dtype not in self._DTYPES:
            raise ValueError(f"{o}dtype must be one of {tuple(self._DTYPES)}, but got {self.dtype!r}")

    def _make(self, grid: ProcessGrid, dtype: torch.dtype) -> Any:
        from ..multigrid import Multigrid

        return Multigrid(levels=self.levels, smoother=self.smoother, degree=self.degree, omega=self.omega, dtype=dtype)

    def _setup(self, pc: Any, P: Any, grid: ProcessGrid) -> None:
        M = self._make(grid, self._DTYPES[self.dtype])
        # Every rank reads its own rows and builds its block of the padded operator (diffusion_operator_from_mat)
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
        egrid = op.partition  # the DMDA's blocks, grown by the padding (None on one rank: the whole grid)
        if op.grid.size > 4096 and any(n % 2 or n // 2 < max(M.coarsest, 2) for n in op.grid.shape):
            raise ValueError(
                f"the grid {'x'.join(map(str, reversed(op.grid.shape)))} (x first) cannot be halved (an odd size with "
                "unknowns on its high face): one level would be a direct solve; use an even DMDA size or "
                "-pc_type gamg")
        M.setup(op, egrid)
        self.found, self.inner = found, M
        self._cycle_grid = egrid if egrid is not None else serial_grid(op.grid.shape)  # the padded blocks' grid
        # local pieces: where this rank's block sits in the padded block, its boundary rows and 1 / diagonal there
        self._fluid = (~found.boundary).to(torch.float64).reshape(-1)
        self._inv_db = torch.where(found.boundary, 1.0 / found.diagonal, torch.zeros(())).reshape(-1)
        self._inner_sl = (0, 0) + found.local_region
        self._big = torch.zeros((1, 1) + self._cycle_grid.local_shape, dtype=torch.float64)
        self._zbig = torch.zeros_like(self._big)
        self._w = torch.zeros(self._fluid.numel(), dtype=torch.float64)
        self._free_work()
        self._wv, self._tv = P.createVecs() if found.coupled else (None, None)
        for v in (self._wv, self._tv):
            if v is not None:
                _track_petsc_object(v)  # destroyed before PETSc is finalized
        self._P = P

    def _free_work(self) -> None:
        for v in (getattr(self, "_wv", None), getattr(self, "_tv", None)):
            if v is not None:
                v.destroy()
        self._wv = self._tv = None

    def reset(self, pc: Any) -> None:
        self._free_work()
        self.inner = None

    def describe(self) -> str:
        M, f = self.inner, self.found
        if M is None or f is None:
            return f"deepkrylov {self.kind} (not set up)"
        return (f"deepkrylov {self.kind}: {M!r} (z, y, x), set-up {self.setup_time:.3g}s\n"
                f"operator read from the matrix: weights (z,y,x) {f.weights}, faces {f.faces}, "
                f"{f.boundary_rows} boundary rows, coupled to them: {f.coupled}")

    def _apply(self, x: GridTensor, y: GridTensor) -> None:
        r, z = x.local.reshape(-1), y.local.reshape(-1)
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
        self.inner.apply_into(GridTensor(self._big, self._cycle_grid), GridTensor(self._zbig, self._cycle_grid))
        z.copy_(self._zbig[self._inner_sl].reshape(-1)).mul_(self._fluid).add_(w)


_STENCIL_NETS: dict = {}


def _stencil_net(path: str, dim: int) -> Any:
    """Load (once per path) learned multigrid weights; ``""`` is the shipped file, ``classical`` the untrained
    network (the classical Chebyshev cycle)."""
    from ..learned_multigrid import StencilNet, load_stencil_net

    if path == "classical":
        return StencilNet(dim=dim)
    if path not in _STENCIL_NETS:
        _STENCIL_NETS[path] = load_stencil_net(path or None)
    return _STENCIL_NETS[path]


class LearnedMG(MG):
    """deepkrylov's learned multigrid (:class:`~deepkrylov.solvers.learned_multigrid.LearnedMultigrid`) as a PC,
    otherwise as :class:`MG`.

    ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.LearnedMG [-deepkrylov_learned_model FILE]
    [-deepkrylov_mg_levels L] [-deepkrylov_mg_dtype float64|float32]``: ``FILE`` defaults to the shipped
    weights; ``classical`` takes the untrained network, which reproduces :class:`MG`'s Chebyshev cycle. The
    smoothing steps come from the weights (``-deepkrylov_mg_smoother/degree/omega`` do not apply).
    """

    kind = "learned multigrid"
    options = MG.options + (("model_path", "deepkrylov_learned_model", str),)
    model_path = ""

    def _ndim(self) -> Optional[int]:
        return None if self.model_path == "classical" else _stencil_net(self.model_path, 3).dim

    def _make(self, grid: ProcessGrid, dtype: torch.dtype) -> Any:
        from ..learned_multigrid import LearnedMultigrid

        return LearnedMultigrid(net=_stencil_net(self.model_path, grid.ndim), levels=self.levels, dtype=dtype)

    def describe(self) -> str:
        return f"weights: {self.model_path or 'shipped'}\n" + super().describe()


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
