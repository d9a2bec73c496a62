"""``deepkrylov solve`` and ``deepkrylov train dcdm``.

``solve`` runs each method of :data:`SOLVE_METHODS` (a table of small functions: a new method is one entry) on
the same problem, shows progress on stderr (rank 0), prints a table, and exits with :data:`EXIT_NOT_CONVERGED`
when a method did not converge (unless ``--allow-diverged``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

log = logging.getLogger("deepkrylov.solvers")

EXIT_NOT_CONVERGED = 3
"""``deepkrylov solve``'s exit status when a method ended without converging (reason not ``CONVERGED_*``)."""

Callback = Callable[[int, float], None]


@dataclass
class SolveProblem:
    """What every method of ``deepkrylov solve`` gets: the operator (built on this rank's block on several ranks),
    the right-hand side as a GridTensor (on one rank: on the one-rank grid, a view of the whole field), the grid
    shape and the parsed arguments (``rtol``, ``max_it``, ``model``, ...). Nothing in it holds the whole grid on
    more than one rank."""

    op: Any
    b: Any
    shape: tuple
    args: argparse.Namespace
    model: Any = None          # the DCDM network, loaded before any method runs (a bad file fails fast)
    stencil_net: Any = None    # the learned multigrid's weights, likewise


def _solve_dcdm(p: SolveProblem, callback: Callback) -> Any:
    from .dcdm import dcdm

    return dcdm(p.op, p.b, p.model, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)


