"""ProcessGrid's default process dims and ownership ranges equal a real PETSc DMDA's (run on 1, 2, 4 ranks)."""

from __future__ import annotations

import pytest

from deepkrylov.distributed import ProcessGrid

PETSc = pytest.importorskip("petsc4py.PETSc", reason="petsc4py is not installed (run scripts/setup.sh)")

SHAPES = [(37,), (37, 29), (29, 37), (8, 64), (11, 9, 7), (7, 9, 11), (5, 40, 6), (16, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_default_dims_and_ranges_match_dmda(ctx, shape):
    if ctx.comm.name == "torch":
        pytest.skip("compared under the MPI engine")
    da = PETSc.DMDA().create(dim=len(shape), sizes=tuple(reversed(shape)), comm=PETSc.COMM_WORLD)
    grid = ProcessGrid(ctx, shape)
    assert grid.dims == tuple(reversed(da.getProcSizes()))
    assert grid.local_slices == tuple(slice(a, b) for a, b in reversed(da.getRanges()))
    assert PETSc.COMM_WORLD.getRank() == grid.rank
    da.destroy()


@pytest.mark.parametrize("dims", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4)])
def test_given_dims_ranges_match_dmda(ctx, dims):
    if ctx.comm.name == "torch" or dims[0] * dims[1] != ctx.size:
        pytest.skip("dims do not fit this rank count")
    shape = (37, 29)
    da = PETSc.DMDA().create(dim=2, sizes=(29, 37), proc_sizes=tuple(reversed(dims)), comm=PETSc.COMM_WORLD)
    grid = ProcessGrid(ctx, shape, dims=dims)
    assert grid.local_slices == tuple(slice(a, b) for a, b in reversed(da.getRanges()))
    da.destroy()
