"""Helpers for tests that launch real MPI jobs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mpiexec_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


def run_mpi(n: int, args: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` on ``n`` real MPI ranks (OpenMPI flags for root and for more ranks than cores)."""
    cmd = ["mpiexec", "-n", str(n)]
    out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True)
    if "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr:
        cmd += ["--allow-run-as-root", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full_env.pop("PYTEST_CURRENT_TEST", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        cmd + [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )


def run_pytest_mpi(n: int, target: str, backend: str = "mpi", timeout: float = 600) -> None:
    """Run a pytest file on ``n`` ranks and fail with its output unless every rank passed."""
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed (run scripts/setup.sh)")
    res = run_mpi(
        n, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", target],
        env={"DEEPKRYLOV_TEST_BACKEND": backend}, timeout=timeout,
    )
    if res.returncode != 0:
        pytest.fail(f"{target} on {n} ranks ({backend}) failed, rc={res.returncode}\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