def _solve_cg(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg

    return cg(p.op, p.b, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)


def _solve_pcg(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg
    from .preconditioners import Jacobi

    return cg(p.op, p.b, M=Jacobi(p.op), rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)


def _petsc_baseline(pc_type: str) -> Callable[[SolveProblem, Callback], Any]:
    """PETSc KSPCG with ``pc_type`` on the matrix assembled from each rank's own rows; None (skipped) when
    petsc4py is missing."""

    def solve(p: SolveProblem, callback: Callback) -> Any:
        from .petsc import petsc_available, petsc_solve

        if not petsc_available():
            log.warning("skipping %s: petsc4py is not installed", pc_type)
            return None
        null = p.op.null_space() if getattr(p.op, "singular", False) else False
        return petsc_solve(p.op, p.b, pc_type=pc_type, rtol=p.args.rtol, max_it=p.args.max_it,
                           null_space=null if null is not None else False, monitor=callback)

    solve.__name__ = f"_solve_petsc_{pc_type}"
    return solve


def _solve_mg(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg
    from .multigrid import Multigrid

    M = Multigrid(dtype=torch.float32).setup(p.op, p.b.grid)
    res = cg(p.op, p.b, M=M, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)
    res.info["setup_time"] = M.setup_time
    return res


def _solve_learned(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg
    from .learned_multigrid import LearnedMultigrid

    M = LearnedMultigrid(net=p.stencil_net, dtype=torch.float32).setup(p.op, p.b.grid)
    res = cg(p.op, p.b, M=M, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)
    res.info["setup_time"] = M.setup_time
    return res


SOLVE_METHODS: dict[str, Callable[[SolveProblem, Callback], Any]] = {
    "learned": _solve_learned,          # PCG with the learned multigrid (stencils predicted from the geometry)
    "mg": _solve_mg,                    # PCG with the geometric multigrid V-cycle
    "dcdm": _solve_dcdm,                # the paper's network in the conjugate-direction iteration
    "cg": _solve_cg,                    # our CG, no preconditioner
    "pcg": _solve_pcg,                  # our CG with Jacobi
    "icc": _petsc_baseline("icc"),      # PETSc CG + ICC (block Jacobi + ICC on several ranks)
    "gamg": _petsc_baseline("gamg"),    # PETSc CG + GAMG
    "hypre": _petsc_baseline("hypre"),  # PETSc CG + hypre BoomerAMG
}
"""``deepkrylov solve``'s methods: name -> ``solve(problem, callback) -> SolveResult`` (None: skipped). Every entry
passes ``callback(it, rnorm)``, the progress reporter, to its solver."""

METHODS = tuple(SOLVE_METHODS)


class _Progress:
    """One method's progress on stderr (rank 0 only): one line updated in place on a terminal; otherwise a line
    about every ``interval`` seconds, so a fast method stays quiet and a slow one is never silent."""

    def __init__(self, method: str, index: int, total: int, enabled: bool, interval: float = 2.0) -> None:
        self.label = f"[{index}/{total}] {method}"
        self.enabled, self.interval = enabled, interval
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        self.r0: Optional[float] = None
        self.printed = False
        if self.tty:
            self._write("set-up")

    def _write(self, text: str, end: bool = False) -> None:
        line = f"{self.label}: {text} ({time.perf_counter() - self.t0:.1f} s)"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(78) + ("\n" if end else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.printed = True

    def __call__(self, it: int, rnorm: float) -> None:
        if not self.enabled:
            return
        if self.r0 is None:
            self.r0 = rnorm if rnorm > 0 else 1.0
        now = time.perf_counter()
        if now - self.last >= self.interval or (self.tty and it == 0):
            self.last = now
            self._write(f"iteration {it}, relative residual {rnorm / self.r0:.3e}")

    def done(self, res: Any) -> None:
        if self.enabled and self.printed:
            self._write("skipped" if res is None else f"{res.iterations} iterations, {res.reason.name}", end=True)


def register(sub: Any, train_sub: Any) -> None:
    p = sub.add_parser(
        "solve", help="solve a pressure-Poisson system with DCDM, CG and PETSc, and compare",
        description="Build a problem (an obstacle scene, a voxel mask, or a matrix and right-hand side from a file), "
                    "solve it with each chosen method, print iterations, residual and time. Progress goes to "
                    "stderr (rank 0).",
        epilog=f"exit status: 0 when every method converged; {EXIT_NOT_CONVERGED} when a method did not (reason not "
               "CONVERGED_*, e.g. DIVERGED_ITS; the table is printed all the same), unless --allow-diverged; 1 on an "
               "input error (e.g. NaN or Inf in --rhs), with a one-line message; 2 on bad arguments.",
    )
    p.add_argument("--n", type=int, default=64, help="cells per axis (default 64)")
    p.add_argument("--dim", type=int, default=3, choices=(2, 3))
    p.add_argument("--scene", default="smoke", choices=("smoke", "box", "random"),
                   help="built-in scene (default smoke; random: random obstacles, --scene-seed)")
    p.add_argument("--scene-seed", type=int, default=900001,
                   help="seed of --scene random (training used seeds below 900000; default 900001)")
    p.add_argument("--mask", type=Path, help="voxel mask .npy (0 fluid, 1 solid, 2 empty) instead of a scene")
    p.add_argument("--matrix", type=Path,
                   help="matrix in natural (x-fastest) order: .npz (scipy.sparse.save_npz of a CSR matrix) or a PETSc "
                        "binary Mat; each rank reads only its rows (several ranks need petsc4py)")
    p.add_argument("--rhs", type=Path, help="right-hand side for --matrix: .npy (memory-mapped) or a PETSc binary Vec")
    p.add_argument("--methods", nargs="+", default=["learned", "mg", "pcg", "icc", "gamg", "hypre"], choices=METHODS,
                   help="default: learned mg pcg icc gamg hypre (dcdm, the paper's network, is slow above 32^3)")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--max-it", type=int, default=2000, help="iteration limit of every method (default 2000)")
    p.add_argument("--allow-diverged", action="store_true",
                   help=f"exit 0 even when a method does not converge (default: exit {EXIT_NOT_CONVERGED})")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--model", type=Path, help="DCDM model file (default: the shipped model)")
    p.add_argument("--learned-model", type=Path, help="learned multigrid weights (default: the shipped ones)")
    p.add_argument("--seed", type=int, default=0, help="seed of the right-hand side")
    p.add_argument("--plot", type=Path, help="write the residual histories as a PNG")
    p.add_argument("--save", type=Path, help="write the solutions and histories as .npz")
    p.add_argument("--json", type=Path, help="write the table as JSON")
    p.set_defaults(func=_cmd_solve)

    t = train_sub.add_parser(
        "dcdm", help="train the DCDM network on a scene (the paper's Ritz-vector recipe)",
        description="Lanczos on the scene's pressure matrix, Ritz-vector right-hand sides with the low spectrum "
                    "boosted, Adam on the line-search loss. Resumes from OUT/last.pt.",
    )
    t.add_argument("--n", type=int, default=32)
    t.add_argument("--dim", type=int, default=3, choices=(2, 3))
    t.add_argument("--scene", default="smoke", choices=("smoke", "box"))
    t.add_argument("--samples", type=int, default=2000)
    t.add_argument("--lanczos-steps", type=int, default=600)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=10)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--width", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=Path("runs/dcdm"))
    t.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a model.pt, or 'shipped' for the packaged model) to fine-tune")
    t.add_argument("--ship", action="store_true", help="copy the trained model into the package (maintainers)")
    t.set_defaults(func=_cmd_train_dcdm)

    t = train_sub.add_parser(
        "learned-mg", help="train the learned multigrid's stencil network on random obstacle scenes",
        description="Random smoke-style scenes, Ritz-vector right-hand sides with the low spectrum boosted, Adam on "
                    "the residual after one cycle; keeps the best weights on held-out scenes. Starts from the "
                    "classical cycle (the initial weights reproduce its Chebyshev smoother).",
    )
    t.add_argument("--sizes", type=int, nargs="+", default=[32, 32, 48, 64], help="grid sizes, cycled over the scenes")
    t.add_argument("--scenes", type=int, default=36)
    t.add_argument("--validation-scenes", type=int, default=4)
    t.add_argument("--lanczos-steps", type=int, default=150)
    t.add_argument("--epochs", type=int, default=7, help="passes over the training samples (default 7)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--loss", default="energy", choices=("energy", "residual"),
                   help="energy: ||(I - MA) e||_A (default; keeps the cycle positive definite); residual: the anchor's")
    t.add_argument("--init", type=Path, default=None, help="start from these weights ('shipped': the packaged ones)")
    t.add_argument("--out", type=Path, default=Path("runs/learned_mg/model.pt"))
    t.add_argument("--ship", action="store_true", help="copy the trained weights into the package (maintainers)")
    t.set_defaults(func=_cmd_train_learned_mg)


def _cmd_train_learned_mg(args: argparse.Namespace) -> int:
    from .learned_multigrid import SHIPPED_LEARNED_MODEL, load_stencil_net
    from .learned_training import train_learned_multigrid

    try:
        net = None if args.init is None else load_stencil_net(None if str(args.init) == "shipped" else args.init)
        if net is not None:
            net.train()
        _, record = train_learned_multigrid(
            sizes=args.sizes, scenes=args.scenes, validation_scenes=args.validation_scenes,
            lanczos_steps=args.lanczos_steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, net=net, out=args.out, loss=args.loss, progress=True,
            command="deepkrylov " + " ".join(sys.argv[1:]))
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"deepkrylov train learned-mg: {err}")
    print(f"trained: validation loss {record['initial_validation_loss']:.4e} -> {record['best_validation_loss']:.4e} "
          f"after {record['epochs']} epochs ({record['total_seconds']:.0f} s); weights in {args.out}")
    if args.ship:
        import shutil

        shutil.copy(args.out, SHIPPED_LEARNED_MODEL)
        shutil.copy(args.out.with_suffix(".json"), SHIPPED_LEARNED_MODEL.with_suffix(".json"))
        print(f"shipped as {SHIPPED_LEARNED_MODEL}")
    return 0


def _cmd_train_dcdm(args: argparse.Namespace) -> int:
    from .dcdm.model import SHIPPED_MODEL
    from .dcdm.training import train_scene_model

    try:
        record = train_scene_model(
            args.n, args.dim, args.scene, samples=args.samples, lanczos_steps=args.lanczos_steps, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, out_dir=args.out, model_kwargs={"width": args.width},
            command="deepkrylov " + " ".join(sys.argv[1:]),
            init=SHIPPED_MODEL if str(args.init) == "shipped" else args.init,
        )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"deepkrylov train dcdm: {err}")
    print(f"trained: best validation loss {record['best_val_loss']:.4e} after {args.epochs} epochs "
          f"({record['total_seconds']:.0f} s); model in {args.out / 'model.pt'}")
    if args.ship:
        import shutil

        SHIPPED_MODEL.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out / "model.pt", SHIPPED_MODEL)
        SHIPPED_MODEL.with_suffix(".json").write_text(json.dumps(record, indent=2))
        print(f"shipped as {SHIPPED_MODEL}")
    return 0


