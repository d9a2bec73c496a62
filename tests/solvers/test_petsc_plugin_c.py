"""A PETSc C program (examples/petsc_plugin/poisson.c) uses deepkrylov's CG and preconditioner through the options
database only (``-python``, ``-ksp_type python``, ``-pc_type python``), serially and on 2 ranks; iteration counts
and solutions equal PETSc's own KSPCG / PCJACOBI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("petsc4py", reason="petsc4py is not installed (pip install deepkrylov[petsc] or scripts/setup.sh)")
from deepkrylov.solvers.petsc import embedding_environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "petsc_plugin"
PETSC_DIR = os.environ.get("PETSC_DIR", "/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real")

pytestmark = [pytest.mark.petsc, pytest.mark.slow]


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    if shutil.which("mpicc") is None or shutil.which("make") is None:
        pytest.skip("mpicc or make is not installed")
    if not Path(PETSC_DIR, "include", "petsc.h").exists():
        pytest.skip(f"PETSc headers not found under PETSC_DIR={PETSC_DIR}")
    build = tmp_path_factory.mktemp("petsc_plugin")
    for name in ("poisson.c", "Makefile"):
        shutil.copy(EXAMPLE / name, build / name)
    out = subprocess.run(["make", f"PETSC_DIR={PETSC_DIR}"], cwd=build, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return build / "poisson"


def run(driver: Path, args: list[str], ranks: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    emb = embedding_environment()
    env["PYTHONPATH"] = emb["PYTHONPATH"]
    cmd = [str(driver), *args, "-python", emb["python"]]
    if ranks > 1:
        if shutil.which("mpiexec") is None:
            pytest.skip("mpiexec is not installed")
        cmd = ["mpiexec", "-n", str(ranks), "--allow-run-as-root", "--oversubscribe", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, f"{cmd}\nrc={out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    m = re.search(r"ksp_type (\S+) iterations (\d+) reason (\S+) residual (\S+) xnorm (\S+)", out.stdout)
    assert m, out.stdout
    return {"ksp": m[1], "its": int(m[2]), "reason": m[3], "rnorm": float(m[4]), "xnorm": float(m[5]),
            "stdout": out.stdout}


COMMON = ["-ksp_rtol", "1e-8", "-ksp_norm_type", "unpreconditioned"]


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("dim,n", [(2, 24), (3, 10)])
@pytest.mark.parametrize("pc", ["none", "jacobi"])
def test_ksp_python_cg_equals_kspcg(driver, ranks, dim, n, pc):
    args = ["-dim", str(dim), "-n", str(n), "-pc_type", pc, *COMMON]
    ref = run(driver, args, ranks)
    ours = run(driver, [*args, "-ksp_type", "python", "-ksp_python_type", "deepkrylov.solvers.petsc.CG"], ranks)
    assert ref["ksp"] == "cg" and ours["ksp"] == "python"
    assert ours["reason"] == ref["reason"] == "CONVERGED_RTOL"
    assert abs(ours["its"] - ref["its"]) <= 1
    assert ours["xnorm"] == pytest.approx(ref["xnorm"], rel=1e-7)


@pytest.mark.parametrize("ranks", [1, 2])
def test_pc_python_jacobi_equals_pcjacobi(driver, ranks):
    args = ["-dim", "3", "-n", "10", *COMMON]
    ref = run(driver, [*args, "-pc_type", "jacobi"], ranks)
    ours = run(driver, [*args, "-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.PC",
                        "-deepkrylov_pc_type", "jacobi"], ranks)
    assert ours["its"] == ref["its"] and ours["xnorm"] == pytest.approx(ref["xnorm"], rel=1e-10)


def test_default_preconditioned_norm(driver):
    """Without -ksp_norm_type both use PETSc's default for CG (the preconditioned norm)."""
    args = ["-dim", "2", "-n", "20", "-pc_type", "jacobi"]
    ref = run(driver, args)
    ours = run(driver, [*args, "-ksp_type", "python", "-ksp_python_type", "deepkrylov.solvers.petsc.CG"])
    assert ours["its"] == ref["its"] and ours["rnorm"] == pytest.approx(ref["rnorm"], rel=1e-6)


def test_monitor_sees_every_iteration(driver):
    out = run(driver, ["-dim", "2", "-n", "12", *COMMON, "-ksp_type", "python",
                       "-ksp_python_type", "deepkrylov.solvers.petsc.CG", "-ksp_monitor"])
    lines = re.findall(r"^\s*(\d+) KSP Residual norm", out["stdout"], flags=re.M)
    assert [int(v) for v in lines] == list(range(out["its"] + 1))


