"""Every example in ``examples/`` runs at a tiny size (seconds), serially, and the distributed ones also on 2 ranks
(one mpiexec launch each); their outputs exist and make sense.

Serial runs call the example's ``main(argv)`` in this process (no interpreter start-up per run)."""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, mpiexec_available, run_mpi

EXAMPLES = ROOT / "examples"


def _load(relpath: str):  # type: ignore[no-untyped-def]
    path = EXAMPLES / relpath
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _petsc() -> bool:
    from deepkrylov.solvers.petsc import petsc_available

    return petsc_available()


def _needs_mpi() -> None:
    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed (run scripts/setup.sh)")


# ---- examples/smoke ------------------------------------------------------------------------------------------------
def _check_smoke(out: Path, steps: int, rtol: float, frames: bool = True) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    assert [r["step"] for r in stats["records"]] == list(range(1, steps + 1))
    moving = [r for r in stats["records"] if r["rhs_norm"] > 0]
    assert moving, "the smoke never moved"
    for r in moving:
        # MAC grid: the divergence left on fluid cells is minus the pressure solve's residual, so the projection
        # leaves at most rtol * ||rhs|| (1% slack: the solvers stop on the recursive residual, this is the true one)
        assert 0 < r["iterations"] and r["div_norm"] <= 1.01 * rtol * r["rhs_norm"], r
    if frames:
        pngs = sorted(out.glob("frame_*.png"))
        assert len(pngs) == steps and all(p.stat().st_size > 1000 for p in pngs)
    return stats


@pytest.mark.parametrize("dim, n, method", [
    (2, 16, "mg"), (2, 16, "cg"), (2, 16, "learned"), (2, 16, "dcdm"), (2, 16, "petsc-icc"), (3, 8, "dcdm"),
])
def test_smoke_methods(tmp_path, dim, n, method) -> None:
    if method == "petsc-icc" and not _petsc():
        pytest.skip("petsc4py is not installed")
    smoke = _load("smoke/smoke.py")
    out = tmp_path / "smoke"
    steps = 3
    assert smoke.main(["--dim", str(dim), "--n", str(n), "--steps", str(steps), "--method", method,
                       "--rtol", "1e-6", "--out", str(out), "--no-gif"]) == 0
    stats = _check_smoke(out, steps, 1e-6)
    assert stats["method"] == method and stats["ranks"] == 1
    if _petsc() and method != "petsc-icc":  # the default compares every step with PETSc ICC
        assert all(r["icc_iterations"] > 0 for r in stats["records"] if r["rhs_norm"] > 0)


def test_smoke_learned_multigrid_3d(tmp_path, capsys) -> None:
    """--method learned runs LearnedMultigrid when weights load (here: a StencilNet's initial weights, which equal
    the classical cycle, so the iterations match --method mg) and says when it falls back."""
    from deepkrylov.solvers.learned_multigrid import StencilNet, save_stencil_net

    weights = tmp_path / "stencils.pt"
    save_stencil_net(StencilNet(dim=3), weights)
    smoke = _load("smoke/smoke.py")
    common = ["--dim", "3", "--n", "16", "--steps", "3", "--no-gif", "--frame-every", "0", "--no-compare-icc"]
    learned_args = ["--method", "learned", "--learned-model", str(weights)]
    assert smoke.main([*common, *learned_args, "--out", str(tmp_path / "l")]) == 0
    assert "unavailable" not in capsys.readouterr().out
    assert smoke.main([*common, "--method", "mg", "--out", str(tmp_path / "mg")]) == 0
    learned, mg = _check_smoke(tmp_path / "l", 3, 1e-6, False), _check_smoke(tmp_path / "mg", 3, 1e-6, False)
    assert [r["iterations"] for r in learned["records"]] == [r["iterations"] for r in mg["records"]]
    assert smoke.main([*common, "--method", "learned", "--learned-model", str(tmp_path / "missing.pt"),
                       "--out", str(tmp_path / "fallback")]) == 0
    assert "using the geometric multigrid" in capsys.readouterr().out


def test_smoke_3d_gif_and_warm_start(tmp_path) -> None:
    smoke = _load("smoke/smoke.py")
    out = tmp_path / "smoke3d"
    assert smoke.main(["--dim", "3", "--n", "16", "--steps", "4", "--method", "mg", "--out", str(out)]) == 0
    stats = _check_smoke(out, 4, 1e-6)
    assert stats["gif"] == ((out / "smoke.gif").exists() and (out / "smoke.gif").stat().st_size > 1000)
    # warm start from the last pressure: later steps need no more iterations than a cold start from zero
    assert stats["records"][-1]["iterations"] <= stats["records"][0]["iterations"] + 2


def test_smoke_bad_size_is_named(capsys) -> None:
    smoke = _load("smoke/smoke.py")
    with pytest.raises(SystemExit):
        smoke.main(["--n", "10"])
    assert "--n must be a multiple of 4" in capsys.readouterr().err