class _InputError(Exception):
    """A bad ``deepkrylov solve`` input: printed as one line (rank 0), exit status 1, no traceback."""


_NPZ_FORMAT = ("--matrix .npz: scipy.sparse.save_npz of a CSR matrix (compressed or not); each rank reads its row "
               "range only (indptr, then its slice of indices and data, streamed from the archive)")


def _check_inputs(args: argparse.Namespace) -> None:
    """Checks that need no file contents (every rank takes the same decision): fail before any work."""
    if not args.rtol > 0:
        raise _InputError(f"--rtol must be positive, but got {args.rtol}")
    if args.max_it < 1:
        raise _InputError(f"--max-it must be at least 1, but got {args.max_it}")
    if args.matrix is None and args.rhs is not None:
        raise _InputError("--rhs needs --matrix (a scene or --mask makes its own right-hand side)")
    if args.matrix is not None and args.rhs is None:
        raise _InputError("--matrix needs --rhs")
    if args.matrix is not None and args.mask is not None:
        raise _InputError("give either --matrix or --mask, not both")
    for opt in ("matrix", "rhs", "mask", "model", "learned_model"):
        path = getattr(args, opt)
        if path is not None and not path.is_file():
            raise _InputError(f"--{opt.replace('_', '-')} file not found: {path}")
    for opt in ("plot", "save", "json"):
        path = getattr(args, opt)
        if path is not None and not path.resolve().parent.is_dir():
            raise _InputError(f"--{opt} {path}: the directory {path.resolve().parent} does not exist")
    grid_methods = [m for m in args.methods if m in ("mg", "learned")]
    if args.matrix is not None and grid_methods:
        raise _InputError(f"{', '.join(grid_methods)} need(s) a grid problem (--scene or --mask), not --matrix")
    if args.matrix is None and args.mask is None:
        if args.n < 8:
            raise _InputError(f"--n must be at least 8 for the built-in scenes, but got {args.n}")
        if "dcdm" in args.methods and args.n % 2:
            raise _InputError(f"dcdm: the DCDM network pools by 2 along every axis, so the grid size must be even "
                              f"(e.g. --n {args.n - 1} or {args.n + 1}), but --n is {args.n}")


