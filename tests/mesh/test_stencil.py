"""Stencil operators: matrix-free == CSR, analytic convergence, SciPy solves, masks, null space, distributed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, SelfComm, as_grid_tensor
from deepkrylov.mesh import (
    EMPTY, FLUID, SOLID, BoundaryConditions, Box, DiffusionOperator, Sphere, StructuredGrid, laplacian,
    mask_from_shapes, mask_from_voxels, smoke_scene,
)

BCS = ["dirichlet", "neumann", "periodic", ("dirichlet", "neumann")]
SHAPES = [(13,), (9, 7), (6, 5, 7)]


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _operator(shape, bc, masked, variable):
    grid = StructuredGrid(shape, extent=[0.5 + 0.25 * a for a in range(len(shape))])
    mask = None
    if masked:
        mask = torch.full(shape, FLUID, dtype=torch.uint8)
        r = _rand(shape, 7)
        mask[r > 0.85] = SOLID
        mask[r < 0.1] = EMPTY
    k = 0.5 + _rand(shape, 8) if variable else None
    return DiffusionOperator(grid, BoundaryConditions.uniform(len(shape), bc) if isinstance(bc, str)
                             else BoundaryConditions([bc] * len(shape)), k, mask)


@pytest.mark.parametrize("variable", [False, True], ids=["laplacian", "variable-k"])
@pytest.mark.parametrize("masked", [False, True], ids=["open", "masked"])
@pytest.mark.parametrize("bc", BCS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matrix_free_equals_csr_and_is_symmetric(shape, bc, masked, variable):
    A = _operator(shape, bc, masked, variable)
    x = torch.randn((2, 1) + shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    csr = A.to_scipy()
    ref = (csr @ x.reshape(2, -1).numpy().T).T.reshape(x.shape)
    np.testing.assert_allclose(A.apply(x).numpy(), ref, rtol=1e-12, atol=1e-12)  # compiled pass where available
    np.testing.assert_allclose(A.apply(x.clone().requires_grad_()).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    assert abs(csr - csr.T).max() < 1e-12
    np.testing.assert_allclose(A.diagonal().numpy().ravel(), csr.diagonal(), rtol=0, atol=0)


@pytest.mark.parametrize("grad", [False, True], ids=["compiled", "autograd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(9, 7), (6, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_some_axes_periodic(shape, dtype, grad):
    """Periodic along the first axis only: the other axes must not wrap (uniform and variable coefficients)."""
    faces = [("periodic", "periodic")] + [("dirichlet", "neumann")] * (len(shape) - 1)
    for k in (None, 0.5 + _rand(shape, 3)):
        A = DiffusionOperator(StructuredGrid(shape), BoundaryConditions(faces), k, dtype=dtype)
        x = torch.randn((3,) + shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        ref = (A.to_scipy() @ x.double().reshape(3, -1).numpy().T).T.reshape(x.shape)
        y = A.apply(x.clone().requires_grad_(grad)).detach()
        assert y.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(y.double().numpy(), ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("masked", [False, True], ids=["open", "masked"])
@pytest.mark.parametrize("variable", [False, True], ids=["laplacian", "variable-k"])
@pytest.mark.parametrize("bc", BCS, ids=str)
@pytest.mark.parametrize("shape", [(37,), (37, 29), (11, 9, 7)], ids=lambda s: "x".join(map(str, s)))
def test_distributed_apply_equals_serial(ctx, shape, bc, variable, masked):
    A = _operator(shape, bc, masked=masked, variable=variable)
    x = torch.randn((2, 1) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gt = GridTensor.from_global(x, ProcessGrid(ctx, shape))
    torch.testing.assert_close(A.apply(gt).gather(), A.apply(x), rtol=1e-13, atol=1e-13)
    eager = A.apply(GridTensor.from_global(x, gt.grid).requires_grad_()).gather().detach()  # halo + slices path
    torch.testing.assert_close(eager, A.apply(x), rtol=1e-13, atol=1e-13)
    if A.singular:
        p = A.project(gt).gather()
        torch.testing.assert_close(p, A.project(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["uniform", "compact", "general", "periodic"])
def test_plain_tensor_equals_its_one_rank_grid_tensor(case):
    """A plain tensor in any accepted layout and its one-rank GridTensor view give the same bits through apply,
    apply_into and project, each result in the kind and shape it came in; the constructions of diagonal and null
    space give plain tensors for an operator built whole."""
    shape = (6, 5, 7)
    bc = {"periodic": "periodic", "compact": "neumann"}.get(case, "dirichlet")
    A = _operator(shape, bc, masked=case == "compact", variable=case == "general")
    assert A.form == ("uniform" if case == "periodic" else case)
    for lead in [(), (3,), (3, 2)]:
        x = torch.randn(lead + shape, generator=torch.Generator().manual_seed(len(lead)), dtype=torch.float64)
        g, _ = as_grid_tensor(x, shape)
        assert g.grid.size == 1 and g.local.shape[2:] == shape
        y, yg = A.apply(x), A.apply(g)
        assert type(y) is torch.Tensor and y.shape == x.shape and isinstance(yg, GridTensor)
        assert torch.equal(yg.local.reshape(x.shape), y)
        ref = (A.to_scipy() @ x.reshape(-1, A.grid.size).numpy().T).T.reshape(x.shape)
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)
        out, outg = torch.full_like(x, float("nan")), g.zeros_like()
        assert A.apply_into(x, out) is out and A.apply_into(g, outg) is outg
        assert torch.equal(out, y) and torch.equal(outg.local.reshape(x.shape), y)
        if A.singular:
            p, pg = A.project(x), A.project(g)
            assert type(p) is torch.Tensor and p.shape == x.shape
            assert torch.equal(pg.local.reshape(x.shape), p)
    assert type(A.diagonal()) is torch.Tensor and A.diagonal().shape == shape
    if A.singular:
        v = A.null_space()
        assert type(v) is torch.Tensor and v.shape == shape and abs(float(v.norm()) - 1.0) < 1e-14


def _manufactured(n, dim):
    """-Laplace u = f on the unit box, u = prod sin(pi x_i) (zero on the boundary)."""
    grid = StructuredGrid((n,) * dim)
    X = grid.meshgrid()
    u = torch.ones(grid.shape, dtype=torch.float64)
    for x in X:
        u = u * torch.sin(math.pi * x)
    return grid, u, dim * math.pi**2 * u


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_dirichlet_poisson_converges_at_second_order(dim):
    errors = []
    for n in ((12, 24) if dim == 3 else (32, 64)):  # 3D: order 1.98 here, 7x cheaper than (16, 32)
        grid, u, f = _manufactured(n, dim)
        A = laplacian(grid)
        x = spla.spsolve(A.to_scipy().tocsc(), f.numpy().ravel())
        errors.append(np.abs(x - u.numpy().ravel()).max())
    order = math.log2(errors[0] / errors[1])
    assert 1.8 < order < 2.3, errors


def test_apply_approximates_analytic_second_derivative_on_periodic_grid():
    grid = StructuredGrid((64, 48), extent=(1.0, 1.0))
    y, x = grid.meshgrid()
    u = torch.sin(2 * math.pi * x) * torch.cos(4 * math.pi * y)
    A = laplacian(grid, BoundaryConditions.uniform(2, "periodic"))
    lap = A.apply(u[None, None])[0, 0]
    exact = (4 * math.pi**2 + 16 * math.pi**2) * u
    assert (lap - exact).abs().max() / exact.abs().max() < 0.01


def test_neumann_null_space_and_projection():
    A = laplacian(StructuredGrid((8, 8)), BoundaryConditions.uniform(2, "neumann"))
    assert A.singular and A.is_positive_definite is None
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    assert A.apply(ones).abs().max() < 1e-12
    b = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(A.project(b).sum())) < 1e-12
    assert laplacian(StructuredGrid((8, 8))).null_space() is None


def test_masks_from_shapes_and_voxels(tmp_path):
    grid = StructuredGrid((10, 10))
    mask = mask_from_shapes(grid, [Sphere((0.5, 0.5), 0.2), Box((0.0, 0.0), (0.1, 1.0), "empty")])
    assert mask[5, 5] == SOLID and mask[0, 3] == EMPTY and mask[9, 9] == FLUID
    path = tmp_path / "scene.npy"
    np.save(path, mask.numpy())
    assert torch.equal(mask_from_voxels(path, grid), mask)
    A = laplacian(grid, BoundaryConditions.uniform(2, "neumann"), mask)
    # an inactive cell is an identity row, a fluid cell next to a solid one has no coupling to it
    e = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    e[0, 0, 5, 5] = 1.0
    assert torch.equal(A.apply(e), e)
    scene = smoke_scene(16)
    assert scene.shape == (16, 16, 16) and (scene == EMPTY).any() and (scene == SOLID).any()
    assert not laplacian(StructuredGrid((16,) * 3), BoundaryConditions.uniform(3, "neumann"), scene).singular


def test_bad_input():
    grid = StructuredGrid((4, 4))
    with pytest.raises(ValueError, match="no unknowns"):
        laplacian(grid, mask=torch.full((4, 4), SOLID, dtype=torch.uint8))
    with pytest.raises(ValueError, match="voxel values must be"):
        mask_from_voxels(np.full((4, 4), 7), grid)
    with pytest.raises(ValueError, match="voxel array has shape"):
        mask_from_voxels(np.zeros((4, 5)), grid)
    with pytest.raises(ValueError, match="periodic must be set on both faces"):
        BoundaryConditions([("periodic", "dirichlet"), "neumann"])
    with pytest.raises(ValueError, match="boundary kind must be one of"):
        BoundaryConditions.uniform(2, "robin")
    with pytest.raises(ValueError, match="positive"):
        DiffusionOperator(grid, coefficient=-torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"field of shape \(1, 1, 5, 4\) must be \(4, 4\), \(batch, "):
        laplacian(grid).apply(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"field of shape \(2, 1, 1, 4, 4\) must be"):  # at most batch and channels
        laplacian(grid).apply_into(torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="lives on a grid of shape"):
        laplacian(grid).apply(GridTensor.zeros(ProcessGrid(SelfComm(), (4, 5)), dtype=torch.float64))


def test_compiled_stencil_is_built_where_a_compiler_exists():
    """The fast path must not silently fall back to the eager one on a machine that can build it."""
    import os
    import shutil

    from deepkrylov.mesh import _kernels

    if os.environ.get("DEEPKRYLOV_KERNELS") == "0" or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("compiled kernels disabled or no C compiler")
    assert _kernels.stencil_library() is not None
    A = laplacian(StructuredGrid((8, 6, 5)), BoundaryConditions.uniform(3, "neumann"))
    x = torch.randn(2, 1, 8, 6, 5, dtype=torch.float64)
    out = torch.empty_like(x)
    assert A.apply_into(x, out) is out
    torch.testing.assert_close(out, A.apply(x.clone().requires_grad_()).detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("variable", [False, True], ids=["laplacian", "variable-k"])
def test_compiled_stencil_with_streaming_stores(monkeypatch, variable, dtype):
    """Outputs larger than the last-level cache take the non-temporal-store path; pretend the cache is empty to
    exercise it on a small, unaligned grid (rows of 37 cells) and compare with the autograd path."""
    import os
    import shutil

    from deepkrylov.mesh import _kernels

    if os.environ.get("DEEPKRYLOV_KERNELS") == "0" or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("compiled kernels disabled or no C compiler")
    monkeypatch.setattr(_kernels, "_llc_bytes", lambda: 0)
    shape = (6, 5, 37)
    A = DiffusionOperator(StructuredGrid(shape), BoundaryConditions.uniform(3, "dirichlet"),
                          0.5 + _rand(shape, 4) if variable else None, dtype=dtype)
    x = torch.randn((2, 1) + shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    out = torch.full_like(x, float("nan"))
    A.apply_into(x, out)
    ref = A.apply(x.clone().requires_grad_()).detach()
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * float(ref.abs().max()))


def _three_kinds(shape, seed):
    mask = torch.full(shape, FLUID, dtype=torch.uint8)
    r = _rand(shape, seed)
    mask[r > 0.8] = SOLID
    mask[r < 0.15] = EMPTY
    return mask


COMPACT_CASES = {  # long x rows: the vector body (8 or 16 lanes), its remainder and the row ends all run
    2: ((9, 53), [("periodic", "periodic"), ("dirichlet", "neumann")]),
    3: ((5, 6, 45), [("dirichlet", "neumann"), ("periodic", "periodic"), ("neumann", "dirichlet")]),
}


def test_form_selection():
    grid = StructuredGrid((6, 5, 7))
    mixed = BoundaryConditions([("periodic", "periodic"), "dirichlet", "neumann"])
    assert laplacian(grid).form == "uniform"
    assert laplacian(grid, mask=_three_kinds(grid.shape, 1)).form == "compact"
    assert DiffusionOperator(grid, mixed, 2.5).form == "compact"  # one axis periodic: not the uniform pass
    assert DiffusionOperator(grid, coefficient=0.5 + _rand(grid.shape, 2)).form == "general"


@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "unscaled"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("dim", [2, 3])
def test_compact_form_equals_csr(monkeypatch, dim, dtype, scaled):
    """Constant k, a mask with fluid, solid and empty cells, Dirichlet, Neumann and periodic faces: the compact pass
    is the one taken, equals the CSR matrix, gives the same bits as the general pass on the same operator, and is the
    identity on non-fluid cells; batch 3, into a fresh result and into a buffer with streaming stores."""
    from deepkrylov.mesh import _kernels

    shape, faces = COMPACT_CASES[dim]
    grid = StructuredGrid(shape, extent=[0.7 + 0.3 * a for a in range(dim)])
    mask = _three_kinds(shape, 11)
    A = DiffusionOperator(grid, BoundaryConditions(faces), 1.7, mask, scaled=scaled, dtype=dtype)
    assert A.form == "compact"
    x = torch.randn((3, 1) + shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    ref = (A.to_scipy() @ x.double().reshape(3, -1).numpy().T).T.reshape(x.shape)
    y = A.apply(x)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=0, atol=tol * np.abs(ref).max())
    eager = A.apply(x.clone().requires_grad_()).detach()
    torch.testing.assert_close(y, eager, rtol=tol, atol=tol * float(eager.abs().max()))
    solid = (mask != FLUID).expand_as(x)
    assert torch.equal(y[solid], x[solid])
    if _kernels.stencil_library() is not None:
        monkeypatch.setattr(A, "form", "general")  # the seven-array pass on the same numbers
        assert torch.equal(A.apply(x), y)
        monkeypatch.setattr(A, "form", "compact")
        monkeypatch.setattr(_kernels, "_llc_bytes", lambda: 0)  # non-temporal stores
        out = torch.full_like(x, float("nan"))
        A.apply_into(x, out)
        assert torch.equal(out, y)


@pytest.mark.parametrize("dim", [2, 3])
def test_compact_form_distributed_equals_serial(ctx, dim):
    """Blocks with received faces (and a periodic axis wrapped by the ranks), batch 2: the same bits as serial."""
    shape, faces = COMPACT_CASES[dim]
    A = DiffusionOperator(StructuredGrid(shape), BoundaryConditions(faces), None, _three_kinds(shape, 12))
    assert A.form == "compact"
    x = torch.randn((2, 1) + shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    gt = GridTensor.from_global(x, ProcessGrid(ctx, shape))
    torch.testing.assert_close(A.apply(gt).gather(), A.apply(x), rtol=0, atol=0)
    out = gt.clone()
    A.apply_into(gt, out)
    torch.testing.assert_close(out.gather(), A.apply(x), rtol=0, atol=0)
