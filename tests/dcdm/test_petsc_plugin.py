"""DCDM inside PETSc: the ``-ksp_type python`` DCDM plugin takes the same iterations (the same residual history)
as DCDM called from Python, and the network PC drives PETSc's flexible CG; from petsc4py and from a C program."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.solvers.dcdm import DCDMNet, dcdm
from deepkrylov.solvers.dcdm.model import save_model
from deepkrylov.solvers.problems import scene_problem

pytest.importorskip("petsc4py.PETSc", reason="petsc4py is not installed (pip install deepkrylov[petsc] or scripts/setup.sh)")
P = pytest.importorskip("deepkrylov.solvers.petsc")
pytestmark = pytest.mark.petsc
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dcdm") / "model.pt"
    save_model(DCDMNet(width=4, pre=2, mid=1, post=1), path)
    # every rank must use the same file: rank 0's name is broadcast by the ranks' common tmp root
    return path


def test_ksp_plugin_equals_python_dcdm(ctx, model_file):
    if ctx.comm.name == "torch":
        pytest.skip("PETSc runs on the MPI engine")
    path = ctx.comm.bcast_object(str(model_file))
    A, b = scene_problem(16, 3, "smoke")
    grid = ProcessGrid(ctx, A.grid.shape)
    bt = GridTensor.from_global(b, grid)
    from deepkrylov.solvers.dcdm.model import load_model

    ref = dcdm(A, bt, load_model(path), rtol=1e-12, max_it=12)
    plug = P.petsc_solve(A, bt, ksp_type="python", pc_type="none", rtol=1e-12, max_it=12,
                         options={"ksp_python_type": "deepkrylov.solvers.petsc.DCDM", "ksp_dcdm_model": path})
    assert plug.info["ksp_type"] == "python"
    assert plug.iterations == ref.iterations == 12
    # the network runs in float32 (relative rounding ~1e-7 per call), and on this right-hand side the first dozen
    # directions barely reduce the residual, so rounding differences of the two call paths accumulate to ~1e-6
    np.testing.assert_allclose(plug.residual_norms, ref.residual_norms, rtol=1e-5)
    np.testing.assert_allclose(plug.x.gather().numpy(), ref.x.gather().numpy(), rtol=0, atol=2e-5)  # |x| ~ 0.016


def test_pc_plugin_drives_fcg(ctx):
    """The shipped network as PETSc PC inside KSPFCG (mmax 2) solves the scene it was trained on."""
    if ctx.comm.name == "torch":
        pytest.skip("PETSc runs on the MPI engine")
    if ctx.size > 1:  # the network on GridTensor blocks equals serial: test_network/test_iteration on ranks
        pytest.skip("serial only: 300 network calls on split blocks take a minute on 2 cores")
    from deepkrylov.solvers.dcdm.model import shipped_model_record

    n = shipped_model_record().get("grid", [16])[0]
    A, b = scene_problem(n, 3, "smoke")
    bt = GridTensor.from_global(b, ProcessGrid(ctx, A.grid.shape))
    res = P.petsc_solve(A, bt, ksp_type="fcg", pc_type="none", rtol=1e-6, max_it=1000,
                        options={"ksp_fcg_mmax": 2, "pc_type": "python",
                                 "pc_python_type": "deepkrylov.solvers.petsc.DCDMPC"})
    assert res.info["pc_type"] == "python" and res.converged, res
    assert float((bt - A.apply(res.x)).norm()) <= 1.01e-6 * float(bt.norm())


def _c_driver(tmp_path: Path) -> Path:
    petsc_dir = os.environ.get("PETSC_DIR", "/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real")
    if shutil.which("mpicc") is None or not Path(petsc_dir, "include", "petsc.h").exists():
        pytest.skip("mpicc or PETSc headers are missing")
    for name in ("poisson.c", "Makefile"):
        shutil.copy(ROOT / "examples" / "petsc_plugin" / name, tmp_path / name)
    out = subprocess.run(["make", f"PETSC_DIR={petsc_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp_path / "poisson"


@pytest.mark.slow
def test_c_program_runs_dcdm_plugin_serial_and_on_two_ranks(tmp_path, model_file, ctx):
    if ctx.size > 1:
        pytest.skip("launches its own MPI jobs")
    driver = _c_driver(tmp_path)
    emb = P.embedding_environment()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=emb["PYTHONPATH"])
    results = {}
    for ranks in (1, 2):
        cmd = [str(driver), "-dim", "3", "-n", "12", "-ksp_type", "python",
               "-ksp_python_type", "deepkrylov.solvers.petsc.DCDM", "-ksp_dcdm_model", str(model_file),
               "-ksp_rtol", "1e-12", "-ksp_max_it", "10", "-python", emb["python"]]
        if ranks > 1:
            cmd = ["mpiexec", "-n", "2", "--allow-run-as-root", "--oversubscribe", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        m = re.search(r"ksp_type (\S+) iterations (\d+) reason (\S+) residual (\S+)", out.stdout)
        assert m and m[1] == "python", out.stdout
        results[ranks] = (int(m[2]), float(m[4]))
    assert results[1][0] == results[2][0] == 10
    assert abs(results[1][1] - results[2][1]) <= 1e-5 * results[1][1]