def _load_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """The DCDM network and learned multigrid weights the chosen methods need, loaded before any method runs."""
    model = net = None
    if "dcdm" in args.methods:
        from .dcdm.model import load_model

        try:
            model = load_model(args.model)
        except (FileNotFoundError, ValueError) as err:
            raise _InputError(_model_error("--model", args.model, "a DCDM model", err)) from None
    if "learned" in args.methods:
        from .learned_multigrid import load_stencil_net

        try:
            net = load_stencil_net(args.learned_model)
        except (FileNotFoundError, ValueError) as err:
            raise _InputError(_model_error("--learned-model", args.learned_model, "learned multigrid weights", err)
                              ) from None
    return model, net


def _check_fit(model: Any, shape: tuple, what: str) -> None:
    """The DCDM network takes grids of its dimension with even sizes (it pools by 2 along every axis)."""
    if model is None:
        return
    if model.dim != len(shape):
        raise _InputError(f"dcdm: the DCDM model is {model.dim}D but the problem ({what}) is {len(shape)}D")
    if any(n % 2 for n in shape):
        raise _InputError(f"dcdm: the DCDM network pools by 2 along every axis, so every grid size must be even, "
                          f"but the problem ({what}) is {'x'.join(map(str, shape))}")


def _model_error(option: str, path: Optional[Path], what: str, err: Exception) -> str:
    """One line for a weights file that cannot be used (torch's own message on a corrupt file is long and about
    ``weights_only``, which says nothing to a user)."""
    if isinstance(err.__cause__, Exception) or str(err).startswith("cannot read"):
        return (f"{option} {path}: cannot read it as {what} (corrupt, truncated or not a torch file; "
                f"write it with the matching `deepkrylov train`)")
    return f"{option} {path}: " + " ".join(str(err).split())


