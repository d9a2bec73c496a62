"""Solvers on deepkrylov.mesh's matrix-free stencil operators, against SciPy's direct solve of the same operator's
CSR and against PETSc KSPCG on its AIJ assembly; GridTensors on 1, 2 or 4 ranks give the serial result."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import BoundaryConditions, Sphere, StructuredGrid, laplacian, mask_from_shapes, smoke_scene
from deepkrylov.solvers import ConvergedReason, Jacobi, LinearOperator, cg, fcg, gmres

CASES = {
    "2d-dirichlet": ((24, 20), "dirichlet", None),
    "2d-neumann": ((20, 18), "neumann", None),
    "2d-periodic": ((16, 20), "periodic", None),
    "2d-smoke": ((24, 24), "neumann", "smoke"),
    "3d-dirichlet": ((10, 9, 8), "dirichlet", None),
    "3d-neumann": ((8, 9, 10), "neumann", None),
    "3d-periodic": ((8, 8, 8), "periodic", None),
    "3d-sphere": ((12, 12, 12), "dirichlet", "sphere"),
    "3d-smoke": ((12, 12, 12), "neumann", "smoke"),
}


def build(case: str):
    shape, bc, obstacle = CASES[case]
    grid = StructuredGrid(shape)
    mask = None
    if obstacle == "smoke":
        mask = smoke_scene(shape[0], len(shape))
    elif obstacle == "sphere":
        mask = mask_from_shapes(grid, [Sphere((0.5,) * len(shape), 0.25)])
    op = laplacian(grid, BoundaryConditions.uniform(len(shape), bc), mask)
    b = torch.from_numpy(np.random.default_rng(5).standard_normal(shape)).reshape(1, 1, *shape)
    b = b * op.fluid.to(b.dtype)  # zero on cells that are not unknowns
    b = op.project(b)             # consistent for a singular (pure Neumann / periodic) operator
    return op, b


def reference(op, b: torch.Tensor) -> np.ndarray:
    A = op.to_scipy()
    bf = b.numpy().ravel()
    if not op.singular:
        return sla.spsolve(A.tocsc(), bf)
    fluid = op.fluid.numpy().ravel()
    pin = np.flatnonzero(fluid)[0]
    keep = np.flatnonzero(np.arange(bf.size) != pin)
    x = np.zeros_like(bf)
    x[keep] = sla.spsolve(A[keep][:, keep].tocsc(), bf[keep])
    x[fluid] -= x[fluid].mean()
    return x


def _fix(op, x: np.ndarray) -> np.ndarray:
    if op.singular:
        fluid = op.fluid.numpy().ravel()
        x = x.copy()
        x[fluid] -= x[fluid].mean()
    return x


@pytest.mark.parametrize("case", list(CASES))
def test_mesh_operator_solves_match_scipy(ctx, case):
    op, b = build(case)
    assert isinstance(op, LinearOperator)
    ref = reference(op, b)
    grid = ProcessGrid(ctx, op.grid.shape, periodic=op.bc.any_periodic)
    bt = GridTensor.from_global(b, grid)
    serial = None
    for solver, kw in ((cg, {"M": Jacobi(op)}), (fcg, {"M": Jacobi(op)}), (gmres, {"restart": 40})):
        res = solver(op, bt, rtol=1e-12, max_it=3000, **kw)
        assert res.converged, (solver.__name__, res)
        x = _fix(op, res.x.gather().numpy().ravel())
        assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-8, solver.__name__
        if solver is cg:
            serial = cg(op, b, M=Jacobi(op), rtol=1e-12, max_it=3000)
            assert res.iterations == serial.iterations  # the same on every rank count


def test_singular_without_projection_is_not_silent(ctx):
    op, b = build("2d-neumann")
    bad = b + 1.0  # inconsistent: not in the range of a pure Neumann operator
    res = cg(op, bad, rtol=1e-10, max_it=400)
    assert not res.converged


def test_wrong_grid_rhs(ctx):
    op, b = build("2d-dirichlet")
    other = torch.zeros(1, 1, 20, 24, dtype=torch.float64)
    with pytest.raises(ValueError, match="grid"):
        cg(op, other)
    grid = ProcessGrid(ctx, (20, 24))
    with pytest.raises(ValueError, match="grid"):
        cg(op, GridTensor.from_global(other, grid))


def test_no_unknowns_is_refused():
    grid = StructuredGrid((6, 6))
    with pytest.raises(ValueError, match="no unknowns"):
        laplacian(grid, mask=torch.ones(6, 6, dtype=torch.uint8))


@pytest.mark.parametrize("case", ["3d-dirichlet", "3d-sphere", "2d-smoke"])
def test_iterations_equal_petsc_on_mesh_operator(ctx, case):
    PETSc = pytest.importorskip("petsc4py.PETSc", reason="petsc4py is not installed (pip install deepkrylov[petsc])")
    from deepkrylov.solvers import petsc as P

    if ctx.comm.name == "torch":
        pytest.skip("PETSc runs on the MPI engine")
    op, b = build(case)
    grid = ProcessGrid(ctx, op.grid.shape)
    bt = GridTensor.from_global(b, grid)
    for pc in ("none", "jacobi"):
        base = P.petsc_solve(op, bt, pc_type=pc, rtol=1e-8)  # assembled from op.to_scipy() in DMDA order
        ours = cg(op, bt, M=Jacobi(op) if pc == "jacobi" else None, rtol=1e-8)
        assert base.reason == ours.reason == ConvergedReason.CONVERGED_RTOL
        assert abs(base.iterations - ours.iterations) <= 1, (pc, base.iterations, ours.iterations)


def test_petsc_null_space_on_fluid_cells(ctx):
    """Pure Neumann with an obstacle: the null space is the constant on fluid cells; PETSc gets it as a MatNullSpace
    and solves an inconsistent right-hand side in the least-squares sense, like our CG on the projected one."""
    pytest.importorskip("petsc4py.PETSc", reason="petsc4py is not installed (pip install deepkrylov[petsc])")
    from deepkrylov.solvers import petsc as P

    if ctx.comm.name == "torch":
        pytest.skip("PETSc runs on the MPI engine")
    shape = (14, 14)
    grid0 = StructuredGrid(shape)
    op = laplacian(grid0, BoundaryConditions.uniform(2, "neumann"), mask_from_shapes(grid0, [Sphere((0.5, 0.5), 0.2)]))
    assert op.singular
    b = torch.from_numpy(np.random.default_rng(9).standard_normal(shape)).reshape(1, 1, *shape) * op.fluid
    grid = ProcessGrid(ctx, shape)
    bt = GridTensor.from_global(b, grid)
    base = P.petsc_solve(op, bt, pc_type="jacobi", rtol=1e-10, null_space=op.null_space())
    ours = cg(op, op.project(bt), M=Jacobi(op), rtol=1e-10)
    assert base.converged and ours.converged
    xb = _fix(op, base.x.gather().numpy().ravel())
    xo = _fix(op, ours.x.gather().numpy().ravel())
    assert np.linalg.norm(xb - xo) / np.linalg.norm(xo) < 1e-7
