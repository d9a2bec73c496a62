"""PETSc interop: zero-copy vectors, assembly in DMDA order, shell Mats, the KSP baseline and the python plugins,
checked against PETSc's own KSPCG and SciPy (runs serially or under mpiexec)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.solvers import ConvergedReason, Jacobi, MatrixOperator, cg, fcg

from .problems import laplacian, rhs, sphere_mask

PETSc = pytest.importorskip("petsc4py.PETSc", reason="petsc4py is not installed (pip install deepkrylov[petsc] or scripts/setup.sh)")
P = pytest.importorskip("deepkrylov.solvers.petsc")

pytestmark = pytest.mark.petsc


@pytest.fixture
def mpi_ctx(ctx):
    if ctx.comm.name == "torch":
        pytest.skip("PETSc runs on the MPI engine")
    return ctx


def _setup(ctx, shape, bc="dirichlet", obstacle=False):
    mask = sphere_mask(shape) if obstacle else None
    A = laplacian(shape, bc, mask)
    b = rhs(shape, seed=2, mask=mask, singular=bc != "dirichlet" and mask is None)
    if bc != "dirichlet" and mask is not None:
        b[mask] -= b[mask].mean()  # consistent on the fluid cells (the null space is constant there)
    grid = ProcessGrid(ctx, shape)
    full = torch.from_numpy(b).reshape(1, 1, *shape)
    return A, b, grid, full, GridTensor.from_global(full, grid).clone()


def test_vec_zero_copy_both_ways(mpi_ctx):
    grid = ProcessGrid(mpi_ctx, (7, 9, 5))
    x = GridTensor.from_global(torch.arange(315, dtype=torch.float64).reshape(1, 1, 7, 9, 5), grid).clone()
    v = P.to_petsc_vec(x)
    assert v.getSize() == 315 and v.getLocalSize() == x.local.numel()
    v.scale(3.0)                       # PETSc writes ...
    expect = 3.0 * torch.arange(315, dtype=torch.float64).reshape(1, 1, 7, 9, 5)[(slice(None),) * 2 + grid.local_slices]
    assert torch.equal(x.local, expect)  # ... torch sees it
    x.local.fill_(1.5)                 # torch writes ...
    assert v.sum() == pytest.approx(1.5 * 315)  # ... PETSc sees it (a global reduction over ranks)
    y = P.from_petsc_vec(v, grid)
    y.local.mul_(2.0)
    assert torch.equal(x.local, torch.full_like(x.local, 3.0))
    assert v.norm(PETSc.NormType.INFINITY) == 3.0
    # float32 or a batch cannot share memory: copied (float32) or refused (batch)
    v32 = P.to_petsc_vec(x.to(torch.float32))
    v32.scale(0.0)
    assert x.local.abs().max() == 3.0
    with pytest.raises(ValueError, match="one sample"):
        P.to_petsc_vec(GridTensor.zeros(grid, batch=2, dtype=torch.float64))


def test_dmda_layout_and_natural_ordering(mpi_ctx):
    grid = ProcessGrid(mpi_ctx, (6, 5, 7))
    da = P.create_dmda(grid)
    assert P.grid_from_dmda(da).local_slices == grid.local_slices
    full = torch.randn(1, 1, 6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = GridTensor.from_global(full, grid).clone()
    v = da.createGlobalVec()
    v.getArray()[:] = x.local.numpy().ravel()
    nat = da.createNaturalVec()
    da.globalToNatural(v, nat)
    allnat = PETSc.Scatter.toAll(nat)
    seq = allnat[1]
    allnat[0].scatter(nat, seq)
    np.testing.assert_array_equal(seq.getArray(), full.numpy().ravel())  # PETSc agrees on the ordering
    perm = P.natural_to_petsc(grid)
    ao = da.getAO()
    np.testing.assert_array_equal(ao.app2petsc(np.arange(perm.size, dtype=PETSc.IntType)), perm)
    da.destroy()


@pytest.mark.parametrize("shape,bc,obstacle", [((12, 10), "dirichlet", False), ((6, 7, 8), "periodic", False),
                                               ((10, 10, 10), "dirichlet", True)])
def test_assembled_shell_and_scipy_agree(mpi_ctx, shape, bc, obstacle):
    A, b, grid, full, bt = _setup(mpi_ctx, shape, bc, obstacle)
    mat = P.assemble_aij(A, grid)
    ref = (A @ b.ravel()).reshape(shape)
    y1 = P.PetscMatOperator(mat, grid).apply(bt).gather()
    shell = P.as_petsc_mat(MatrixOperator(A), grid)
    y2 = P.PetscMatOperator(shell, grid).apply(bt).gather()
    np.testing.assert_allclose(y1.numpy().reshape(shape), ref, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(y2.numpy().reshape(shape), ref, rtol=1e-14, atol=1e-13)
    d = P.PetscMatOperator(mat, grid).diagonal().gather()
    np.testing.assert_array_equal(d.numpy().ravel(), A.diagonal())
    shell.destroy()
    mat.destroy()


@pytest.mark.parametrize("pc", ["none", "jacobi"])
@pytest.mark.parametrize("norm_type", ["unpreconditioned", "preconditioned", "natural"])
@pytest.mark.parametrize("shape,bc,obstacle", [((20, 24), "dirichlet", False), ((10, 9, 11), "dirichlet", False),
                                               ((12, 12, 12), "neumann", True)])
def test_cg_iterations_equal_petsc_kspcg(mpi_ctx, shape, bc, obstacle, pc, norm_type):
    A, b, grid, full, bt = _setup(mpi_ctx, shape, bc, obstacle)
    mat = P.assemble_aij(A, grid)
    base = P.petsc_solve(mat, bt, pc_type=pc, rtol=1e-8, norm_type=norm_type, null_space=bc != "dirichlet" and not obstacle)
    assert base.converged, base
    op = P.PetscMatOperator(mat, grid)
    ours = cg(op, bt, M=Jacobi(op) if pc == "jacobi" else None, rtol=1e-8, norm_type=norm_type)
    assert ours.converged, ours
    assert abs(ours.iterations - base.iterations) <= 1, (ours.iterations, base.iterations)
    np.testing.assert_allclose(ours.residual_norms[: min(len(ours.residual_norms), 5)],
                               base.residual_norms[: min(len(ours.residual_norms), 5)], rtol=1e-8)
    serial = cg(MatrixOperator(A), full, M=Jacobi(MatrixOperator(A)) if pc == "jacobi" else None, rtol=1e-8,
                norm_type=norm_type)  # the same solve on one rank: same count on every rank count
    assert ours.iterations == serial.iterations
    diff = (ours.x.gather() - serial.x).abs().max()
    assert float(diff) <= 1e-9 * float(serial.x.abs().max())
    mat.destroy()


@pytest.mark.parametrize("pc", ["jacobi", "icc", "gamg", "hypre"])
def test_baseline_preconditioners_solve_to_tolerance(mpi_ctx, pc):
    A, b, grid, full, bt = _setup(mpi_ctx, (12, 11, 10))
    res = P.petsc_solve(A, bt, pc_type=pc, rtol=1e-10)
    assert res.converged and res.reason == ConvergedReason.CONVERGED_RTOL, res
    assert res.residual_norms[-1] <= 1e-10 * res.residual_norms[0] * 1.0000001
    ref = sla.spsolve(A.tocsc(), b.ravel())
    x = res.x.gather().numpy().ravel()
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-8
    assert set(res.info) >= {"setup_time", "solve_time", "pc_type"}


def test_neumann_null_space(mpi_ctx):
    A, b, grid, full, bt = _setup(mpi_ctx, (10, 12), "neumann")
    bt.local.add_(0.3)  # inconsistent: PETSc projects it out with the MatNullSpace
    res = P.petsc_solve(A, bt, pc_type="jacobi", rtol=1e-10, null_space=True)
    assert res.converged
    x = res.x.gather().numpy().ravel()
    r = (b.ravel() + 0.3 - 0.3) - A @ x  # residual of the projected system
    assert np.linalg.norm(r - r.mean()) <= 1e-8 * np.linalg.norm(b)


def test_ksp_python_plugin_equals_kspcg(mpi_ctx):
    A, b, grid, full, bt = _setup(mpi_ctx, (16, 18))
    mat = P.assemble_aij(A, grid)
    for pc in ("none", "jacobi"):
        ref = P.petsc_solve(mat, bt, pc_type=pc, rtol=1e-9)
        plug = P.petsc_solve(mat, bt, ksp_type="python", pc_type=pc, rtol=1e-9,
                             options={"ksp_python_type": "deepkrylov.solvers.petsc.CG"})
        assert plug.info["ksp_type"] == "python"
        assert plug.reason == ref.reason and abs(plug.iterations - ref.iterations) <= 1
        assert len(plug.residual_norms) == plug.iterations + 1  # history logged through PETSc
        np.testing.assert_allclose(plug.x.gather().numpy(), ref.x.gather().numpy(), rtol=0, atol=1e-8)
    flex = P.petsc_solve(mat, bt, ksp_type="python", pc_type="jacobi", rtol=1e-9,
                         options={"ksp_python_type": "deepkrylov.solvers.petsc.FCG"})
    assert flex.converged
    mat.destroy()


def test_pc_python_plugin_equals_pcjacobi(mpi_ctx):
    A, b, grid, full, bt = _setup(mpi_ctx, (10, 9, 8))
    mat = P.assemble_aij(A, grid)
    ref = P.petsc_solve(mat, bt, pc_type="jacobi", rtol=1e-9)
    plug = P.petsc_solve(mat, bt, pc_type="none", rtol=1e-9,
                         options={"pc_type": "python", "pc_python_type": "deepkrylov.solvers.petsc.PC",
                                  "deepkrylov_pc_type": "jacobi"})
    assert plug.info["pc_type"] == "python"
    assert plug.iterations == ref.iterations
    ident = P.petsc_solve(mat, bt, pc_type="none", rtol=1e-9,
                          options={"pc_type": "python", "pc_python_type": "deepkrylov.solvers.petsc.PC",
                                   "deepkrylov_pc_type": "identity"})
    plain = P.petsc_solve(mat, bt, pc_type="none", rtol=1e-9)
    assert ident.iterations == plain.iterations
    mat.destroy()


def test_petsc_mat_operator_in_our_solvers(mpi_ctx):
    A, b, grid, full, bt = _setup(mpi_ctx, (12, 12))
    mat = P.assemble_aij(A, grid)
    op = P.PetscMatOperator(mat, grid)
    res = fcg(op, bt, M=Jacobi(op), rtol=1e-11)
    ref = sla.spsolve(A.tocsc(), b.ravel())
    x = res.x.gather().numpy().ravel()
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-8
    mat.destroy()


def test_divergence_tolerance_like_petsc(mpi_ctx):
    """A huge initial guess: the residual exceeds dtol * ||b|| already at iteration 0, in PETSc and here."""
    A, b, grid, full, bt = _setup(mpi_ctx, (8, 9))
    x0 = bt.zeros_like().map(lambda t: t + 1e6)
    base = P.petsc_solve(A, bt, x0, pc_type="none", dtol=10.0)
    mat = P.assemble_aij(A, grid)
    ours = cg(P.PetscMatOperator(mat, grid), bt, x0, dtol=10.0)
    assert base.reason == ours.reason == ConvergedReason.DIVERGED_DTOL
    assert base.iterations == ours.iterations == 0
    mat.destroy()


def test_bad_inputs(mpi_ctx):
    A, b, grid, full, bt = _setup(mpi_ctx, (8, 8))
    with pytest.raises(ValueError, match="pc_type"):
        P.petsc_solve(A, bt, pc_type="magic")
    with pytest.raises(TypeError, match="GridTensor"):
        P.petsc_solve(A, full)
    other = ProcessGrid(mpi_ctx, (8, 9))
    with pytest.raises(ValueError, match="unknowns|shape"):
        P.assemble_aij(A, other)
    mat = P.assemble_aij(A, grid)
    with pytest.raises(ValueError, match="grid"):
        P.PetscMatOperator(mat, grid).apply(GridTensor.zeros(other, dtype=torch.float64))
    mat.destroy()


# ---- PetscPC: any PETSc PC in deepkrylov's own iterations ------------------------------------------------------
def _scene(ctx, n=12):
    from deepkrylov.solvers.problems import scene_problem

    A, b = scene_problem(n, 3, "smoke")
    grid = ProcessGrid(ctx, A.grid.shape)
    return A, b, GridTensor.from_global(b, grid)


@pytest.mark.parametrize("pc_type", ["icc", "jacobi"])
def test_petsc_pc_in_our_cg_equals_kspcg(mpi_ctx, pc_type):
    """cg(A, b, M=PetscPC(A, "icc")) takes the iterations of PETSc's KSPCG+ICC (block Jacobi + ICC on several
    ranks, as petsc_solve) on the smoke scene, for a deepkrylov mesh operator; on one rank also with plain tensors."""
    A, b, bt = _scene(mpi_ctx)
    base = P.petsc_solve(A, bt, pc_type=pc_type, rtol=1e-8)
    M = P.PetscPC(A, pc_type)
    try:
        ours = cg(A, bt, M=M, rtol=1e-8)
        assert base.converged and ours.converged, (base, ours)
        assert abs(ours.iterations - base.iterations) <= 1, (ours.iterations, base.iterations)
        assert M.setup_time is not None and M.setup_time > 0 and M.is_symmetric is True
        x = ours.x.gather()
        np.testing.assert_allclose(x.numpy(), base.x.gather().numpy(), rtol=0, atol=1e-6 * float(x.abs().max()))
        if mpi_ctx.size == 1:
            plain = cg(A, b, M=P.PetscPC(A, pc_type), rtol=1e-8)  # tensors (1, 1, z, y, x), no GridTensor
            assert plain.iterations == ours.iterations
            torch.testing.assert_close(plain.x, x, rtol=0, atol=1e-12)
    finally:
        M.close()


@pytest.mark.parametrize("pc_type", ["jacobi", "icc", "gamg", "hypre"])
def test_petsc_pc_symmetric_where_claimed(mpi_ctx, pc_type):
    """<M u, v> = <u, M v> for the types PetscPC reports symmetric, and M is positive (<M u, u> > 0)."""
    A, b, bt = _scene(mpi_ctx, 10)
    M = P.PetscPC(A, pc_type, grid=bt.grid)
    assert M.is_symmetric is True and M.setup_time is not None  # grid given: set up in the constructor
    g = torch.Generator().manual_seed(5)
    u, v = (GridTensor.from_global(torch.randn(b.shape, generator=g, dtype=torch.float64), bt.grid) for _ in range(2))
    Mu, Mv = M.apply(u), M.apply(v)
    lhs, rhs_ = float(Mu.dot(v)), float(u.dot(Mv))
    assert abs(lhs - rhs_) <= 1e-10 * abs(lhs), (lhs, rhs_)
    assert float(Mu.dot(u)) > 0
    M.close()


def test_petsc_pc_inputs_options_and_errors(mpi_ctx):
    A, b, bt = _scene(mpi_ctx, 8)
    grid = bt.grid
    mat = P.assemble_aij(A, grid)
    op = P.PetscMatOperator(mat, grid)
    ref = P.PetscPC(A, "icc")
    z_ref = ref.apply(bt)
    for src in (op, mat):  # a PetscMatOperator or a PETSc Mat: used as is, not assembled again
        M = P.PetscPC(src, "icc", grid=grid)
        assert M.pc.getOperators()[0].handle == mat.handle
        torch.testing.assert_close(M.apply(bt).local, z_ref.local, rtol=1e-13, atol=1e-15)
        M.close()
    z32 = ref.apply(bt.to(torch.float32))  # float32 in, float32 out (PETSc computes in float64)
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.local, z_ref.local.float(), rtol=1e-5, atol=1e-6)
    # options under the PC's own prefix; the options database (command line) wins over the code's defaults
    opts = PETSc.Options()
    opts.setValue("dktest_pc_type", "jacobi")
    try:
        M = P.PetscPC(A, "gamg", prefix="dktest_", grid=grid)
        assert M.pc.getType() == "jacobi"
        torch.testing.assert_close(M.apply(bt).local, bt.local / op.diagonal().local, rtol=1e-14, atol=0)
        M.close()
    finally:
        opts.delValue("dktest_pc_type")
    M = P.PetscPC(A, "hypre", options={"pc_hypre_boomeramg_max_iter": 3}, grid=grid)
    assert M.pc.getType() == "hypre"
    M.close()
    with pytest.raises(ValueError, match="pc_type must be a PETSc PC type.*'magic'"):
        P.PetscPC(A, "magic")
    with pytest.raises(TypeError, match="needs an assembled matrix"):
        P.PetscPC(lambda x: x, "icc")
    other = ProcessGrid(mpi_ctx, (8, 8, 10))
    with pytest.raises(ValueError, match="set up on"):
        ref.apply(GridTensor.zeros(other, dtype=torch.float64))
    ref.close()
    with pytest.raises(RuntimeError, match="before setup"):
        ref.apply(bt)
    op.close()
    mat.destroy()


def test_plain_tensors_and_one_rank_layouts(mpi_ctx):
    """PetscMatOperator and PetscPC lift a plain tensor once: on one rank a field, a flat vector, a batch, or a
    GridTensor on another one-rank grid with the same cells (the 1D view a solver makes for a matrix) give the bits
    of the operator's own grid, in the caller's layout; split over ranks a plain tensor is a clear error."""
    from deepkrylov.distributed import as_grid_tensor

    A, b, bt = _scene(mpi_ctx, 8)
    mat = P.assemble_aij(A, bt.grid)
    op, M = P.PetscMatOperator(mat, bt.grid), P.PetscPC(A, "icc", grid=bt.grid)
    try:
        for f in (op.apply, M.apply):
            y = f(bt)
            if mpi_ctx.size > 1:
                with pytest.raises(ValueError, match="several ranks"):
                    f(b)
                continue
            ref = y.local.reshape(-1)
            assert f(b).shape == b.shape and torch.equal(f(b).reshape(-1), ref)
            assert f(b.reshape(-1)).shape == (b.numel(),) and torch.equal(f(b.reshape(-1)), ref)
            batch = f(torch.cat([b, 2 * b]))
            assert batch.shape == (2,) + tuple(b.shape[1:]) and torch.equal(batch[1].reshape(-1), 2 * ref)
            flat = f(as_grid_tensor(b.reshape(-1))[0])
            assert flat.grid.global_shape == (b.numel(),) and torch.equal(flat.local.reshape(-1), ref)
    finally:
        M.close()
        op.close()
        mat.destroy()


def test_plugin_grid_sources(mpi_ctx):
    """plugin_grid: the KSP's DMDA, else the vector's, else -<prefix>deepkrylov_grid (x first), else the 1D layout;
    a plugin that needs 3D and finds none says which option to give; a DMDA and the option must agree."""
    grid = ProcessGrid(mpi_ctx, (6, 4, 8))
    comm = P.petsc_comm(grid)
    vec = PETSc.Vec().createMPI((int(np.prod(grid.local_shape)), 192), comm=comm)  # no DM
    ksp = PETSc.KSP().create(comm=comm)
    ksp.setOptionsPrefix("dkgrid_")
    opts = PETSc.Options()
    try:
        assert P.plugin_grid(ksp, vec).global_shape == (192,)
        with pytest.raises(ValueError, match=r"needs a 3D grid.*-dkgrid_deepkrylov_grid 64,64,64"):
            P.plugin_grid(ksp, vec, ndim=3, what="DCDMPC")
        opts.setValue("dkgrid_deepkrylov_grid", "8,4,6")
        g = P.plugin_grid(ksp, vec, ndim=3)
        assert g.global_shape == (6, 4, 8) and g.local_slices == grid.local_slices
        da = P.create_dmda(grid)
        ksp.setDM(da)
        ksp.setDMActive(False)
        g = P.plugin_grid(ksp, vec, ndim=3)  # the DMDA, agreeing with the option
        assert (g.global_shape, g.dims, g.local_slices) == (grid.global_shape, grid.dims, grid.local_slices)
        opts.setValue("dkgrid_deepkrylov_grid", "6,4,8")
        with pytest.raises(ValueError, match="disagrees with the KSP's DMDA"):
            P.plugin_grid(ksp, vec)
        opts.setValue("dkgrid_deepkrylov_grid", "8,x")
        with pytest.raises(ValueError, match="positive cell counts"):
            P.plugin_grid(ksp, vec)
        da.destroy()
    finally:
        opts.delValue("dkgrid_deepkrylov_grid")
        ksp.destroy()
        vec.destroy()


@pytest.mark.parametrize("shape,bc,obstacle", [((6, 7, 9), "dirichlet", True), ((7, 5, 6), "periodic", False),
                                               ((9, 11), "neumann", True), ((5, 2, 4), "periodic", False)])
def test_mat_from_local_rows_equals_whole_csr(mpi_ctx, shape, bc, obstacle):
    """A DiffusionOperator built on the blocks (``partition=``) is assembled from this rank's stencil rows only; the
    Mat equals the one from the whole CSR (deepkrylov's and the independent SciPy one), entry for entry."""
    from deepkrylov.mesh import FLUID, SOLID, BoundaryConditions, StructuredGrid
    from deepkrylov.mesh import laplacian as mesh_laplacian

    fluid = sphere_mask(shape) if obstacle else np.ones(shape, bool)
    grid = ProcessGrid(mpi_ctx, shape)
    mask = torch.where(torch.from_numpy(fluid), FLUID, SOLID).to(torch.uint8)
    bcs = BoundaryConditions.uniform(len(shape), bc)
    local_op = mesh_laplacian(StructuredGrid(shape), bcs, mask, scaled=False, partition=grid)
    whole_op = mesh_laplacian(StructuredGrid(shape), bcs, mask, scaled=False)
    mats = [P.assemble_aij(local_op, grid), P.assemble_aij(whole_op, grid), P.assemble_aij(whole_op.to_scipy(), grid)]
    if min(shape) > 2 or bc != "periodic":  # the independent CSR has no wrap link on a periodic axis of 2
        mats.append(P.assemble_aij(laplacian(shape, bc, fluid if obstacle else None), grid))
    ai, aj, av = mats[0].getValuesCSR()
    assert ai[-1] <= (1 + 2 * len(shape)) * grid.local_shape[0] * int(np.prod(grid.local_shape[1:]))  # its rows only
    for m in mats[1:]:
        bi, bj, bv = m.getValuesCSR()
        np.testing.assert_array_equal(ai, bi)
        np.testing.assert_array_equal(aj, bj)
        np.testing.assert_array_equal(av, bv)
        assert mats[0].equal(m)
    # the index arithmetic behind it is PETSc's DMDA ordering (natural_to_petsc is checked against PETSc's AO above)
    coords = list(np.indices(shape).reshape(len(shape), -1))
    np.testing.assert_array_equal(P.layout._petsc_index(grid, coords), P.natural_to_petsc(grid))
    for m in mats:
        m.destroy()


@pytest.mark.parametrize("fmt", ["npz", "petsc"])
def test_cli_matrix_rows_per_rank(mpi_ctx, tmp_path, fmt):
    """``deepkrylov solve --matrix``: each rank reads only its rows (a slab of the n^dim grid) from a SciPy .npz or a
    PETSc binary file; the operator and right-hand side equal the whole matrix's and vector's rows."""
    import argparse

    import scipy.sparse as sp

    from deepkrylov.solvers._cli import _load_matrix_problem

    shape = (6, 6, 6)
    A = laplacian(shape, "neumann", sphere_mask(shape))
    b = rhs(shape, seed=4).ravel()
    if fmt == "npz":  # every rank writes its own copy (tmp_path is per rank)
        sp.save_npz(tmp_path / "A.npz", A)
        np.save(tmp_path / "b.npy", b)
        files = (tmp_path / "A.npz", tmp_path / "b.npy")
    else:
        files = (tmp_path / "A.petsc", tmp_path / "b.petsc")
        m = P.assemble_aij(A, ProcessGrid(None, (A.shape[0],)))
        bv = PETSc.Vec().createWithArray(b, comm=PETSc.COMM_SELF)
        for obj, path in ((m, files[0]), (bv, files[1])):
            viewer = PETSc.Viewer().createBinary(str(path), "w", comm=PETSc.COMM_SELF)
            obj.view(viewer)
            viewer.destroy()
        m.destroy()
    args = argparse.Namespace(matrix=files[0], rhs=files[1], dim=3, methods=["cg"])
    op, bg, grid, _ = _load_matrix_problem(args, mpi_ctx)
    assert grid.global_shape == shape and grid.dims == (mpi_ctx.size, 1, 1)
    np.testing.assert_array_equal(bg.gather().numpy().ravel(), b)
    y = op.apply(bg)
    np.testing.assert_allclose(y.gather().numpy().ravel(), A @ b, rtol=1e-14, atol=1e-14)
    if mpi_ctx.size > 1:  # the Mat from the ranks' rows is the whole-CSR one
        ref = P.assemble_aij(A, grid)
        assert op.mat.equal(ref)
        ref.destroy()
        op.close()
        op.mat.destroy()