def _load_problem(args: argparse.Namespace, ctx: Any) -> tuple[Any, Any, Any, str]:
    """``(operator, rhs GridTensor, grid, description)``; on several ranks everything is this rank's block."""
    if args.matrix is not None:
        return _load_matrix_problem(args, ctx)
    from deepkrylov.distributed import ProcessGrid, as_grid_tensor
    from deepkrylov.mesh import StructuredGrid, mask_from_voxels

    from .problems import random_scene, scene_problem

    if args.mask is not None:
        try:
            shape = tuple(np.load(args.mask, mmap_mode="r", allow_pickle=False).shape)  # the header only
        except ValueError as err:
            raise _InputError(f"--mask {args.mask}: cannot read it as a .npy array ({err})") from None
        if len(shape) not in (2, 3) or len(set(shape)) != 1:
            raise _InputError(f"--mask {args.mask}: a cube of voxels (n x n or n x n x n) is needed, but it has shape "
                              f"{shape}")
        args.n, args.dim = shape[0], len(shape)
    shape = (args.n,) * args.dim
    grid = ProcessGrid(ctx, shape)
    part = grid if ctx.size > 1 else None  # one rank: the whole operator (on its one-rank grid)
    mask = None
    if args.mask is not None:
        mask = mask_from_voxels(args.mask, StructuredGrid(shape), partition=part)
    elif args.scene == "random":
        mask = random_scene(args.n, args.dim, seed=args.scene_seed, partition=part)
    A, b = scene_problem(args.n, args.dim, args.scene, seed=args.seed, mask=mask, partition=part)
    bg = as_grid_tensor(b, shape)[0]  # one rank: the whole field on the one-rank grid; several: b as it is
    name = args.mask.name if args.mask is not None else (
        f"random scene {args.scene_seed}" if args.scene == "random" else f"{args.scene} scene")
    return A, bg, bg.grid, f"{name}, {'x'.join(map(str, shape))}"


def _load_matrix_problem(args: argparse.Namespace, ctx: Any) -> tuple[Any, Any, Any, str]:
    """``--matrix``/``--rhs``, each rank reading only its rows. The grid is ``n^dim`` when the size is a perfect
    power (split in slabs along the first axis, so that a rank's rows are one contiguous range in the file's
    natural ordering), else 1D. One rank: a SciPy matrix; several: a PETSc AIJ Mat from the ranks' rows."""
    from deepkrylov.distributed import GridTensor, ProcessGrid

    from .matrix import MatrixOperator

    size = _rhs_size(args.rhs)
    m = round(size ** (1 / args.dim))
    shape = (m,) * args.dim if m**args.dim == size and m >= ctx.size else (size,)
    grid = ProcessGrid(ctx, shape, dims=(ctx.size,) + (1,) * (len(shape) - 1))
    plane = int(np.prod(shape[1:]))
    r0, r1 = grid.offsets[0][grid.coords[0]] * plane, grid.offsets[0][grid.coords[0] + 1] * plane
    b = _collectively(ctx, lambda: _read_rhs_rows(args.rhs, r0, r1))
    _collective_finite(ctx, b, f"the right-hand side {args.rhs.name} has {{bad}} NaN or Inf entries (of {size}); it "
                       "must be finite")
    if ctx.size > 1 or args.matrix.suffix != ".npz":
        from .petsc import import_petsc

        try:
            import_petsc()
        except ImportError:
            why = "on several ranks" if ctx.size > 1 else "in PETSc's binary format"
            raise _InputError(f"--matrix {why} needs petsc4py (pip install deepkrylov[petsc])") from None
    if args.matrix.suffix == ".npz":
        indptr, indices, data, mshape = _collectively(ctx, lambda: _read_npz_rows(args.matrix, r0, r1))
    else:
        indptr = indices = None
        mat, mshape, data = _load_petsc_mat(args.matrix, grid)
    if mshape[0] != mshape[1] or mshape[0] != size:
        raise _InputError(f"matrix {tuple(mshape)} and right-hand side ({size}) do not fit together")
    _collective_finite(ctx, data, f"the matrix {args.matrix} has {{bad}} NaN or Inf entries; it must be finite")
    bg = GridTensor(torch.from_numpy(b).reshape((1, 1) + grid.local_shape), grid)
    what = f"{args.matrix.name} ({size} unknowns)"
    if ctx.size == 1:
        import scipy.sparse as sp

        if indptr is None:
            indptr, indices, data = mat.getValuesCSR()
            mat.destroy()
        A = sp.csr_matrix((data, indices, indptr), shape=tuple(mshape))
        return MatrixOperator(A, symmetric=True), bg, grid, what
    from .petsc import PetscMatOperator, import_petsc
    from .petsc.mat import _create_aij

    if indptr is not None:  # natural ordering == PETSc's for slabs along the first axis
        mat = _create_aij(grid, indptr, indices, data)
    mat.setOption(import_petsc().Mat.Option.SYMMETRIC, True)
    return PetscMatOperator(mat, grid), bg, grid, what


