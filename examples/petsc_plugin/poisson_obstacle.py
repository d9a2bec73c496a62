"""Solve a pressure Poisson problem with obstacles with deepkrylov's CG, and the same system with PETSc.

    python examples/petsc_plugin/poisson_obstacle.py --n 64
    mpiexec -n 2 python examples/petsc_plugin/poisson_obstacle.py --n 64

The scene (deepkrylov.mesh.smoke_scene): a box of fluid with a spherical and a box-shaped solid obstacle (zero
normal flux), a solid floor and an open top (zero pressure). The matrix-free 7-point operator runs on GridTensors
split over the ranks like a PETSc DMDA; PETSc solves the AIJ assembly of the same operator with CG + GAMG.
"""

from __future__ import annotations

import argparse

import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, init
from deepkrylov.mesh import BoundaryConditions, StructuredGrid, laplacian, smoke_scene
from deepkrylov.solvers import Jacobi, cg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=48, help="cells per axis")
    ap.add_argument("--dim", type=int, default=3, choices=(2, 3))
    ap.add_argument("--rtol", type=float, default=1e-8)
    ap.add_argument("--no-petsc", action="store_true", help="skip the PETSc comparison")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per rank (default 1: one rank per core, like PETSc; more threads than free "
                         "cores makes every reduction wait on busy threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ctx = init()
    shape = (args.n,) * args.dim
    mesh = StructuredGrid(shape)
    A = laplacian(mesh, BoundaryConditions.uniform(args.dim, "neumann"), smoke_scene(args.n, args.dim))
    grid = ProcessGrid(ctx, shape)

    # a right-hand side that is zero outside the fluid: a source blob near the floor
    coords = mesh.meshgrid()
    blob = torch.exp(-sum((c - 0.25) ** 2 for c in coords) / 0.01) * A.fluid
    b = GridTensor.from_global(blob.reshape(1, 1, *shape), grid)

    res = cg(A, b, M=Jacobi(A), rtol=args.rtol)
    res.raise_if_failed()
    r = (b - A.apply(res.x)).norm() / b.norm()
    if ctx.is_root:
        print(f"deepkrylov CG+Jacobi on {ctx.size} rank(s), {args.n}^{args.dim}: {res.iterations} iterations, "
              f"{res.reason.name}, true relative residual {float(r):.2e}, {res.wall_time:.3f} s")

    if not args.no_petsc:
        from deepkrylov.solvers import petsc as P

        for pc in ("jacobi", "gamg"):
            base = P.petsc_solve(A, b, pc_type=pc, rtol=args.rtol)
            diff = (base.x - res.x).norm() / res.x.norm()
            if ctx.is_root:
                print(f"PETSc CG+{pc:<6}: {base.iterations} iterations, {base.reason.name}, "
                      f"{base.wall_time:.3f} s, relative difference to ours {float(diff):.1e}")


if __name__ == "__main__":
    main()