@pytest.mark.mpi
def test_smoke_on_two_ranks_matches_serial(tmp_path) -> None:
    _needs_mpi()
    args = ["--dim", "3", "--n", "16", "--steps", "3", "--method", "mg", "--no-gif", "--frame-every", "0"]
    res = run_mpi(2, [str(EXAMPLES / "smoke" / "smoke.py"), *args, "--out", str(tmp_path / "mpi")], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("smoke 3D") == 1  # rank 0 alone prints
    par = _check_smoke(tmp_path / "mpi", 3, 1e-6, frames=False)
    assert par["ranks"] == 2
    smoke = _load("smoke/smoke.py")
    assert smoke.main([*args, "--out", str(tmp_path / "serial")]) == 0
    ser = _check_smoke(tmp_path / "serial", 3, 1e-6, frames=False)
    # the same simulation: the distributed multigrid takes the serial iterations (rounding may shift one)
    for a, b in zip(par["records"], ser["records"]):
        assert abs(a["iterations"] - b["iterations"]) <= 1
        assert a["rhs_norm"] == pytest.approx(b["rhs_norm"], rel=1e-6)


# ---- examples/train_mgno_mpi.py ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def darcy16(tmp_path_factory) -> str:
    from deepkrylov.operators.data import generate_darcy

    path = tmp_path_factory.mktemp("darcy") / "darcy16.h5"
    generate_darcy(10, n=16, seed=0, path=str(path), progress_bar=False)
    return str(path)


MGNO_TINY = ["--width", "4", "--layers", "1", "--levels", "3", "--batch-size", "4", "--no-progress"]


def _epochs(out: Path) -> list[dict]:
    return [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_mgno_checkpoints_and_resume(darcy16, tmp_path) -> None:
    ex = _load("train_mgno_mpi.py")
    out = tmp_path / "run"
    assert ex.main(["--data", darcy16, "--out", str(out), "--epochs", "2", *MGNO_TINY]) == 0
    for name in ("last.pt", "best.pt", "summary.json", "prediction.png"):
        assert (out / name).exists(), name
    assert [r["epoch"] for r in _epochs(out)] == [1, 2]
    assert ex.main(["--data", darcy16, "--out", str(out), "--epochs", "3", "--resume", *MGNO_TINY]) == 0
    assert [r["epoch"] for r in _epochs(out)] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and 0 < summary["test_rel_l2"] < 2
    # a resume with another learning rate is refused, naming the option and both values
    with pytest.raises(SystemExit, match=r"lr: checkpoint 0.002, now 0.01"):
        ex.main(["--data", darcy16, "--out", str(out), "--epochs", "4", "--resume", "--lr", "1e-2", *MGNO_TINY])


@pytest.mark.mpi
def test_train_mgno_on_two_ranks_with_resume_matches_serial(darcy16, tmp_path) -> None:
    _needs_mpi()
    script = EXAMPLES / "train_mgno_mpi.py"
    common = ["--data", darcy16, *MGNO_TINY]
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(script)!r}, *{common + ['--out', str(tmp_path / 'mpi'), '--epochs', '1']!r}]\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    resume = code.replace("'--epochs', '1']", "'--epochs', '2', '--resume']")
    # one launch: train one epoch, then resume to two (SystemExit(0) from the first run is caught)
    launch = f"try:\n    exec({code!r})\nexcept SystemExit as e:\n    assert not e.code, e\nexec({resume!r})\n"
    res = run_mpi(2, ["-c", launch], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 rank(s)" in res.stdout
    ex = _load("train_mgno_mpi.py")
    assert ex.main([*common, "--out", str(tmp_path / "serial"), "--epochs", "2"]) == 0
    par, ser = _epochs(tmp_path / "mpi"), _epochs(tmp_path / "serial")
    assert [r["epoch"] for r in par] == [1, 2]
    for a, b in zip(par, ser):  # domain-parallel == serial up to float32 rounding, across the resume
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test/rel_l2"] == pytest.approx(b["test/rel_l2"], rel=1e-4)


# ---- Python API examples -------------------------------------------------------------------------------------------
def test_deeponet_antiderivative(tmp_path) -> None:
    ex = _load("deeponet_antiderivative.py")
    out = tmp_path / "deeponet"
    assert ex.main(["--ntrain", "20", "--ntest", "20", "--steps", "200", "--out", str(out), "--no-progress"]) == 0
    assert (out / "deeponet_antiderivative.png").stat().st_size > 1000
    saved = torch.load(out / "model.pt", weights_only=False)
    assert 0 < saved["test"]["rel_l2"] < 0.5  # far better than predicting zero after 200 steps


@pytest.mark.parametrize("model, extra", [("fno", ["--modes", "4"]), ("mgno", ["--levels", "3"])])
def test_darcy_zero_shot(tmp_path, model, extra) -> None:
    ex = _load("darcy_zero_shot.py")
    out = tmp_path / model
    assert ex.main(["--model", model, "--n", "16", "--ntrain", "8", "--ntest", "2", "--epochs", "2", "--width", "4",
                    "--layers", "1", "--batch-size", "4", "--out", str(out), "--no-progress", *extra]) == 0
    last = _epochs(out)[-1]
    assert 0 < last["16/rel_l2"] < 2 and 0 < last["32/rel_l2"] < 3  # evaluated at the training resolution and 2x
    assert (out / "darcy_zero_shot.png").stat().st_size > 1000


# ---- examples/distributed_conv.py ----------------------------------------------------------------------------------
def test_distributed_conv_serial(capsys) -> None:
    runpy.run_path(str(EXAMPLES / "distributed_conv.py"), run_name="__main__")
    assert "max |distributed - torch.nn.Conv3d|" in capsys.readouterr().out


@pytest.mark.mpi
def test_distributed_conv_on_two_ranks() -> None:
    _needs_mpi()
    res = run_mpi(2, [str(EXAMPLES / "distributed_conv.py")], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "on 2 ranks" in res.stdout
