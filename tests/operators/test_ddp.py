"""DDP under mpiexec -n 2 and -n 4: Trainer steps equal the serial steps with the same global batches (float64), including
uneven and empty rank shares; evaluation counts each sample once; data generation split over ranks equals the
serial generation; the CLI under mpiexec trains once (rank 0 writes) and matches the serial CLI run."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import mpiexec_available, run_mpi
from tests.operators._ddp_step import problem, steps
from deepkrylov.operators.data import generate_burgers


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_ddp_step_matches_serial(tmp_path, ranks: int) -> None:
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed")
    out = tmp_path / "ddp.npz"
    res = run_mpi(ranks, ["-m", "tests.operators._ddp_step", str(out)], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = np.load(out)
    assert int(got["size"]) == ranks
    serial, rec = steps()
    _, init_model = problem()
    moved = False
    for i, p in enumerate(serial):
        np.testing.assert_allclose(got[f"p{i}"], p, rtol=1e-12, atol=1e-14)
        moved |= not np.allclose(p, list(init_model.parameters())[i].detach().numpy())
    assert moved  # the steps changed the parameters, so the comparison is not vacuous
    np.testing.assert_allclose(got["metrics"], [rec["train_loss"], rec["train/rel_l2"], rec["train/mse"]],
                               rtol=1e-12)
    np.testing.assert_allclose(got["burgers"], generate_burgers(5, n=32, T=0.05, progress_bar=False)["u"],
                               rtol=0, atol=1e-14)


def _params(path) -> list[np.ndarray]:
    import torch

    return [v.numpy() for v in torch.load(path, map_location="cpu", weights_only=False)["model"].values()]


@pytest.mark.mpi
def test_cli_under_mpiexec_matches_serial(tmp_path) -> None:
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed")
    import json
    import subprocess
    import sys


    data = str(tmp_path / "b.h5")
    # SGD: Adam's sign-like steps would turn rounding in a near-zero gradient (the bias) into lr-sized gaps
    train = ["train", "deeponet", "--data", data, "--epochs", "3", "--batch-size", "4", "--branch", "8,8",
             "--trunk", "8,8", "--optimizer", "sgd", "--lr", "0.01"]
    script = ("import sys; from deepkrylov.cli import main; "
              f"main(['datagen', 'burgers', '--samples', '10', '--n', '32', '--out', {data!r}]); "
              f"main({train + ['--out', str(tmp_path / 'ddp')]!r})")
    res = run_mpi(2, ["-c", script], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("wrote") == 1 and res.stdout.count('"epoch": 3') == 1  # rank 0 reports, once
    from deepkrylov.operators.data import load_dataset

    np.testing.assert_allclose(load_dataset(data)[0]["u"], generate_burgers(10, n=32, progress_bar=False)["u"],
                               rtol=0, atol=1e-14)
    serial = f"from deepkrylov.cli import main; main({train + ['--out', str(tmp_path / 'serial')]!r})"
    r = subprocess.run([sys.executable, "-c", serial], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(s) for s in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]  # one writer
    for a, b in zip(_params(tmp_path / "ddp" / "last.pt"), _params(tmp_path / "serial" / "last.pt")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # float32: same batches, rounding only
