"""DDP under mpiexec -n 2: one Trainer step equals one serial step with the same global batch (float64); data
generation split over ranks equals the serial generation."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import mpiexec_available, run_mpi
from tests.operators._ddp_step import one_step
from deepkrylov.operators.data import generate_burgers


@pytest.mark.mpi
def test_ddp_step_matches_serial(tmp_path) -> None:
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed")
    out = tmp_path / "ddp.npz"
    res = run_mpi(2, ["-m", "tests.operators._ddp_step", str(out)], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = np.load(out)
    assert int(got["size"]) == 2
    serial = one_step()
    _, init_model = __import__("tests.operators._ddp_step", fromlist=["problem"]).problem()
    moved = False
    for i, p in enumerate(serial):
        np.testing.assert_allclose(got[f"p{i}"], p, rtol=1e-12, atol=1e-14)
        moved |= not np.allclose(p, list(init_model.parameters())[i].detach().numpy())
    assert moved  # the step changed the parameters, so the comparison is not vacuous
    np.testing.assert_allclose(got["burgers"], generate_burgers(5, n=32, T=0.05, progress_bar=False)["u"],
                               rtol=0, atol=1e-14)