@pytest.mark.parametrize("ranks", [1, 2])
def test_python_obstacle_example(ranks):
    """examples/petsc_plugin/poisson_obstacle.py: our CG and PETSc CG+Jacobi agree (same iterations) on 1 and 2 ranks."""
    import sys

    cmd = [sys.executable, str(EXAMPLE / "poisson_obstacle.py"), "--n", "16"]
    if ranks > 1:
        if shutil.which("mpiexec") is None:
            pytest.skip("mpiexec is not installed")
        cmd = ["mpiexec", "-n", str(ranks), "--allow-run-as-root", "--oversubscribe", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    ours = int(re.search(r"deepkrylov CG\+Jacobi .*?: (\d+) iterations", out.stdout)[1])
    petsc = int(re.search(r"PETSc CG\+jacobi: (\d+) iterations", out.stdout)[1])
    assert abs(ours - petsc) <= 1
    assert float(re.search(r"PETSc CG\+gamg .*difference to ours (\S+)", out.stdout)[1]) < 1e-6


# ---- DCDMPC from the C program: the grid from the KSP's DMDA or from -deepkrylov_grid ------------------------------
DCDMPC = ["-dim", "3", "-n", "12", "-ksp_type", "fcg", "-ksp_fcg_mmax", "2", "-pc_type", "python",
          "-pc_python_type", "deepkrylov.solvers.petsc.DCDMPC", "-ksp_rtol", "1e-6", "-ksp_max_it", "300"]


def run_raw(driver: Path, args: list[str], ranks: int = 1, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    emb = embedding_environment()
    env["PYTHONPATH"] = emb["PYTHONPATH"]
    cmd = [str(driver), *args, "-python", emb["python"]]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), "--allow-run-as-root", "--oversubscribe", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_dcdm_pc_finds_its_grid_from_the_dm_or_the_option(driver):
    """The README's DCDMPC line in the C driver, on 1 and 2 ranks: with the DMDA on the KSP (what poisson.c does)
    and, without it (-set_ksp_dm 0), from -deepkrylov_grid; the same iterations everywhere."""
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not installed")
    its = {}
    for ranks in (1, 2):
        for how, extra in (("dm", []), ("option", ["-set_ksp_dm", "0", "-deepkrylov_grid", "12,12,12"])):
            out = run(driver, [*DCDMPC, *extra], ranks)
            assert out["ksp"] == "fcg" and out["reason"] == "CONVERGED_RTOL", out["stdout"]
            its[ranks, how] = out["its"]
    assert max(its.values()) - min(its.values()) <= 1, its


@pytest.mark.parametrize("ranks", [1, 2])
def test_dcdm_pc_without_a_grid_is_a_clear_error(driver, ranks):
    """No DMDA on the KSP and no option: PETSc reports the plugin's error, which names the option; no hang."""
    if ranks > 1 and shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not installed")
    out = run_raw(driver, [*DCDMPC, "-set_ksp_dm", "0"], ranks, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "needs a 3D grid" in text and "-deepkrylov_grid 64,64,64" in text, text[-3000:]


# ---- the multigrid PC plugin in PETSc's CG: poisson.c's matrix is symmetric (no boundary rows) ------------------
@pytest.mark.parametrize("dim", [2, 3])
def test_pc_python_mg_in_cg(driver, dim):
    """-pc_python_type deepkrylov.solvers.petsc.MG reads poisson.c's matrix back (its eliminated boundary: an EMPTY
    layer outside each face; 30 + 2 cells halve to 4); PETSc's CG converges with it in the same iterations on 1 and 2
    ranks, and in no more than with -pc_type gamg."""
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not installed")
    args = ["-dim", str(dim), "-n", "30", *COMMON]
    mg = [run(driver, [*args, "-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.MG"], r)
          for r in (1, 2)]
    gamg = run(driver, [*args, "-pc_type", "gamg"])
    assert all(o["ksp"] == "cg" and o["reason"] == "CONVERGED_RTOL" for o in mg), mg
    assert mg[0]["its"] == mg[1]["its"] and mg[0]["xnorm"] == pytest.approx(mg[1]["xnorm"], rel=1e-10)
    assert mg[0]["xnorm"] == pytest.approx(gamg["xnorm"], rel=1e-6)
    assert mg[0]["its"] <= gamg["its"], (mg[0]["its"], gamg["its"])


def test_pc_python_mg_grid_from_the_option_or_a_clear_error(driver):
    """Without a DMDA on the KSP (-set_ksp_dm 0) MG takes the grid from -deepkrylov_grid (the same iterations as
    with the DMDA), and without either it stops with an error that names the option."""
    args = ["-dim", "3", "-n", "14", *COMMON, "-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.MG"]
    with_dm = run(driver, args)
    with_option = run(driver, [*args, "-set_ksp_dm", "0", "-deepkrylov_grid", "14,14,14"])
    assert with_dm["reason"] == with_option["reason"] == "CONVERGED_RTOL"
    assert with_dm["its"] == with_option["its"]
    out = run_raw(driver, [*args, "-set_ksp_dm", "0"])
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "not a 3-point stencil" in text and "-deepkrylov_grid nx,ny,nz" in text, text[-3000:]
