"""Krylov solvers against SciPy's direct solve, on plain tensors and GridTensors (runs serially or under mpiexec)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.solvers import (
    ConvergedReason, FunctionOperator, Jacobi, KrylovSolver, MatrixOperator, SolveResult, SolverError, cg, fcg, gmres,
    pcg,
)

from .problems import laplacian, rhs, sphere_mask

CASES = {
    "2d-dirichlet": ((24, 20), "dirichlet", False),
    "2d-neumann": ((20, 18), "neumann", False),
    "2d-periodic": ((16, 20), "periodic", False),
    "2d-obstacle": ((24, 24), "dirichlet", True),
    "3d-dirichlet": ((10, 9, 8), "dirichlet", False),
    "3d-neumann": ((8, 9, 10), "neumann", False),
    "3d-periodic": ((8, 8, 8), "periodic", False),
    "3d-obstacle": ((12, 12, 12), "neumann", True),
}


def problem(name: str):
    shape, bc, obstacle = CASES[name]
    mask = sphere_mask(shape) if obstacle else None
    A = laplacian(shape, bc, mask)
    singular = bc in ("neumann", "periodic")
    b = rhs(shape, seed=1, mask=mask, singular=singular and mask is None)
    if singular and mask is not None:
        b[mask] -= b[mask].mean()  # consistent on the (connected) fluid region
    return shape, A, b, singular, mask


def reference(A: sp.csr_matrix, b: np.ndarray, singular: bool, mask) -> np.ndarray:
    """SciPy direct solve; a singular system is pinned at one unknown, then made orthogonal to the null space."""
    bf = b.ravel()
    if not singular:
        return sla.spsolve(A.tocsc(), bf)
    fluid = np.ones(bf.size, bool) if mask is None else mask.ravel()
    keep = np.arange(bf.size)
    pin = np.flatnonzero(fluid)[0]
    keep = keep[keep != pin]
    x = np.zeros_like(bf)
    x[keep] = sla.spsolve(A[keep][:, keep].tocsc(), bf[keep])
    x[fluid] -= x[fluid].mean()
    return x


def relerr(x, ref) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


SOLVERS = {
    "cg": lambda A, b, **k: cg(A, b, **k),
    "pcg-jacobi": lambda A, b, **k: cg(A, b, M=Jacobi(A), **k),
    "fcg": lambda A, b, **k: fcg(A, b, M=Jacobi(A), **k),
    "gmres": lambda A, b, **k: gmres(A, b, restart=40, **k),
}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_scipy_direct_solve(ctx, case, solver):
    if ctx.size > 1:
        pytest.skip("serial tensors; the GridTensor version below runs on several ranks")
    shape, A, b, singular, mask = problem(case)
    ref = reference(A, b, singular, mask)
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    res = SOLVERS[solver](MatrixOperator(A), bt, rtol=1e-12, max_it=5000)
    assert res.converged, res
    x = res.x.numpy().ravel()
    if singular:
        x[(mask.ravel() if mask is not None else slice(None))] -= x[(mask.ravel() if mask is not None else slice(None))].mean()
    assert relerr(x, ref) < 1e-8
    assert res.iterations == len(res.residual_norms) - 1
    np.testing.assert_array_equal(bt.numpy().ravel(), b.ravel())  # b not mutated


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("case", ["2d-dirichlet", "3d-obstacle", "3d-periodic"])
def test_gridtensor_same_as_serial(ctx, case, solver):
    """On 1, 2 or 4 ranks: the same iterates as a serial solve (solution to 1e-10, identical iteration count)."""
    shape, A, b, singular, mask = problem(case)
    grid = ProcessGrid(ctx, shape)
    full = torch.from_numpy(b).reshape(1, 1, *shape)
    op = MatrixOperator(A)
    serial = SOLVERS[solver](op, full, rtol=1e-10)
    dist = SOLVERS[solver](op, GridTensor.from_global(full, grid), rtol=1e-10)
    assert dist.reason == serial.reason == ConvergedReason.CONVERGED_RTOL
    assert dist.iterations == serial.iterations
    x = dist.x.gather()
    assert torch.allclose(x, serial.x, rtol=0, atol=1e-10 * float(serial.x.abs().max()))
    ref = reference(A, b, singular, mask)
    xs = x.numpy().ravel().copy()
    if singular:
        sel = mask.ravel() if mask is not None else slice(None)
        xs[sel] -= xs[sel].mean()
    assert relerr(xs, ref) < 1e-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_float32_and_float64(ctx, dtype, solver):
    shape, A, b, _, _ = problem("2d-dirichlet")
    op = MatrixOperator(A, dtype=dtype)
    bt = torch.from_numpy(b).to(dtype).reshape(1, 1, *shape)
    res = SOLVERS[solver](op, bt, rtol=1e-5)
    assert res.converged and res.x.dtype == dtype
    x = res.x.double().numpy().ravel()
    true_res = np.linalg.norm(b.ravel() - A @ x) / np.linalg.norm(b)
    assert true_res < (1e-4 if dtype == torch.float32 else 1.01e-5)


def test_stopping_rules():
    shape, A, b, _, _ = problem("2d-dirichlet")
    op = MatrixOperator(A)
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    bnorm = float(bt.norm())
    res = cg(op, bt, rtol=1e-6)
    assert res.residual_norms[-1] <= 1e-6 * bnorm < res.residual_norms[-2]
    res = cg(op, bt, rtol=1e-30, atol=1e-3)
    assert res.reason == ConvergedReason.CONVERGED_ATOL and res.residual_norms[-1] < 1e-3 <= res.residual_norms[-2]
    res = cg(op, bt, max_it=5)
    assert res.reason == ConvergedReason.DIVERGED_ITS and res.iterations == 5 and not res.converged
    with pytest.raises(SolverError, match="DIVERGED_ITS"):
        res.raise_if_failed()
    # nonzero guess: reference is ||b|| by default, ||r0|| with reference="initial"
    x0 = torch.full_like(bt, 10.0)
    r0 = float((bt - op.apply(x0)).norm())
    res = cg(op, bt, x0, rtol=1e-6, reference="initial")
    assert res.residual_norms[0] == pytest.approx(r0) and res.residual_norms[-1] <= 1e-6 * r0
    res = cg(op, bt, x0, rtol=1e-6)
    assert res.info["reference_norm"] == pytest.approx(bnorm)
    # dtol: a wrong-signed preconditioner-free run on -A diverges immediately with a reason
    with pytest.raises(ValueError, match="rtol"):
        cg(op, bt, rtol=2.0)


def test_cg_refuses_known_nonsymmetric_and_reports_indefinite():
    shape, A, b, _, _ = problem("2d-dirichlet")
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    S = sp.triu(A, 1)
    Ans = (A + 0.3 * (S - S.T)).tocsr()  # convection-like skew part: positive real, non-symmetric
    nonsym = MatrixOperator(Ans)
    assert nonsym.is_symmetric is False
    with pytest.raises(ValueError, match="symmetric.*gmres"):
        cg(nonsym, bt)
    res = gmres(nonsym, bt, rtol=1e-12, restart=20)
    assert res.converged
    assert relerr(res.x.numpy().ravel(), sla.spsolve(Ans.tocsc(), b.ravel())) < 1e-8
    neg = MatrixOperator(-A)
    res = cg(neg, bt)
    assert res.reason == ConvergedReason.DIVERGED_INDEFINITE_MAT and "not positive definite" in res.message
    assert res.iterations == 0
    indefinite = MatrixOperator(A - 2.0 * sp.eye(A.shape[0]))
    res = cg(indefinite, bt, max_it=500)
    assert res.reason in (ConvergedReason.DIVERGED_INDEFINITE_MAT, ConvergedReason.CONVERGED_RTOL)
    assert res.reason == ConvergedReason.DIVERGED_INDEFINITE_MAT  # the Laplacian has eigenvalues below 2
    with pytest.raises(ValueError, match="positive definite"):
        cg(MatrixOperator(-A, positive_definite=False), bt)


def test_nan_rhs_is_reported():
    shape, A, b, _, _ = problem("2d-dirichlet")
    bt = torch.from_numpy(b).reshape(1, 1, *shape).clone()
    bt[0, 0, 3, 4] = float("nan")
    for solver in (cg, fcg, gmres):
        res = solver(MatrixOperator(A), bt)
        assert res.reason == ConvergedReason.DIVERGED_NANORINF and "right-hand side" in res.message
        assert res.iterations == 0


def test_bad_inputs():
    shape, A, b, _, _ = problem("2d-dirichlet")
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    with pytest.raises(TypeError, match="MatrixOperator"):
        cg(A, bt)
    with pytest.raises(TypeError, match="MatrixOperator"):
        cg(torch.from_numpy(A.toarray()), bt)
    with pytest.raises(ValueError, match="square"):
        MatrixOperator(np.ones((3, 4)))
    with pytest.raises(ValueError, match="unknowns"):
        cg(MatrixOperator(laplacian((5, 5))), bt)
    with pytest.raises(ValueError, match="x0"):
        cg(MatrixOperator(A), bt, torch.zeros(1, 1, 3, 3, dtype=bt.dtype))
    with pytest.raises(ValueError, match="norm_type"):
        cg(MatrixOperator(A), bt, norm_type="l1")
    with pytest.raises(TypeError, match="MatrixOperator"):
        cg(MatrixOperator(A), bt, M=A)


def test_rhs_on_wrong_grid(ctx):
    shape = (8, 6)
    grid = ProcessGrid(ctx, shape)
    other = ProcessGrid(ctx, (6, 8))
    A = laplacian(shape)
    op = FunctionOperator(MatrixOperator(A).apply, A.shape[0])
    op.grid = grid
    b = GridTensor.from_global(torch.ones(1, 1, 6, 8, dtype=torch.float64), other)
    with pytest.raises(ValueError, match="grid"):
        cg(op, b)


def test_norm_types_and_result_fields():
    shape, A, b, _, _ = problem("3d-dirichlet")
    op = MatrixOperator(A)
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    for nt in ("unpreconditioned", "preconditioned", "natural"):
        res = cg(op, bt, M=Jacobi(op), rtol=1e-8, norm_type=nt)
        assert isinstance(res, SolveResult) and res.converged and res.wall_time > 0
        assert res.residual_norms[-1] <= 1e-8 * res.residual_norms[0]
    jac = Jacobi(op)
    d = A.diagonal()
    z = jac.apply(bt)
    np.testing.assert_allclose(z.numpy().ravel(), b.ravel() / d)
    assert pcg(op, bt, rtol=1e-8).iterations == cg(op, bt, M=jac, rtol=1e-8).iterations


def test_flexible_cg_with_changing_preconditioner():
    """FCG converges with a preconditioner that changes every call; plain CG with it may not be reliable."""
    shape, A, b, _, _ = problem("2d-dirichlet")
    op = MatrixOperator(A)
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    calls = {"n": 0}
    dinv = torch.from_numpy(1.0 / A.diagonal()).reshape(1, 1, *shape)

    def varying(r):
        calls["n"] += 1
        return r * dinv * (1.0 + 0.5 * math.sin(calls["n"]))

    res = fcg(op, bt, M=varying, rtol=1e-10, max_it=2000)
    assert res.converged
    assert relerr(res.x.numpy().ravel(), reference(A, b, False, None)) < 1e-8


@pytest.mark.parametrize("fused", ["eager", pytest.param("compile", marks=pytest.mark.slow)])
@pytest.mark.parametrize("norm_type", ["unpreconditioned", "preconditioned", "natural"])
@pytest.mark.parametrize("jacobi", [False, True])
def test_fused_cg_same_iterates(ctx, fused, norm_type, jacobi):
    shape, A, b, singular, mask = problem("3d-obstacle")
    grid = ProcessGrid(ctx, shape)
    op = MatrixOperator(A)
    bt = GridTensor.from_global(torch.from_numpy(b).reshape(1, 1, *shape), grid)
    M = Jacobi(op) if jacobi else None
    ref = cg(op, bt, M=M, rtol=1e-10, norm_type=norm_type)
    res = cg(op, bt, M=M, rtol=1e-10, norm_type=norm_type, fused=fused)
    assert res.iterations == ref.iterations and res.reason == ref.reason
    np.testing.assert_allclose(res.residual_norms, ref.residual_norms, rtol=1e-8)
    torch.testing.assert_close(res.x.local, ref.x.local, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="fused"):
        cg(op, bt, M=lambda r: r, fused="eager")


def test_krylov_solver_setup_once_solve_many():
    shape, A, b, _, _ = problem("2d-dirichlet")
    op = MatrixOperator(A)
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    with pytest.raises(ValueError, match="rtol"):
        KrylovSolver("cg", rtol=-1.0)
    with pytest.raises(ValueError, match="method"):
        KrylovSolver("bicg")
    solver = KrylovSolver("cg", M=Jacobi(), rtol=1e-9).setup(op)
    one = solver.solve(bt)
    two = solver.solve(2.0 * bt)
    assert one.iterations == two.iterations == cg(op, bt, M=Jacobi(op), rtol=1e-9).iterations
    torch.testing.assert_close(two.x, 2.0 * one.x)
    with pytest.raises(SolverError, match="DIVERGED_ITS"):
        KrylovSolver("gmres", max_it=3).setup(op).solve(bt, raise_on_failure=True)
    with pytest.raises(TypeError, match="MatrixOperator"):
        KrylovSolver("cg").setup(A)


def test_cg_iteration_count_bounded_by_n():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    Adense = Q @ np.diag(np.arange(1, 13.0)) @ Q.T
    op = MatrixOperator(Adense, symmetric=True)
    b = torch.from_numpy(rng.standard_normal(12))
    res = cg(op, b, rtol=1e-12)
    assert res.converged and res.iterations <= 13
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(Adense, b.numpy()), rtol=1e-9)


def test_jacobi_zero_pivot_and_missing_diagonal():
    A = sp.diags([0.0, 2.0, 4.0]).tocsr()
    with pytest.raises(ValueError, match="zero entries"):
        Jacobi(MatrixOperator(A))
    z = Jacobi(MatrixOperator(A), zero_pivot="one").apply(torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(z, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    with pytest.raises(TypeError, match="diagonal"):
        Jacobi(FunctionOperator(lambda x: x, 3))


def test_plain_and_one_rank_gridtensor_take_the_same_path():
    """A plain right-hand side is solved as its one-rank GridTensor view: same iterates, bit for bit; the solution
    comes back in the caller's layout, and a user function still receives tensors of the caller's shape."""
    from deepkrylov.distributed import as_grid_tensor, serial_grid

    shape, A, b, _, _ = problem("3d-obstacle")
    op = MatrixOperator(A)
    bt = torch.from_numpy(b).reshape(1, 1, *shape)
    bg, restore = as_grid_tensor(bt, shape)
    assert bg.grid is serial_grid(shape) and bg.local.data_ptr() == bt.data_ptr()
    for solve in (lambda rhs: cg(op, rhs, M=Jacobi(op), rtol=1e-10), lambda rhs: gmres(op, rhs, rtol=1e-10)):
        plain, grid = solve(bt), solve(bg)
        assert isinstance(plain.x, torch.Tensor) and plain.x.shape == bt.shape
        assert isinstance(grid.x, GridTensor)
        assert torch.equal(plain.x, restore(grid.x)) and plain.residual_norms == grid.residual_norms
    shape, A, b, _, _ = problem("3d-dirichlet")
    op, bt = MatrixOperator(A), torch.from_numpy(b).reshape(1, 1, *shape)
    seen = []

    def fn(v: torch.Tensor) -> torch.Tensor:
        seen.append(type(v))
        assert v.shape == (b.size,)
        return op.apply(v)

    flat = cg(FunctionOperator(fn, A.shape[0], symmetric=True), bt.reshape(-1), M=lambda r: r * 0.25, rtol=1e-10)
    assert flat.x.shape == (b.size,) and set(seen) == {torch.Tensor}
    ref = reference(A, b, False, None)
    assert relerr(flat.x.numpy(), ref) < 1e-8
    with pytest.raises(ValueError, match="shape"):
        cg(FunctionOperator(lambda v: v[:3], A.shape[0]), bt.reshape(-1))
