"""The distributed suites on real MPI ranks (1, 2, 4), with both engines, and abort-on-error behaviour."""

from __future__ import annotations

import time

import pytest

from tests.helpers import mpiexec_available, run_mpi, run_pytest_mpi

pytestmark = pytest.mark.mpi
SUITES = [
    "tests/distributed/test_halo.py",
    "tests/distributed/test_layers.py",
    "tests/distributed/test_comm.py",
    "tests/distributed/test_petsc_dmda.py",
    "tests/distributed/test_fft.py",
]


@pytest.mark.parametrize("backend", ["mpi", "torch"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_distributed_suite_on_ranks(n, backend):
    run_pytest_mpi(n, SUITES, backend=backend)  # one launch for all files: start-up dominates their run time


@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_error_on_one_rank_ends_the_job(backend):
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed")
    script = (
        "import time\n"
        "from deepkrylov.distributed import init\n"
        f"ctx = init(backend={backend!r})\n"
        "if ctx.rank == 2:\n"
        "    raise RuntimeError('rank two cannot go on: bad input file')\n"
        "ctx.comm.barrier()\n"
        "time.sleep(600)\n"
    )
    t0 = time.time()
    res = run_mpi(4, ["-c", script], timeout=120)
    elapsed = time.time() - t0
    assert res.returncode != 0
    assert "rank two cannot go on: bad input file" in res.stderr + res.stdout
    assert "rank 2/4" in res.stderr + res.stdout
    assert elapsed < 60, f"job took {elapsed:.1f}s to end"


def test_suite_under_torchrun():
    """init() recognises torchrun and runs the same suite over torch.distributed (gloo)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    res = subprocess.run(
        [str(torchrun) if torchrun.exists() else "torchrun", "--nproc-per-node", "2", "-m", "pytest", "-q", "-x",
         "-p", "no:cacheprovider", SUITES[0], SUITES[1]],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
