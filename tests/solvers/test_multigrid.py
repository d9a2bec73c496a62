"""Geometric multigrid: symmetry and positivity of the V-cycle, grid-independent error reduction, the transfers'
adjoint, PCG on obstacle scenes, bad input; on several ranks (test_mpi.py runs this file on 2 and 4) the cycle and
the PCG iterations equal the serial ones."""

from __future__ import annotations

import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, serial_grid
from deepkrylov.mesh import BoundaryConditions, Box, DiffusionOperator, StructuredGrid, laplacian, mask_from_shapes
from deepkrylov.solvers import cg
from deepkrylov.solvers.learned_multigrid import LearnedMultigrid
from deepkrylov.solvers.multigrid import Multigrid, coarsen_mask
from deepkrylov.solvers.problems import scene_problem


def _rand(shape, seed, fluid=None):
    x = torch.randn((1, 1) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x * fluid if fluid is not None else x


def _mixed_operator(n: int, dim: int = 3) -> DiffusionOperator:
    """Variable coefficient, obstacles with all three cell kinds, Dirichlet/Neumann/periodic faces."""
    grid = StructuredGrid((n,) * dim)
    mask = mask_from_shapes(grid, [Box((0.3,) * dim, (0.55,) * dim, "solid"),
                                   Box((0.0,) * dim, (1.0 / n,) + (1.0,) * (dim - 1), "empty")])
    k = 1.0 + 0.5 * torch.rand(grid.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    faces = [("dirichlet", "neumann"), "periodic", "neumann"][:dim]
    return DiffusionOperator(grid, BoundaryConditions(faces), k, mask)


@pytest.mark.parametrize("smoother", ["chebyshev", "jacobi"])
@pytest.mark.parametrize("which", ["smoke", "mixed2d", "mixed3d"])
def test_vcycle_is_symmetric_and_positive(which, smoother):
    A = {"smoke": lambda: scene_problem(16, 3, "smoke")[0], "mixed2d": lambda: _mixed_operator(32, 2),
         "mixed3d": lambda: _mixed_operator(16, 3)}[which]()
    M = Multigrid(A, smoother=smoother)
    assert len(M.shapes) >= 3
    fluid = A.fluid.to(torch.float64)
    for seed in range(3):
        u, v = _rand(A.grid.shape, seed, fluid), _rand(A.grid.shape, seed + 10, fluid)
        uMv, vMu = float((u * M.apply(v)).sum()), float((v * M.apply(u)).sum())
        assert abs(uMv - vMu) <= 1e-12 * abs(uMv) + 1e-13
        assert float((u * M.apply(u)).sum()) > 0


def test_transfers_are_adjoint():
    A = _mixed_operator(16, 3)
    M = Multigrid(A)
    T = M._transfers[0]
    f = _rand(A.grid.shape, 0)
    c = _rand(M.shapes[1], 1)
    lhs, rhs = float((T.prolong(c) * f).sum()), float((c * T.restrict(f)).sum())
    assert abs(lhs - rhs) <= 1e-13 * abs(lhs)
    # constants survive the prolongation next to solid cells and Neumann faces (only EMPTY/Dirichlet pull down)
    smoke, _ = scene_problem(16, 3, "smoke")
    Ms = Multigrid(smoke)
    ones = Ms._levels[1].A.fluid.to(torch.float64)[None, None]
    fine = Ms._transfers[0].prolong(ones)[0, 0]
    interior = smoke.fluid.clone()
    interior[-3:] = False  # cells near the open top feel the zero pressure of the air
    assert torch.allclose(fine[interior], torch.ones(()).double())


@pytest.mark.parametrize("field", ["smooth", "rough"])
def test_vcycle_error_reduction_is_grid_independent(field):
    """One V-cycle as a stationary iteration, e <- (I - M A) e, from a smooth and from a rough error: the
    reduction in the A-norm stays below 0.3 and varies by less than 0.05 from 16^3 to 64^3."""
    factors = []
    for n in (16, 32, 64):
        A = laplacian(StructuredGrid((n,) * 3), scaled=False)
        M = Multigrid(A)
        if field == "smooth":
            z = torch.linspace(0, 1, n, dtype=torch.float64)
            e = (torch.sin(torch.pi * z)[:, None, None] * torch.sin(2 * torch.pi * z)[None, :, None]
                 * torch.sin(torch.pi * z)[None, None, :])[None, None]
        else:
            e = _rand(A.grid.shape, 0)
        Ae = A.apply(e)
        e2 = e - M.apply(Ae)
        factors.append(float(((e2 * A.apply(e2)).sum() / (e * Ae).sum()).sqrt()))
    assert max(factors) < 0.3, factors
    assert max(factors) - min(factors) < 0.05, factors


@pytest.mark.parametrize("n", [32, 64])
def test_mg_pcg_on_smoke_scene(n):
    A, b = scene_problem(n, 3, "smoke")
    res = cg(A, b, M=Multigrid(A), rtol=1e-6, max_it=50)
    assert res.converged and res.iterations <= 13, res.iterations
    assert float((b - A.apply(res.x)).norm()) <= 1.01e-6 * float(b.norm())
    plain = cg(A, b, rtol=1e-6, max_it=500)
    assert plain.iterations > 5 * res.iterations


def test_singular_problem_with_null_space():
    grid = StructuredGrid((32, 32))
    A = laplacian(grid, BoundaryConditions.uniform(2, "neumann"))
    with pytest.raises(ValueError, match="singular.*null_space=True"):
        Multigrid(A)
    b = A.project(_rand(grid.shape, 0))
    res = cg(A, b, M=Multigrid(A, null_space=True), rtol=1e-8, max_it=40)
    assert res.converged and res.iterations <= 15


def test_bad_input():
    grid = StructuredGrid((16, 16, 16))
    with pytest.raises(ValueError, match="no cell is FLUID"):
        DiffusionOperator(grid, mask=torch.ones(grid.shape, dtype=torch.uint8))
    A = laplacian(grid)
    with pytest.raises(ValueError, match="at most 3 multigrid levels.*levels=5"):
        Multigrid(A, levels=5)
    with pytest.raises(ValueError, match="smoother must be one of"):
        Multigrid(A, smoother="sor")
    with pytest.raises(TypeError, match="DiffusionOperator"):
        Multigrid(object())
    with pytest.raises(ValueError, match="every axis must be even"):
        coarsen_mask(torch.zeros(5, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not end with the grid's shape"):
        Multigrid(A).apply(torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("cls", [Multigrid, LearnedMultigrid])
def test_plain_tensor_equals_its_one_rank_grid_tensor(cls):
    """The entry points lift a plain tensor to its one-rank GridTensor: the same bits, in the caller's kind and
    shape, for a field, a batch and apply_into."""
    A, _ = scene_problem(16, 3, "smoke")
    M = cls(A)
    r = _rand(A.grid.shape, 3, A.fluid.to(torch.float64))
    z = M.apply(r)
    g = M.apply(GridTensor(r.clone(), serial_grid(A.grid.shape)))
    assert isinstance(g, GridTensor) and isinstance(z, torch.Tensor) and torch.equal(g.local, z)
    assert torch.equal(M.apply(r[0, 0]), z[0, 0])
    out = torch.empty(A.grid.shape, dtype=torch.float64)
    M.apply_into(r[0, 0], out)
    assert torch.equal(out, z[0, 0])
    batch = torch.cat((r, -2 * r))[:, 0]  # (2, *shape)
    zb = M.apply(batch)
    assert zb.shape == batch.shape
    torch.testing.assert_close(zb, torch.cat((z, -2 * z))[:, 0], rtol=0, atol=1e-13 * float(z.abs().max()))


@pytest.mark.parametrize("n", [16, 32])
def test_ranks_equal_serial(ctx, n):
    """The cycle on GridTensor blocks equals the serial one, and PCG takes the same iterations (any rank count)."""
    A, b = scene_problem(n, 3, "smoke")
    M = Multigrid(A)
    grid = ProcessGrid(ctx, A.grid.shape)
    r = _rand(A.grid.shape, 5, A.fluid.to(torch.float64))
    z = M.apply(GridTensor.from_global(r, grid)).gather()
    z0 = Multigrid(A).apply(r)
    torch.testing.assert_close(z, z0, rtol=0, atol=1e-10 * float(z0.abs().max()))
    serial = cg(A, b, M=Multigrid(A), rtol=1e-8, max_it=50)
    dist = cg(A, GridTensor.from_global(b, grid), M=M, rtol=1e-8, max_it=50)
    assert dist.iterations == serial.iterations
    torch.testing.assert_close(dist.x.gather(), serial.x, rtol=0, atol=1e-10)