def _collectively(ctx: Any, read: Callable[[], Any]) -> Any:
    """``read()`` on every rank; when it fails on some rank (a file truncated inside one rank's rows), every rank
    raises that rank's error, so that no rank waits in a collective for one that has left."""
    try:
        out, err = read(), None
    except (_InputError, ValueError, OSError) as exc:
        out, err = None, " ".join(str(exc).split())
    errors = [e for e in (ctx.comm.allgather_object(err) if ctx.size > 1 else [err]) if e]
    if errors:
        raise _InputError(errors[0])
    return out


def _collective_finite(ctx: Any, values: np.ndarray, message: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if ctx.size > 1:
        bad = sum(ctx.comm.allgather_object(bad))
    if bad:
        raise _InputError(message.format(bad=bad))


def _rhs_size(path: Path) -> int:
    """The number of entries of a ``.npy`` or PETSc binary Vec file, from its header."""
    if path.suffix == ".npy":
        try:
            return int(np.prod(np.load(path, mmap_mode="r", allow_pickle=False).shape))
        except ValueError as err:
            raise _InputError(f"--rhs {path}: cannot read it as a .npy array ({err})") from None
    with open(path, "rb") as f:
        head = f.read(8)
    classid, n = (int(v) for v in np.frombuffer(head, dtype=">i4")) if len(head) == 8 else (0, 0)
    if classid != 1211214:  # VEC_FILE_CLASSID
        raise _InputError(f"--rhs {path}: neither a .npy array nor a PETSc binary Vec")
    return n


def _read_rhs_rows(path: Path, r0: int, r1: int) -> np.ndarray:
    """Entries ``r0:r1`` of the right-hand side: a memory-mapped ``.npy`` or a PETSc binary Vec read at an offset."""
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False).reshape(-1)
        if not np.issubdtype(arr.dtype, np.number):
            raise _InputError(f"--rhs {path}: the array has dtype {arr.dtype}, not a number type")
        return np.array(arr[r0:r1], dtype=np.float64)
    with open(path, "rb") as f:  # class id, size, then big-endian doubles
        f.seek(8 + 8 * r0)
        raw = f.read(8 * (r1 - r0))
    if len(raw) != 8 * (r1 - r0):
        raise _InputError(f"--rhs {path}: the file is truncated")
    return np.frombuffer(raw, dtype=">f8").astype(np.float64)


def _npy_member(zf: Any, name: str, path: Path) -> tuple[Any, tuple, np.dtype]:
    """An open ``.npy`` member of an ``.npz`` archive positioned at its data, with its shape and dtype."""
    try:
        f = zf.open(name + ".npy")
    except KeyError:
        raise _InputError(f"--matrix {path}: not a SciPy CSR .npz ({name!r} is missing; {_NPZ_FORMAT})") from None
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = np.lib.format._read_array_header(f, version)
    if fortran:
        raise _InputError(f"--matrix {path}: {name} is stored in Fortran order")
    return f, shape, dtype


