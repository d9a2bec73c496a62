"""Local construction (issue #16): operators, masks, files, scenes and multigrid built on each rank's block equal the
whole-grid ones (bits where the compiled form promises them, else 1e-12), and hold no array of the whole grid.

Runs serially and, through tests/mesh/test_launch.py, on 2 and 4 ranks with both engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import (
    EMPTY, FLUID, SOLID, BoundaryConditions, Box, DiffusionOperator, Sphere, StructuredGrid, mask_from_shapes,
    mask_from_voxels, read_field, smoke_scene,
)
from deepkrylov.solvers import cg
from deepkrylov.solvers.learned_multigrid import LearnedMultigrid, StencilNet
from deepkrylov.solvers.multigrid import Multigrid
from deepkrylov.solvers.problems import random_scene, scene_problem, smooth_field

BCS = {"dirichlet": "dirichlet", "neumann": "neumann", "periodic": "periodic",
       "mixed": [("periodic", "periodic"), ("dirichlet", "neumann"), ("neumann", "dirichlet")]}


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _bc(name, nd):
    kind = BCS[name]
    return BoundaryConditions.uniform(nd, kind) if isinstance(kind, str) else BoundaryConditions(kind[:nd])


def _mask(shape):
    mask = torch.full(shape, FLUID, dtype=torch.uint8)
    r = _rand(shape, 7)
    mask[r > 0.85] = SOLID
    mask[r < 0.1] = EMPTY
    return mask


def _block(t, P):
    return t[P.local_slices]


def _assert_block_arrays(A, P):
    """Every tensor the operator keeps (attributes and caches) is at most the block: no whole-grid array."""
    block = int(np.prod(P.local_shape))
    found = [v for v in A.__dict__.values() if isinstance(v, torch.Tensor)]
    for v in A.__dict__.values():
        if isinstance(v, (list, tuple)):
            found += [t for x in v for t in (x if isinstance(x, tuple) else (x,)) if isinstance(t, torch.Tensor)]
    def tensors(v):  # every tensor in a cached value: the per-grid set-ups, their tuples, lists and dicts
        if isinstance(v, torch.Tensor):
            return [v]
        if isinstance(v, dict):
            v = list(v.values())
        elif hasattr(v, "__slots__"):
            v = [getattr(v, name) for name in v.__slots__]
        return [t for x in v for t in tensors(x)] if isinstance(v, (tuple, list)) else []

    for v in A._local.values():
        found += tensors(v)
    assert found
    for t in found:
        assert t.numel() <= block, (tuple(t.shape), P.local_shape)
        if t.numel() == block:
            assert tuple(t.shape) in (P.local_shape, (1, 1) + P.local_shape) or t.dim() == 3


# every boundary kind and compiled form in 3D, and each input form of the coefficient and mask; fewer in 1D/2D
CASES = ([((9, 10, 7), bc, masked, coef) for bc in BCS for masked, coef in
          ((False, "one"), (True, "constant-array"), (True, "variable"), (False, "gridtensor"))]
         + [((9, 10, 7), "mixed", True, "function"), ((9, 10, 7), "neumann", True, "gridtensor")]
         + [((11, 9), bc, masked, coef) for bc, masked, coef in
            (("periodic", False, "one"), ("mixed", True, "variable"), ("dirichlet", True, "function"))]
         + [((37,), bc, True, coef) for bc, coef in (("dirichlet", "gridtensor"), ("periodic", "constant-array"))])


@pytest.mark.parametrize("shape,bc,masked,coef", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v))
def test_operator_on_blocks_equals_whole(ctx, shape, bc, masked, coef):
    grid = StructuredGrid(shape, extent=[0.5 + 0.25 * a for a in range(len(shape))])
    B = _bc(bc, len(shape))
    P = ProcessGrid(ctx, shape)
    k_whole = {"one": None, "constant-array": torch.full(shape, 1.7, dtype=torch.float64)}.get(coef,
                                                                                            0.5 + _rand(shape, 8))
    k_local = {"gridtensor": GridTensor(_block(k_whole, P)[None, None].clone(), P) if k_whole is not None else None,
               "function": lambda X: 0.5 + _rand(shape, 8)[P.local_slices] + 0 * X[0]}.get(coef, k_whole)
    mask = _mask(shape) if masked else None
    mask_local = GridTensor(_block(mask, P)[None, None].clone(), P) if masked else None
    A = DiffusionOperator(grid, B, k_whole, mask)
    L = DiffusionOperator(grid, B, k_local, mask_local, partition=P)
    assert (L.form, L.singular) == (A.form, A.singular)
    uniform = not masked and (bc != "mixed" or len(shape) == 1)  # 1D "mixed" is periodic only
    expected = ("uniform" if uniform else "compact") if coef in ("one", "constant-array") else "general"
    assert L.form == expected
    _assert_block_arrays(L, P)
    assert L.block_shape == P.local_shape and L.mask.shape == P.local_shape
    # the diagonal, the rows and the assembled matrix: the same bits
    d = L.diagonal()
    assert isinstance(d, GridTensor) and torch.equal(d.local[0, 0], _block(A.diagonal(), P))
    diag, weights = L.local_stencil()
    wdiag, wweights = A.local_stencil(P)
    assert torch.equal(diag, wdiag) and diag.dtype == torch.float64 and diag.shape == P.local_shape
    for (lo, hi), (wlo, whi) in zip(weights, wweights):
        assert torch.equal(lo, wlo) and torch.equal(hi, whi)
    whole = A.to_scipy()
    rows = L.to_scipy_local()
    index = np.arange(grid.size).reshape(shape)[P.local_slices].ravel()
    assert abs(rows - whole[index]).max() == 0
    assert abs(L.to_scipy() - whole).max() == 0
    # apply: the compiled pass and the differentiable (halo + slices) one, each equal to the whole operator's
    x = torch.randn((2, 1) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(L.apply(GridTensor.from_global(x, P)).gather(), A.apply(x))
    y = L.apply(GridTensor.from_global(x, P).requires_grad_()).gather().detach()
    assert torch.equal(y, A.apply(x.clone().requires_grad_()).detach())
    out = GridTensor.zeros(P, 2, dtype=torch.float64)
    torch.testing.assert_close(L.apply_into(GridTensor.from_global(x, P), out).gather(), A.apply(x), rtol=0, atol=0)
    if A.singular:
        torch.testing.assert_close(L.project(GridTensor.from_global(x, P)).gather(), A.project(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(L.null_space().gather()[0, 0], A.null_space(), rtol=0, atol=1e-12)


def test_float32_operator_on_blocks(ctx):
    shape = (9, 10, 7)
    P = ProcessGrid(ctx, shape)
    grid, B, k = StructuredGrid(shape), _bc("mixed", 3), 0.5 + _rand(shape, 3)
    A = DiffusionOperator(grid, B, k, _mask(shape), dtype=torch.float32)
    L = DiffusionOperator(grid, B, k, _mask(shape), dtype=torch.float32, partition=P)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    assert torch.equal(L.apply(GridTensor.from_global(x, P)).gather(), A.apply(x))
    assert L.diagonal().dtype == torch.float32 and L.local_stencil()[0].dtype == torch.float64


def _shared_dir(ctx, tmp_path_factory):
    """One directory every rank sees (the ranks share this machine's /tmp)."""
    path = str(tmp_path_factory.mktemp("local")) if ctx.rank == 0 else None
    return ctx.comm.bcast_object(path)


def test_masks_and_files_on_blocks(ctx, tmp_path_factory):
    import h5py

    shape = (12, 10, 9)
    grid = StructuredGrid(shape, extent=(1.2, 1.0, 0.9))
    P = ProcessGrid(ctx, shape)
    shapes = [Sphere((0.6, 0.5, 0.45), 0.3, "solid"), Box((0.0, 0.0, 0.0), (0.1, 1.0, 0.9), "empty"),
              Box((0.5, 0.2, 0.3), (0.9, 0.4, 0.8), "fluid")]
    whole = mask_from_shapes(grid, shapes, default="solid")
    local = mask_from_shapes(grid, shapes, default="solid", partition=P)
    assert isinstance(local, GridTensor) and torch.equal(local.local[0, 0], _block(whole, P))
    assert torch.equal(smoke_scene(16, partition=ProcessGrid(ctx, (16,) * 3)).gather()[0, 0], smoke_scene(16))
    assert torch.equal(smoke_scene(16, 2, partition=ProcessGrid(ctx, (16, 16))).gather()[0, 0], smoke_scene(16, 2))
    # files: a .npy read through a memory map and an HDF5 hyperslab, block by block
    root = _shared_dir(ctx, tmp_path_factory)
    k = 0.5 + _rand(shape, 4)
    if ctx.rank == 0:
        np.save(f"{root}/mask.npy", whole.numpy())
        np.save(f"{root}/k.npy", k.numpy())
        with h5py.File(f"{root}/fields.h5", "w") as f:
            f["scene/mask"] = whole.numpy()
            f["k"] = k.numpy()
        with h5py.File(f"{root}/one.h5", "w") as f:
            f["k"] = k.numpy()
    ctx.comm.barrier()
    for src, kw in ((f"{root}/mask.npy", {}), (f"{root}/fields.h5", {"dataset": "scene/mask"})):
        m = mask_from_voxels(src, grid, partition=P, **kw)
        assert torch.equal(m.local[0, 0], _block(whole, P)) and m.local.dtype == torch.uint8
        assert torch.equal(mask_from_voxels(src, grid, **kw), whole)
    for src, kw in ((f"{root}/k.npy", {}), (f"{root}/one.h5", {}), (f"{root}/fields.h5", {"dataset": "k"})):
        kb = read_field(src, grid, partition=P, **kw)
        assert torch.equal(kb.local[0, 0], _block(k, P))
    A = DiffusionOperator(grid, None, k, whole)
    L = DiffusionOperator(grid, None, read_field(f"{root}/k.npy", grid, partition=P),
                          mask_from_voxels(f"{root}/fields.h5", grid, partition=P, dataset="scene/mask"), partition=P)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(L.apply(GridTensor.from_global(x, P)).gather(), A.apply(x))
    with pytest.raises(ValueError, match="holds 2 datasets"):
        read_field(f"{root}/fields.h5", grid, partition=P)
    with pytest.raises(ValueError, match="holds an array of shape"):
        read_field(f"{root}/k.npy", StructuredGrid((12, 10, 8)))
    # a bad voxel in one rank's block: every rank raises the same error
    bad = whole.clone()
    bad[-1, -1, -1] = 7
    with pytest.raises(ValueError, match="voxel values must be"):
        mask_from_voxels(bad, grid, partition=P)


def test_scenes_on_blocks(ctx):
    n = 16
    P = ProcessGrid(ctx, (n,) * 3)
    A, b = scene_problem(n, 3, "smoke")
    L, bl = scene_problem(n, 3, "smoke", partition=P)
    assert torch.equal(L.mask, _block(A.mask, P)) and bl.local.shape[2:] == P.local_shape
    torch.testing.assert_close(bl.gather(), b, rtol=0, atol=1e-14)
    for seed in (0, 5):
        assert torch.equal(random_scene(n, 3, seed=seed, partition=P).gather()[0, 0], random_scene(n, 3, seed=seed))
    assert torch.equal(smooth_field(A.grid, seed=2, partition=P), _block(smooth_field(A.grid, seed=2), P))
    box, bb = scene_problem(n, 3, "box", partition=P)
    assert box.form == "uniform" and not box.singular
    res = cg(L, bl, rtol=0.0, atol=0.0, max_it=15)
    ref = cg(A, b, rtol=0.0, atol=0.0, max_it=15)
    np.testing.assert_allclose(res.residual_norms, ref.residual_norms, rtol=1e-10)
    torch.testing.assert_close(res.x.gather(), ref.x, rtol=0, atol=1e-12)


def _mixed(n, dim, P):
    """Variable coefficient, all three cell kinds, Dirichlet/Neumann/periodic faces; on P's blocks."""
    grid = StructuredGrid((n,) * dim)
    shapes = [Box((0.3,) * dim, (0.55,) * dim, "solid"), Box((0.0,) * dim, (1.0 / n,) + (1.0,) * (dim - 1), "empty")]
    faces = BoundaryConditions([("dirichlet", "neumann"), "periodic", "neumann"][:dim])
    mask = mask_from_shapes(grid, shapes, partition=P)
    k = (lambda X: 1.0 + 0.3 * torch.sin(6.0 * X[0]) * torch.cos(4.0 * X[-1]))
    return DiffusionOperator(grid, faces, k, mask, partition=P)


@pytest.mark.parametrize("which", ["smoke", "mixed2d", "mixed3d", "learned"])
def test_multigrid_on_blocks_equals_serial(ctx, which):
    make = {"smoke": lambda P: scene_problem(16, 3, "smoke", partition=P)[0], "mixed2d": lambda P: _mixed(32, 2, P),
            "mixed3d": lambda P: _mixed(16, 3, P), "learned": lambda P: scene_problem(16, 3, "smoke", partition=P)[0]}
    A = make[which](None)
    P = ProcessGrid(ctx, A.grid.shape)
    L = make[which](P)
    if which == "learned":
        net = StencilNet(3)
        with torch.no_grad():
            net.conv.weight.copy_(0.01 * torch.randn(net.conv.weight.shape, generator=torch.Generator().manual_seed(0),
                                                     dtype=torch.float64))
        serial, local = LearnedMultigrid(A, net), LearnedMultigrid(L, net)
    else:
        serial, local = Multigrid(A, smoother="jacobi"), Multigrid(L, smoother="jacobi")
    r = torch.randn((1, 1) + A.grid.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * A.fluid
    z0 = serial.apply(r)
    z = local.apply(GridTensor.from_global(r, P)).gather()
    torch.testing.assert_close(z, z0, rtol=0, atol=1e-12 * float(z0.abs().max()))
    # no level keeps an array of a grid larger than its own block while it is distributed
    for lev in local._levels:
        if lev.grid.size > 1:  # a level that runs whole is on a one-rank grid
            assert lev.A.partition is not None and lev.fluid.shape == lev.grid.local_shape == lev.A.block_shape
            assert lev.inv_diag.shape == lev.grid.local_shape
    if ctx.size > 1:
        assert local._levels[0].grid.size > 1 and local._levels[1].grid.size > 1
        _assert_block_arrays(L, P)
    if which == "smoke":
        b = scene_problem(16, 3, "smoke", partition=P)[1]
        dist = cg(L, b, M=local, rtol=1e-8, max_it=50)
        ref = cg(A, scene_problem(16, 3, "smoke")[1], M=serial, rtol=1e-8, max_it=50)
        assert dist.converged and dist.iterations == ref.iterations


def test_bad_input(ctx):
    shape = (8, 8)
    grid = StructuredGrid(shape)
    P = ProcessGrid(ctx, shape)
    with pytest.raises(ValueError, match="partition is over a grid of shape"):
        DiffusionOperator(grid, partition=ProcessGrid(ctx, (8, 10)))
    with pytest.raises(ValueError, match="function of the cell centres returned shape"):
        DiffusionOperator(grid, coefficient=lambda X: torch.ones(3), partition=P)
    k = torch.ones(shape, dtype=torch.float64)
    k[-1, -1] = -1.0  # on the last rank's block only: every rank raises
    with pytest.raises(ValueError, match="finite and positive"):
        DiffusionOperator(grid, coefficient=k, partition=P)
    solid = torch.full(shape, SOLID, dtype=torch.uint8)
    with pytest.raises(ValueError, match="no cell is FLUID"):
        DiffusionOperator(grid, mask=GridTensor(solid[P.local_slices][None, None].clone(), P), partition=P)
    L = DiffusionOperator(grid, partition=P)
    if ctx.size > 1:
        with pytest.raises(ValueError, match="apply it to a GridTensor"):
            L.apply(torch.zeros((1, 1) + shape, dtype=torch.float64))
        other = ProcessGrid(ctx, shape, dims=tuple(reversed(P.dims)))
        if other.dims != P.dims:
            with pytest.raises(ValueError, match="not the operator's partition"):
                L.apply(GridTensor.zeros(other, dtype=torch.float64))
    with pytest.raises(ValueError, match="must have batch and channels 1"):
        DiffusionOperator(grid, coefficient=GridTensor.zeros(P, 2, dtype=torch.float64) + 1.0, partition=P)
