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


def run_pytest_mpi(n: int, target: str | list[str], backend: str = "mpi", timeout: float = 600) -> None:
    """Run a pytest file (or a list of files, in one launch) on ``n`` ranks and fail with its output unless every
    rank passed."""
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed (run scripts/setup.sh)")
    res = run_mpi(
        n, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *([target] if isinstance(target, str) else target)],
        env={"DEEPKRYLOV_TEST_BACKEND": backend}, timeout=timeout,
    )
    if res.returncode != 0:
        pytest.fail(f"{target} on {n} ranks ({backend}) failed, rc={res.returncode}\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")


def assert_matches_serial(ctx, module, x_full, grid, atol=1e-10, param_rtol=1e-10, **forward):  # type: ignore[no-untyped-def]
    """``module`` on the GridTensor blocks of ``x_full`` equals ``module(x_full)`` on one process: the output
    (gathered), the input gradient (this rank's block) and the parameter gradients (all-reduced over ranks)."""
    import torch

    from deepkrylov.distributed import GridTensor

    x_loc = GridTensor.from_global(x_full, grid).local.clone().requires_grad_(True)
    y = module(GridTensor(x_loc, grid), **forward)
    xs = x_full.clone().requires_grad_(True)
    ref = module(xs)
    y_full = y.gather()
    torch.testing.assert_close(y_full, ref, rtol=0, atol=atol)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(99), dtype=ref.dtype)
    module.zero_grad()
    (y_full * w).sum().backward()
    grads = [ctx.comm.allreduce_(p.grad.clone()) for p in module.parameters()]
    module.zero_grad()
    (ref * w).sum().backward()
    for g, p in zip(grads, module.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=param_rtol, atol=param_rtol)
    torch.testing.assert_close(x_loc.grad, xs.grad[(slice(None), slice(None)) + grid.local_slices], rtol=0, atol=atol)
    return y


def assert_trainer_matches_serial(ctx, make_model, shape, samples, n_test, **cfg):  # type: ignore[no-untyped-def]
    """``Trainer(grid=ProcessGrid(ctx, shape))`` on GridTensor blocks reaches the parameters, last training loss and
    test rel L2 of the serial Trainer (1e-10), from the same float64 data and the model ``make_model()`` built
    after the same seed."""
    import torch
    from torch.utils.data import TensorDataset

    from deepkrylov.distributed import ProcessGrid
    from deepkrylov.operators import Trainer

    g = torch.Generator().manual_seed(7)
    x = torch.randn((samples, 1) + tuple(shape), generator=g, dtype=torch.float64)
    y = torch.randn((samples, 1) + tuple(shape), generator=g, dtype=torch.float64)
    cfg = dict(dict(lr=1e-2, progress=False, loss="l2", loss_dim=len(shape)), **cfg)
    runs = []
    for grid in (ProcessGrid(ctx, tuple(shape)), None):
        torch.manual_seed(5)
        model = make_model(x, y).double()
        trainer = Trainer(model, cfg, grid=grid)
        hist = trainer.fit(TensorDataset(x, y), {"test": TensorDataset(x[:n_test], y[:n_test])})
        runs.append((model, hist))
        del trainer
    (dist, hd), (serial, hs) = runs
    for p, q in zip(dist.parameters(), serial.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)
    assert abs(hd[-1]["train_loss"] - hs[-1]["train_loss"]) < 1e-10
    assert abs(hd[-1]["test/rel_l2"] - hs[-1]["test/rel_l2"]) < 1e-10
