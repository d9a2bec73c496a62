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
    """What every method of ``deepkrylov solve`` gets: the operator, its SciPy matrix (natural ordering), the
    right-hand side (a tensor on one rank, a GridTensor on several), the same as a GridTensor, the grid shape and
    the parsed arguments (``rtol``, ``max_it``, ``model``, ...)."""

    op: Any
    matrix: Any
    b: Any
    bg: Any
    shape: tuple
    args: argparse.Namespace

    @property
    def A_scipy(self) -> Any:
        """The SciPy matrix, assembled on first use (only the PETSc baselines need it)."""
        if callable(self.matrix):
            self.matrix = self.matrix()
        return self.matrix


def _solve_dcdm(p: SolveProblem, callback: Callback) -> Any:
    from .dcdm import dcdm
    from .dcdm.model import load_model

    try:
        model = load_model(p.args.model)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"deepkrylov solve: {err}")
    if model.dim != len(p.shape):
        raise SystemExit(f"deepkrylov solve: the DCDM model is {model.dim}D but the problem is {len(p.shape)}D")
    return dcdm(p.op, p.b, model, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)


def _solve_cg(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg

    return cg(p.op, p.b, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)


def _solve_pcg(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg
    from .preconditioners import Jacobi

    return cg(p.op, p.b, M=Jacobi(p.op), rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)


def _petsc_baseline(pc_type: str) -> Callable[[SolveProblem, Callback], Any]:
    """PETSc KSPCG with ``pc_type`` on the assembled matrix; None (skipped) when petsc4py is missing."""

    def solve(p: SolveProblem, callback: Callback) -> Any:
        from .petsc import petsc_available, petsc_solve

        if not petsc_available():
            log.warning("skipping %s: petsc4py is not installed", pc_type)
            return None
        null = p.op.null_space() if getattr(p.op, "singular", False) else False
        return petsc_solve(p.A_scipy, p.bg, pc_type=pc_type, rtol=p.args.rtol, max_it=p.args.max_it,
                           null_space=null if null is not None else False, monitor=callback)

    solve.__name__ = f"_solve_petsc_{pc_type}"
    return solve


def _grid_operator(p: SolveProblem, method: str) -> Any:
    from deepkrylov.mesh import DiffusionOperator

    if not isinstance(p.op, DiffusionOperator):
        raise SystemExit(f"deepkrylov solve: {method} needs a grid problem (--scene or --mask), not --matrix")
    return p.op


def _solve_mg(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg
    from .multigrid import Multigrid

    op = _grid_operator(p, "mg")
    M = Multigrid(dtype=torch.float32).setup(op, p.bg.grid if p.bg.grid.size > 1 else None)
    res = cg(op, p.b, M=M, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)
    res.info["setup_time"] = M.setup_time
    return res


def _solve_learned(p: SolveProblem, callback: Callback) -> Any:
    from .krylov import cg
    from .learned_multigrid import LearnedMultigrid, load_stencil_net

    op = _grid_operator(p, "learned")
    try:
        net = load_stencil_net(p.args.learned_model)
        M = LearnedMultigrid(net=net, dtype=torch.float32).setup(op, p.bg.grid if p.bg.grid.size > 1 else None)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"deepkrylov solve: {err}")
    res = cg(op, p.b, M=M, rtol=p.args.rtol, max_it=p.args.max_it, callback=callback)
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
    p.add_argument("--matrix", type=Path, help="matrix: .npz (scipy.sparse.save_npz) or a PETSc binary Mat")
    p.add_argument("--rhs", type=Path, help="right-hand side for --matrix: .npy or a PETSc binary Vec")
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


def _load_problem(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(operator or None, scipy matrix, rhs tensor (1, 1, *shape), spatial shape, description)."""
    from .matrix import MatrixOperator
    from .problems import scene_problem

    if args.matrix is not None:
        if args.rhs is None:
            raise SystemExit("deepkrylov solve: --matrix needs --rhs")
        A = _read_matrix(args.matrix)
        b = _read_vector(args.rhs)
        if A.shape[0] != A.shape[1] or A.shape[0] != b.size:
            raise SystemExit(f"deepkrylov solve: matrix {A.shape} and right-hand side ({b.size}) do not fit together")
        bad = int(np.count_nonzero(~np.isfinite(b)))
        if bad:
            raise SystemExit(f"deepkrylov solve: the right-hand side {args.rhs} has {bad} NaN or Inf entries (of "
                             f"{b.size}); it must be finite")
        bad = int(np.count_nonzero(~np.isfinite(A.data)))
        if bad:
            raise SystemExit(f"deepkrylov solve: the matrix {args.matrix} has {bad} NaN or Inf entries; it must be finite")
        n = round(b.size ** (1 / args.dim))
        shape = (n,) * args.dim if n**args.dim == b.size else (b.size,)
        bt = torch.from_numpy(b).reshape((1, 1) + shape)
        return MatrixOperator(A, symmetric=True), A, bt, shape, f"{args.matrix.name} ({b.size} unknowns)"
    mask = None
    if args.mask is not None:
        from deepkrylov.mesh import StructuredGrid, mask_from_voxels

        vox = np.load(args.mask)
        mask = mask_from_voxels(vox, StructuredGrid(vox.shape))
        args.n, args.dim = vox.shape[0], vox.ndim
    elif args.scene == "random":
        from .problems import random_scene

        mask = random_scene(args.n, args.dim, seed=args.scene_seed)
    A, b = scene_problem(args.n, args.dim, args.scene, seed=args.seed, mask=mask)
    name = args.mask.name if args.mask is not None else (
        f"random scene {args.scene_seed}" if args.scene == "random" else f"{args.scene} scene")
    what = f"{name}, {'x'.join([str(args.n)] * args.dim)}"
    return A, A.to_scipy, b, A.grid.shape, what


def _read_matrix(path: Path):  # type: ignore[no-untyped-def]
    import scipy.sparse as sp

    if path.suffix == ".npz":
        return sp.load_npz(path).tocsr()
    from .petsc import import_petsc

    PETSc = import_petsc()
    viewer = PETSc.Viewer().createBinary(str(path), "r")
    mat = PETSc.Mat().load(viewer)
    indptr, indices, data = mat.getValuesCSR()
    return sp.csr_matrix((data, indices, indptr), shape=mat.getSize())


def _read_vector(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float64).ravel()
    from .petsc import import_petsc

    PETSc = import_petsc()
    viewer = PETSc.Viewer().createBinary(str(path), "r")
    return PETSc.Vec().load(viewer).getArray().copy()


def _cmd_solve(args: argparse.Namespace) -> int:
    from deepkrylov.distributed import GridTensor, ProcessGrid, init

    ctx = init()
    op, A_scipy, b, shape, what = _load_problem(args)
    grid = ProcessGrid(ctx, shape)
    bg = GridTensor.from_global(b, grid)
    bx = b if ctx.size == 1 else bg  # one rank: plain tensors, no halo machinery
    problem = SolveProblem(op=op, matrix=A_scipy, b=bx, bg=bg, shape=tuple(shape), args=args)
    rows, histories, solutions = [], {}, {}
    for i, method in enumerate(args.methods, 1):
        progress = _Progress(method, i, len(args.methods), enabled=ctx.is_root and not args.no_progress)
        t0 = time.perf_counter()
        res = SOLVE_METHODS[method](problem, progress)
        total = time.perf_counter() - t0
        progress.done(res)
        if res is None:
            continue
        x = res.x if isinstance(res.x, GridTensor) else GridTensor.from_global(res.x, grid)
        true_res = float((bg - op.apply(x)).norm() / bg.norm())
        solve = res.info.get("solve_time", res.wall_time)
        rows.append({"method": method, "iterations": res.iterations, "reason": res.reason.name,
                     "relative_residual": true_res, "seconds": total, "setup_seconds": total - solve,
                     "solve_seconds": solve, "total_seconds": total,
                     "seconds_per_iteration": solve / max(res.iterations, 1), "peak_rss_mb": _peak_rss_mb(ctx)})
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


def _peak_rss_mb(ctx: Any) -> float:
    """This process's resident-memory high-water mark in MB, the largest over the ranks."""
    import resource

    mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
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