def _read_slice(f: Any, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """Entries ``start:stop`` of an ``.npy`` member whose data begins at the current position (forward seeks only:
    a compressed member is streamed through, never held whole)."""
    f.seek(f.tell() + start * dtype.itemsize)
    raw = f.read((stop - start) * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).copy()


def _read_npz_rows(path: Path, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Rows ``r0:r1`` of a CSR matrix written by ``scipy.sparse.save_npz``: ``(indptr from 0, indices, data,
    shape)``, reading only ``indptr[r0:r1+1]`` and the rows' slices of ``indices`` and ``data``."""
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise _InputError(f"--matrix {path}: not an .npz archive ({err}; {_NPZ_FORMAT})") from None
    with zf:
        f, _, dt = _npy_member(zf, "format", path)
        fmt = np.frombuffer(f.read(), dtype=dt).tobytes().decode(errors="replace").strip("\x00")
        if fmt != "csr":
            raise _InputError(f"--matrix {path}: the matrix is stored as {fmt!r}; write it as CSR "
                              "(scipy.sparse.save_npz(path, A.tocsr()))")
        f, _, dt = _npy_member(zf, "shape", path)
        shape = tuple(int(v) for v in np.frombuffer(f.read(), dtype=dt))
        f, n, dt = _npy_member(zf, "indptr", path)
        if n != (shape[0] + 1,):
            raise _InputError(f"--matrix {path}: indptr has {n} entries for {shape[0]} rows")
        indptr = _read_slice(f, dt, r0, r1 + 1).astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        f, _, dt = _npy_member(zf, "indices", path)
        indices = _read_slice(f, dt, lo, hi)
        f, _, dt = _npy_member(zf, "data", path)
        data = _read_slice(f, dt, lo, hi).astype(np.float64)
    if len(indices) != hi - lo or len(data) != hi - lo:
        raise _InputError(f"--matrix {path}: the archive is truncated")
    return indptr - lo, indices, data, shape


def _load_petsc_mat(path: Path, grid: Any) -> tuple[Any, tuple, np.ndarray]:
    """A PETSc binary Mat loaded with ``MatLoad`` into ``grid``'s row layout: each rank reads its rows."""
    from .petsc import import_petsc, petsc_comm

    PETSc = import_petsc()
    nloc, n = int(np.prod(grid.local_shape)), int(np.prod(grid.global_shape))
    mat = PETSc.Mat().create(comm=petsc_comm(grid))
    mat.setSizes(((nloc, n), (nloc, n)))
    mat.setType(PETSc.Mat.Type.AIJ)
    try:
        mat.load(PETSc.Viewer().createBinary(str(path), "r", comm=petsc_comm(grid)))
    except PETSc.Error:
        raise _InputError(f"--matrix {path}: neither a SciPy .npz nor a PETSc binary Mat of {n} rows") from None
    data = mat.getValuesCSR()[2]
    return mat, tuple(mat.getSize()), data


def _cmd_solve(args: argparse.Namespace) -> int:
    import importlib

    from deepkrylov.distributed import init

    for module in ("krylov", "preconditioners", "problems"):  # imported before the memory baseline below
        importlib.import_module(f"{__package__}.{module}")

    _fields_from_mmap()
    ctx = init()
    start_mb = _rss_mb()  # after the imports and MPI start-up: what the problem and the methods add is above it
    try:
        _check_inputs(args)
        model, net = _load_models(args)
        op, bg, grid, what = _load_problem(args, ctx)
        _return_free_heap()  # the scene's and the assembly's temporaries: give their pages back before the solves
        _check_fit(model, tuple(grid.global_shape), what)
    except (_InputError, ValueError, FileNotFoundError) as err:  # bad input: the same decision on every rank
        if ctx.is_root:
            sys.stderr.write(f"deepkrylov solve: {' '.join(str(err).split())}\n")
        return 1
    problem = SolveProblem(op=op, b=bg, shape=tuple(grid.global_shape), args=args, model=model, stencil_net=net)
    rows, histories, solutions = [], {}, {}
    for i, method in enumerate(args.methods, 1):
        progress = _Progress(method, i, len(args.methods), enabled=ctx.is_root and not args.no_progress)
        t0 = time.perf_counter()
        res = SOLVE_METHODS[method](problem, progress)
        total = time.perf_counter() - t0
        progress.done(res)
        if res is None:
            continue
        x = res.x  # a GridTensor like b
        true_res = _relative_residual(op, x, bg)
        solve = res.info.get("solve_time", res.wall_time)
        rows.append({"method": method, "iterations": res.iterations, "reason": res.reason.name,
                     "relative_residual": true_res, "seconds": total, "setup_seconds": total - solve,
                     "solve_seconds": solve, "total_seconds": total,
                     "seconds_per_iteration": solve / max(res.iterations, 1), "peak_rss_mb": _peak_rss_mb(ctx),
                     "peak_rss_above_start_mb": _peak_rss_mb(ctx, start_mb)})
        histories[method] = res.residual_norms
        if args.save is not None:
            solutions[method] = x.gather(root=0)
    failed = [r for r in rows if not r["reason"].startswith("CONVERGED")]
    status = EXIT_NOT_CONVERGED if failed and not args.allow_diverged else 0
    if not ctx.is_root:
        return status
    print(f"{what}, {ctx.size} rank(s), rtol {args.rtol:g}")
    print(f"{'method':<8} {'its':>6} {'rel. residual':>14} {'set-up s':>9} {'solve s':>9} {'total s':>9} {'s/it':>9}"
          f"  reason")
    for r in rows:
        print(f"{r['method']:<8} {r['iterations']:>6} {r['relative_residual']:>14.3e} {r['setup_seconds']:>9.3f} "
              f"{r['solve_seconds']:>9.3f} {r['total_seconds']:>9.3f} {r['seconds_per_iteration']:>9.2e}  {r['reason']}")
    if args.json:
        args.json.write_text(json.dumps({"problem": what, "ranks": ctx.size, "rtol": args.rtol, "rows": rows}, indent=2))
    if args.save:
        np.savez(args.save, **{f"x_{k}": v.numpy() for k, v in solutions.items()},
                 **{f"residuals_{k}": np.array(h) for k, h in histories.items()})
    if args.plot:
        _plot({f"{r['method']} ({r['total_seconds']:.2f} s)": histories[r["method"]] for r in rows}, args.plot,
              f"{what}, {ctx.size} rank(s)")
    if failed:
        names = ", ".join(f"{r['method']} ({r['reason']} after {r['iterations']} iterations)" for r in failed)
        hint = " (--allow-diverged: exit 0)" if status else ""
        sys.stderr.write(f"deepkrylov solve: not converged: {names}{hint}\n")
    sys.stdout.flush()
    return status


def _relative_residual(op: Any, x: Any, b: Any) -> float:
    """``||b - A x|| / ||b||`` for GridTensors with one work vector (``A x``, then ``-= b`` in place)."""
    r = op.apply(x)
    r.local.sub_(b.local.reshape(r.local.shape))
    return float(r.norm() / b.norm())


def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _fields_from_mmap() -> None:
    """Serve every allocation of 256 KB or more (a field, a block, a temporary) from its own mmap, returned to the OS
    when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; a no-op elsewhere). glibc's default raises that threshold
    after the first large free, and later temporaries then stay resident in the heap after they are freed, so a
    rank's peak memory would depend on its allocation history rather than on the fields it holds."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD


def _return_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _rss_mb() -> float:
    """This process's resident-memory high-water mark in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mb(ctx: Any, start_mb: float = 0.0) -> float:
    """The resident-memory high-water mark in MB minus ``start_mb`` (each rank's own), the largest over the ranks."""
    mb = _rss_mb() - start_mb
    return max(ctx.comm.allgather_object(mb)) if ctx.size > 1 else mb


def _plot(histories: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in histories.items():
        h = np.asarray(h)
        ax.semilogy(np.arange(len(h)), h / h[0], label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
