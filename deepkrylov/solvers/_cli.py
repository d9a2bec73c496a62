"""``deepkrylov solve`` and ``deepkrylov train dcdm``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("deepkrylov.solvers")

METHODS = ("dcdm", "cg", "pcg", "icc", "gamg", "hypre")


def register(sub: Any, train_sub: Any) -> None:
    p = sub.add_parser(
        "solve", help="solve a pressure-Poisson system with DCDM, CG and PETSc, and compare",
        description="Build a problem (an obstacle scene, a voxel mask, or a matrix and right-hand side from a file), "
                    "solve it with each chosen method, print iterations, residual and time.",
    )
    p.add_argument("--n", type=int, default=64, help="cells per axis (default 64)")
    p.add_argument("--dim", type=int, default=3, choices=(2, 3))
    p.add_argument("--scene", default="smoke", choices=("smoke", "box"), help="built-in scene (default smoke)")
    p.add_argument("--mask", type=Path, help="voxel mask .npy (0 fluid, 1 solid, 2 empty) instead of a scene")
    p.add_argument("--matrix", type=Path, help="matrix: .npz (scipy.sparse.save_npz) or a PETSc binary Mat")
    p.add_argument("--rhs", type=Path, help="right-hand side for --matrix: .npy or a PETSc binary Vec")
    p.add_argument("--methods", nargs="+", default=["dcdm", "cg", "icc", "gamg", "hypre"], choices=METHODS)
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--max-it", type=int, default=2000)
    p.add_argument("--model", type=Path, help="DCDM model file (default: the shipped model)")
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
        A = _read_matrix(args.matrix)
        if args.rhs is None:
            raise SystemExit("--matrix needs --rhs")
        b = _read_vector(args.rhs)
        if A.shape[0] != A.shape[1] or A.shape[0] != b.size:
            raise SystemExit(f"matrix {A.shape} and right-hand side ({b.size}) do not fit together")
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
    A, b = scene_problem(args.n, args.dim, args.scene, seed=args.seed, mask=mask)
    what = f"{args.mask.name if mask is not None else args.scene} scene, {'x'.join([str(args.n)] * args.dim)}"
    return A, A.to_scipy(), b, A.grid.shape, what


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

    from .krylov import cg
    from .preconditioners import Jacobi

    ctx = init()
    op, A_scipy, b, shape, what = _load_problem(args)
    grid = ProcessGrid(ctx, shape)
    bg = GridTensor.from_global(b, grid)
    bx = b if ctx.size == 1 else bg  # one rank: plain tensors, no halo machinery
    rows, histories, solutions = [], {}, {}
    for method in args.methods:
        if method == "dcdm":
            from .dcdm import dcdm
            from .dcdm.model import load_model

            model = load_model(args.model)
            if model.dim != len(shape):
                raise SystemExit(f"the DCDM model is {model.dim}D but the problem is {len(shape)}D")
            res = dcdm(op, bx, model, rtol=args.rtol, max_it=args.max_it)
        elif method in ("cg", "pcg"):
            res = cg(op, bx, M=Jacobi(op) if method == "pcg" else None, rtol=args.rtol, max_it=args.max_it)
        else:
            from .petsc import petsc_available, petsc_solve

            if not petsc_available():
                log.warning("skipping %s: petsc4py is not installed", method)
                continue
            null = op.null_space() if getattr(op, "singular", False) else False
            res = petsc_solve(A_scipy, bg, pc_type=method, rtol=args.rtol, max_it=args.max_it,
                              null_space=null if null is not None else False)
        x = res.x if isinstance(res.x, GridTensor) else GridTensor.from_global(res.x, grid)
        true_res = float((bg - op.apply(x)).norm() / bg.norm())
        rows.append({"method": method, "iterations": res.iterations, "reason": res.reason.name,
                     "relative_residual": true_res, "seconds": res.wall_time,
                     "seconds_per_iteration": res.wall_time / max(res.iterations, 1)})
        histories[method] = res.residual_norms
        if args.save is not None:
            solutions[method] = x.gather(root=0)
    if not ctx.is_root:
        return 0
    print(f"{what}, {ctx.size} rank(s), rtol {args.rtol:g}")
    print(f"{'method':<8} {'its':>6} {'rel. residual':>14} {'time (s)':>10} {'s/it':>10}  reason")
    for r in rows:
        print(f"{r['method']:<8} {r['iterations']:>6} {r['relative_residual']:>14.3e} {r['seconds']:>10.3f} "
              f"{r['seconds_per_iteration']:>10.2e}  {r['reason']}")
    if args.json:
        args.json.write_text(json.dumps({"problem": what, "ranks": ctx.size, "rtol": args.rtol, "rows": rows}, indent=2))
    if args.save:
        np.savez(args.save, **{f"x_{k}": v.numpy() for k, v in solutions.items()},
                 **{f"residuals_{k}": np.array(h) for k, h in histories.items()})
    if args.plot:
        _plot(histories, args.plot, what)
    return 0


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
