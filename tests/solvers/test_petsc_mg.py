"""The multigrid PC plugins (deepkrylov.solvers.petsc.MG, LearnedMG) and the operator they read back from a PETSc
matrix (diffusion_operator_from_mat): round trips, PETSc ex45's matrix (boundary rows coupled from the unknowns), the
errors, and the application checked against an independent computation. Runs serially or under mpiexec."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import EMPTY, FLUID, BoundaryConditions, DiffusionOperator, StructuredGrid
from deepkrylov.solvers.learned_multigrid import SHIPPED_LEARNED_MODEL
from deepkrylov.solvers.multigrid import Multigrid

from .problems import laplacian

PETSc = pytest.importorskip("petsc4py.PETSc", reason="petsc4py is not installed (pip install deepkrylov[petsc] or scripts/setup.sh)")
P = pytest.importorskip("deepkrylov.solvers.petsc")

pytestmark = pytest.mark.petsc
_prefixes = itertools.count()


@pytest.fixture
def mpi_ctx(ctx):
    if ctx.comm.name == "torch":
        pytest.skip("PETSc runs on the MPI engine")
    return ctx


def ex45_csr(nx: int, ny: int, nz: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """PETSc's src/ksp/ksp/tutorials/ex45.c, rebuilt (natural order, tensor shape (nz, ny, nx)): the 7-point
    Laplacian on a vertex-centred grid; boundary rows diagonal-only, interior rows coupled to them. Returns the
    matrix, its right-hand side and the boundary mask."""
    Hx, Hy, Hz = 1.0 / (nx - 1), 1.0 / (ny - 1), 1.0 / (nz - 1)
    HxHydHz, HxHzdHy, HyHzdHx = Hx * Hy / Hz, Hx * Hz / Hy, Hy * Hz / Hx
    diag = 2.0 * (HxHydHz + HxHzdHy + HyHzdHx)
    shape = (nz, ny, nx)
    n = nz * ny * nx
    idx = np.arange(n).reshape(shape)
    bnd = np.zeros(shape, bool)
    for a in range(3):
        bnd[(slice(None),) * a + (0,)] = bnd[(slice(None),) * a + (-1,)] = True
    inner = ~bnd
    rows, cols, vals = [idx.ravel()], [idx.ravel()], [np.full(n, diag)]
    for a, t in zip(range(3), (HxHydHz, HxHzdHy, HyHzdHx)):  # z, y, x
        for step in (1, -1):
            nb = np.roll(idx, step, axis=a)  # interior cells' neighbours never wrap
            rows.append(idx[inner])
            cols.append(nb[inner])
            vals.append(np.full(int(inner.sum()), -t))
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    b = np.where(bnd, diag, Hx * Hy * Hz).ravel()
    return A, b, bnd


def _mat(A: sp.spmatrix, grid: ProcessGrid):
    return P.assemble_aij(A, grid)


def _pc(mat, grid: ProcessGrid, kind: str, **options):
    """A PCPYTHON of ``kind`` on ``mat`` with its DMDA, options under a fresh prefix."""
    prefix = f"dkmg{next(_prefixes)}_"
    opts = PETSc.Options()
    for k, v in options.items():
        opts.setValue(prefix + k, str(v))
    da = P.create_dmda(grid)
    pc = PETSc.PC().create(comm=mat.getComm())
    pc.setOptionsPrefix(prefix)
    pc.setOperators(mat, mat)
    pc.setDM(da)
    pc.setType("python")
    pc.setPythonType(f"deepkrylov.solvers.petsc.{kind}")
    pc.setFromOptions()
    return pc, da, [prefix + k for k in options]


def _apply(pc, grid: ProcessGrid, r_full: torch.Tensor) -> torch.Tensor:
    x = P.to_petsc_vec(GridTensor.from_global(r_full.reshape((1, 1) + grid.global_shape), grid).clone(), copy=True)
    y = x.duplicate()
    pc.apply(x, y)
    out = P.from_petsc_vec(y, grid, copy=True).gather().reshape(-1)
    x.destroy()
    y.destroy()
    return out


def _cleanup(*objs, keys=()):
    opts = PETSc.Options()
    for k in keys:
        opts.delValue(k)
    for o in objs:
        o.destroy()


# ---- reading the operator back --------------------------------------------------------------------------------
def test_round_trip_of_a_diffusion_operator(mpi_ctx):
    """A DiffusionOperator with EMPTY cells, mixed Dirichlet/Neumann faces and unequal spacings, assembled in DMDA
    order and read back: the same matrix, faces and weights; no coupling to the boundary rows."""
    shape = (8, 10, 12)
    grid_ = StructuredGrid(shape, extent=(1.0, 2.0, 1.5))
    mask = torch.full(shape, FLUID, dtype=torch.uint8)
    mask[5:8, 2:5, 3:9] = EMPTY  # an open region touching the high z face
    bc = BoundaryConditions([("dirichlet", "neumann"), "neumann", ("neumann", "dirichlet")])
    op = DiffusionOperator(grid_, bc, 1.0, mask, scaled=True)
    grid = ProcessGrid(mpi_ctx, shape)
    mat = _mat(op, grid)
    found = P.diffusion_operator_from_mat(mat, grid)
    assert found.offset == (0, 0, 0) and found.operator.grid.shape == shape and not found.coupled
    assert found.faces == (("dirichlet", "neumann"), ("neumann", "neumann"), ("neumann", "dirichlet"))
    np.testing.assert_allclose(found.weights, [1 / h**2 for h in grid_.spacing], rtol=1e-14)
    assert torch.equal(found.boundary, (mask == EMPTY)[grid.local_slices])  # this rank's block
    assert found.boundary_rows == int((mask == EMPTY).sum())
    diff = found.operator.to_scipy() - op.to_scipy()
    assert abs(diff).max() <= 1e-12 * abs(op.to_scipy()).max()
    # the uniform Laplacian (integer weights, cell-centred Dirichlet faces): scaled=False, coefficient 1
    mat.destroy()
    L = laplacian((6, 8, 10), "dirichlet")
    grid = ProcessGrid(mpi_ctx, (6, 8, 10))
    mat = _mat(L, grid)
    found = P.diffusion_operator_from_mat(mat, grid)
    assert not found.operator.scaled and found.weights == (1.0, 1.0, 1.0)
    assert abs(found.operator.to_scipy() - L).max() == 0
    mat.destroy()


@pytest.mark.parametrize("sizes", [(17, 17, 17), (17, 13, 9)])
def test_ex45_matrix_read_back(mpi_ctx, sizes):
    """ex45's matrix: the face layers are boundary rows (EMPTY), the unknowns couple to them, the grid is padded
    with EMPTY cells so that it halves, and the operator's block on the unknowns is the matrix's."""
    A, b, bnd = ex45_csr(*sizes)
    shape = tuple(reversed(sizes))
    grid = ProcessGrid(mpi_ctx, shape)
    mat = _mat(A, grid)
    found = P.diffusion_operator_from_mat(mat, grid, multiple=4)
    assert found.coupled and found.offset == (0, 0, 0)
    assert torch.equal(found.boundary, torch.from_numpy(bnd)[grid.local_slices])
    assert found.faces == ((None, None),) * 3  # no unknown touches a face
    assert found.operator.grid.shape == tuple(-(-n // 4) * 4 for n in shape)
    assert found.operator.scaled == (len(set(sizes)) > 1)
    op = found.operator.to_scipy()
    big = np.zeros(found.operator.grid.shape, bool)
    big[found.region] = ~bnd
    fl = ~bnd.ravel()
    diff = op[big.ravel()][:, big.ravel()] - A[fl][:, fl]
    assert abs(diff).max() <= 1e-12 * A.diagonal().max()
    mat.destroy()


def test_vertex_faces_get_a_layer_of_empty_cells(mpi_ctx):
    """examples/petsc_plugin/poisson.c's matrix (2d on the diagonal, -1 links: a boundary one cell outside the
    grid, eliminated): 'vertex' faces, represented by one EMPTY layer outside each face."""
    n = 10
    off = laplacian((n, n, n), "neumann")
    A = (off + sp.diags(6.0 - off.diagonal())).tocsr()  # every row's diagonal 6
    grid = ProcessGrid(mpi_ctx, (n, n, n))
    mat = _mat(A, grid)
    found = P.diffusion_operator_from_mat(mat, grid)
    assert found.faces == (("vertex", "vertex"),) * 3 and found.offset == (1, 1, 1) and not found.coupled
    op = found.operator.to_scipy()
    big = np.zeros(found.operator.grid.shape, bool)
    big[found.region] = True
    assert found.operator.grid.shape == (n + 2,) * 3
    assert abs(op[big.ravel()][:, big.ravel()] - A).max() == 0
    mat.destroy()


def _readback_case(case: str) -> tuple[sp.csr_matrix, tuple, int]:
    """A matrix (natural order), its grid's shape and the padding multiple: a DiffusionOperator with EMPTY cells,
    mixed faces and unequal weights; ex45's (boundary rows coupled, padded to halve); poisson.c's (vertex faces)."""
    if case == "operator":
        shape = (8, 10, 12)
        mask = torch.full(shape, FLUID, dtype=torch.uint8)
        mask[5:8, 2:5, 3:9] = EMPTY
        bc = BoundaryConditions([("dirichlet", "neumann"), "neumann", ("neumann", "dirichlet")])
        return DiffusionOperator(StructuredGrid(shape, extent=(1.0, 2.0, 1.5)), bc, 1.0, mask).to_scipy(), shape, 1
    if case == "ex45":
        return ex45_csr(17, 13, 9)[0], (9, 13, 17), 4
    off = laplacian((10, 10, 10), "neumann")
    return (off + sp.diags(6.0 - off.diagonal())).tocsr(), (10, 10, 10), 4


@pytest.mark.parametrize("case", ["operator", "ex45", "vertex"])
def test_read_back_on_blocks_equals_the_whole_operator(mpi_ctx, case):
    """Every rank reads only its rows and builds its block of the padded operator (partition: the DMDA's blocks,
    grown by the padding): its stencil, boundary rows and diagonal equal those of the whole operator read back from
    the same matrix on this rank alone, bit for bit; the global facts are the same on every rank."""
    A, shape, multiple = _readback_case(case)
    grid = ProcessGrid(mpi_ctx, shape)
    mat, smat = _mat(A, grid), _mat(A, ProcessGrid(None, shape))
    found = P.diffusion_operator_from_mat(mat, grid, multiple=multiple)
    whole = P.diffusion_operator_from_mat(smat, ProcessGrid(None, shape), multiple=multiple)
    op, part = found.operator, found.operator.partition
    assert whole.operator.partition is None and op.grid.shape == whole.operator.grid.shape
    assert (found.offset, found.faces, found.weights, found.coupled, found.boundary_rows) == \
        (whole.offset, whole.faces, whole.weights, whole.coupled, whole.boundary_rows)
    if grid.size == 1:
        assert part is None
    else:  # the DMDA's blocks: the first along an axis after the low padding, the last up to the grid's end
        assert part.dims == grid.dims and op.mask.shape == part.local_shape
        for a in range(grid.ndim):
            assert part.offsets[a][1:-1] == tuple(o + found.offset[a] for o in grid.offsets[a][1:-1])
    diag, weights = op.local_stencil()
    ref_diag, ref_weights = whole.operator.local_stencil(part)
    assert torch.equal(diag, ref_diag)
    for pair, ref in zip(weights, ref_weights):
        assert all(torch.equal(w, r) for w, r in zip(pair, ref))
    assert torch.equal(found.boundary, whole.boundary[grid.local_slices])
    assert torch.equal(found.diagonal, whole.diagonal[grid.local_slices])
    assert torch.equal(diag[found.local_region][~found.boundary], found.diagonal[~found.boundary])
    _cleanup(mat, smat)


def _broken(kind: str) -> tuple[sp.csr_matrix, str]:
    L = laplacian((5, 6, 7), "dirichlet").tolil()
    k = 2 * 42 + 3 * 7 + 3  # the cell (x=3, y=3, z=2)
    if kind == "variable":
        L[k, k + 1] = L[k + 1, k] = -2.0
        L[k, k] += 1.0
        L[k + 1, k + 1] += 1.0
        return L.tocsr(), "does not have one negative link weight along x"
    if kind == "box":
        L[k, k + 7 + 1] = L[k + 7 + 1, k] = -0.5
        return L.tocsr(), r"not a 7-point stencil: row \(3, 3, 2\) couples to \(4, 4, 2\)"
    if kind == "diagonal":
        L[k, k] += 0.5
        return L.tocsr(), r"the diagonal 6.5 at \(3, 3, 2\).*gives 6"
    if kind == "face":  # one cell on the low z face, (x=3, y=3, z=0), with 3t from the face
        L[24, 24] += 1.0
        return L.tocsr(), r"3 t_z above the sum of its links.*adds 0 \(Neumann face\), 1 .* or 2"
    if kind == "negative":
        L[k, k] = -6.0
        return L.tocsr(), "diagonal -6 at"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["variable", "box", "diagonal", "face", "negative"])
def test_not_a_diffusion_operator_is_a_clear_error(mpi_ctx, kind):
    A, match = _broken(kind)
    grid = ProcessGrid(mpi_ctx, (5, 6, 7))
    mat = _mat(A, grid)
    with pytest.raises(ValueError, match=match) as err:
        P.diffusion_operator_from_mat(mat, grid)
    assert "-pc_type gamg" in str(err.value) or kind == "negative"
    mat.destroy()


def test_other_matrices_are_clear_errors(mpi_ctx):
    grid = ProcessGrid(mpi_ctx, (4, 5, 6))
    op = DiffusionOperator(StructuredGrid((4, 5, 6)))
    shell = P.as_petsc_mat(op, grid)
    with pytest.raises(ValueError, match=r"type 'python'.*assembled AIJ.*-pc_type gamg"):
        P.diffusion_operator_from_mat(shell, grid)
    shell.destroy()
    mat = _mat(sp.identity(120, format="csr"), grid)
    with pytest.raises(ValueError, match="is diagonal"):
        P.diffusion_operator_from_mat(mat, grid)
    with pytest.raises(ValueError, match=r"has size \(120, 120\).*has 140 cells"):
        P.diffusion_operator_from_mat(mat, ProcessGrid(mpi_ctx, (4, 5, 7)))
    mat.destroy()


# ---- the plugins --------------------------------------------------------------------------------------------------
def test_mg_plugin_is_exact_in_the_boundary_block(mpi_ctx):
    """On ex45's matrix the plugin applies z_b = r_b / d_b, z_f = M (r_f - A_fb z_b), with M the V-cycle of the
    operator on the unknowns: checked against a Multigrid built here by hand on the padded grid."""
    A, _, bnd = ex45_csr(17, 17, 17)
    grid = ProcessGrid(mpi_ctx, (17, 17, 17))
    mat = _mat(A, grid)
    pc, da, keys = _pc(mat, grid, "MG")
    r = torch.randn(17**3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z = _apply(pc, grid, r).numpy()
    # by hand: the padded grid is 18^3 (17^3 cells exceed 4096: halve once), unknowns at 1..15, t = 1/16
    mask = torch.full((18, 18, 18), EMPTY, dtype=torch.uint8)
    mask[1:16, 1:16, 1:16] = FLUID
    M = Multigrid(DiffusionOperator(StructuredGrid((18, 18, 18)), None, 1.0 / 16, mask, scaled=False))
    rn, b = r.numpy(), bnd.ravel()
    zb = np.where(b, rn / A.diagonal(), 0.0)
    f = np.where(b, 0.0, rn - A @ zb)
    big = torch.zeros((1, 1, 18, 18, 18), dtype=torch.float64)
    big[0, 0, :17, :17, :17] = torch.from_numpy(f.reshape(17, 17, 17))
    zf = M.apply(big)[0, 0, :17, :17, :17].reshape(-1).numpy()
    expect = np.where(b, zb, zf)
    np.testing.assert_allclose(z, expect, rtol=0, atol=1e-12 * np.abs(expect).max())
    _cleanup(pc, da, mat, keys=keys)


def test_mg_plugin_without_coupling_is_plain_multigrid_and_symmetric(mpi_ctx):
    """A DiffusionOperator's own matrix (EMPTY rows decoupled): the plugin is Multigrid(op) on the unknowns, the
    identity on the EMPTY rows, and symmetric (valid in CG)."""
    shape = (16, 16, 16)
    mask = torch.full(shape, FLUID, dtype=torch.uint8)
    mask[12:, :, :] = EMPTY
    op = DiffusionOperator(StructuredGrid(shape), None, 1.0, mask, scaled=False)
    grid = ProcessGrid(mpi_ctx, shape)
    mat = _mat(op, grid)
    pc, da, keys = _pc(mat, grid, "MG", deepkrylov_mg_smoother="jacobi", deepkrylov_mg_degree=3)
    g = torch.Generator().manual_seed(5)
    u, v = (torch.randn(16**3, dtype=torch.float64, generator=g) for _ in range(2))
    Mu, Mv = _apply(pc, grid, u), _apply(pc, grid, v)
    assert abs(float(Mu @ v - u @ Mv)) <= 1e-12 * float(Mu.norm() * v.norm())
    ref = Multigrid(op, smoother="jacobi", degree=3).apply(u.reshape(1, 1, *shape)).reshape(-1)
    fluid = (mask == FLUID).reshape(-1)
    torch.testing.assert_close(Mu[fluid], ref[fluid], rtol=0, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(Mu[~fluid], u[~fluid], rtol=0, atol=0)
    assert pc.getPythonContext().inner.smoother == "jacobi"
    _cleanup(pc, da, mat, keys=keys)


def test_learned_plugin_with_classical_stencils_equals_mg(mpi_ctx):
    """-deepkrylov_learned_model classical (the untrained stencil network) reproduces MG's Chebyshev cycle."""
    A, _, _ = ex45_csr(17, 17, 17)
    grid = ProcessGrid(mpi_ctx, (17, 17, 17))
    mat = _mat(A, grid)
    r = torch.randn(17**3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    pc1, da1, k1 = _pc(mat, grid, "MG")
    pc2, da2, k2 = _pc(mat, grid, "LearnedMG", deepkrylov_learned_model="classical")
    z1, z2 = _apply(pc1, grid, r), _apply(pc2, grid, r)
    torch.testing.assert_close(z2, z1, rtol=0, atol=1e-11 * float(z1.abs().max()))
    _cleanup(pc1, pc2, da1, da2, mat, keys=k1 + k2)


def _ksp_solve(mat, b_full: np.ndarray, grid: ProcessGrid, kind: str, ksp_type: str = "gmres", **options):
    pc_opts = {"pc_type": "python", "pc_python_type": f"deepkrylov.solvers.petsc.{kind}", **options}
    prefix = f"dkmgksp{next(_prefixes)}_"
    opts = PETSc.Options()
    for k, v in {"ksp_type": ksp_type, **pc_opts}.items():
        opts.setValue(prefix + k, str(v))
    da = P.create_dmda(grid)
    ksp = PETSc.KSP().create(comm=mat.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(mat)
    ksp.setDM(da)
    ksp.setDMActive(False)
    ksp.setConvergenceHistory()
    ksp.setFromOptions()
    b = P.to_petsc_vec(GridTensor.from_global(torch.from_numpy(b_full).reshape((1, 1) + grid.global_shape), grid)
                       .clone(), copy=True)
    x = b.duplicate()
    ksp.solve(b, x)
    out = int(ksp.getIterationNumber()), int(ksp.getConvergedReason()), [float(h) for h in ksp.getConvergenceHistory()]
    _cleanup(ksp, da, b, x, keys=[prefix + k for k in ("ksp_type", *pc_opts)])
    return out


@pytest.mark.parametrize("kind,options", [("MG", {}), ("MG", {"deepkrylov_mg_dtype": "float32"}),
                                          ("LearnedMG", {"deepkrylov_learned_model": "classical"})])
def test_plugins_in_gmres_on_ex45_distributed_equals_serial(mpi_ctx, kind, options):
    """GMRES with the plugin on ex45's system converges, and on several ranks (the DMDA's blocks, padded) the
    residual history is the serial one (solved here on this rank alone)."""
    A, b, _ = ex45_csr(17, 17, 17)
    grid = ProcessGrid(mpi_ctx, (17, 17, 17))
    mat = _mat(A, grid)
    its, reason, hist = _ksp_solve(mat, b, grid, kind, **options)
    assert reason > 0 and its <= 8, (its, reason)
    if grid.size > 1:
        serial = ProcessGrid(None, (17, 17, 17))
        smat = _mat(A, serial)
        its1, reason1, hist1 = _ksp_solve(smat, b, serial, kind, **options)
        smat.destroy()
        assert its1 == its and reason1 == reason
        rtol = 1e-5 if options.get("deepkrylov_mg_dtype") == "float32" else 1e-8  # float32 sums in another order
        np.testing.assert_allclose(hist, hist1, rtol=rtol)
    mat.destroy()


@pytest.mark.skipif(not SHIPPED_LEARNED_MODEL.exists(), reason="the shipped learned multigrid weights are not there")
def test_learned_plugin_with_the_shipped_weights_converges(mpi_ctx):
    A, b, _ = ex45_csr(17, 17, 17)
    grid = ProcessGrid(mpi_ctx, (17, 17, 17))
    mat = _mat(A, grid)
    its, reason, _ = _ksp_solve(mat, b, grid, "LearnedMG")
    assert reason > 0 and its <= 12, (its, reason)
    mat.destroy()


@pytest.mark.parametrize("kind,option,value,match", [
    ("MG", "deepkrylov_mg_smoother", "gauss", r"-dkmg\d+_deepkrylov_mg_smoother must be one of \('jacobi', 'chebyshev'\), but got 'gauss'"),
    ("MG", "deepkrylov_mg_degree", "0", r"deepkrylov_mg_degree must be at least 1, but got 0"),
    ("MG", "deepkrylov_mg_omega", "2.5", r"deepkrylov_mg_omega must lie in \(0, 2\), but got 2.5"),
    ("MG", "deepkrylov_mg_dtype", "float16", r"deepkrylov_mg_dtype must be one of \('float64', 'float32'\)"),
    ("MG", "deepkrylov_mg_levels", "9", r"allows at most \d+ multigrid levels"),
    ("LearnedMG", "deepkrylov_learned_model", "/nonexistent/weights.pt", "weights not found: /nonexistent/weights.pt"),
])
def test_plugin_option_errors(mpi_ctx, kind, option, value, match):
    """A bad option is an error that names the option and the allowed and received values (set-up, called directly
    on the python context so that the Python exception itself is seen)."""
    A, _, _ = ex45_csr(9, 9, 9)
    grid = ProcessGrid(mpi_ctx, (9, 9, 9))
    mat = _mat(A, grid)
    pc, da, keys = _pc(mat, grid, kind, **{option: value})
    ctx = pc.getPythonContext()
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        ctx.setUp(pc)
    _cleanup(pc, da, mat, keys=keys)


def test_plugin_options_table(mpi_ctx):
    """Plugins read their options through one table (Plugin.options): defaults, parsed values (levels 0 = as many
    as the grid allows), and a value of the wrong type is an error naming the option and the value."""
    A, _, _ = ex45_csr(9, 9, 9)
    grid = ProcessGrid(mpi_ctx, (9, 9, 9))
    mat = _mat(A, grid)
    pc, da, keys = _pc(mat, grid, "MG", deepkrylov_mg_levels="0", deepkrylov_mg_omega="0.7")
    ctx = pc.getPythonContext()
    assert (ctx.levels, ctx.omega, ctx.degree, ctx.smoother) == (None, 0.7, 2, "chebyshev")
    key = pc.getOptionsPrefix() + "deepkrylov_mg_degree"
    PETSc.Options().setValue(key, "two")
    with pytest.raises(ValueError, match=r"-dkmg\d+_deepkrylov_mg_degree must be an integer, but got 'two'"):
        ctx.setFromOptions(pc)
    _cleanup(pc, da, mat, keys=keys + [key])
