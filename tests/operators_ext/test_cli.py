"""``deepkrylov train mgno|fno|converted-unet`` end to end: generate Darcy data, train through the shared Trainer,
and evaluate the trained model zero-shot at twice the training resolution."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepkrylov.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def darcy(tmp_path_factory):
    d = tmp_path_factory.mktemp("darcy")
    for n, samples, name in ((32, 24, "train.h5"), (64, 4, "fine.h5")):
        r = _cli("datagen", "darcy", "--samples", str(samples), "--n", str(n), "--out", name, cwd=d)
        assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("model, extra", [
    ("mgno", ["--width", "8", "--layers", "2"]),
    ("fno", ["--width", "8", "--layers", "2", "--modes", "6"]),
    ("converted-unet", ["--width", "4", "--layers", "2"]),
])
def test_train_and_zero_shot_eval(darcy, model, extra) -> None:
    out = f"run_{model}"
    r = _cli("train", model, "--data", "train.h5", "--ntrain", "20", "--epochs", "3", "--batch-size", "4",
             "--lr", "3e-3", "--out", out, *extra, cwd=darcy)
    assert r.returncode == 0, r.stderr
    hist = [json.loads(line) for line in (darcy / out / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 3 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    spec = json.loads((darcy / out / "model.json").read_text())
    assert spec["model"] == model and spec["resolution"] == [32, 32]
    r = _cli("eval", "--run", out, "--data", "fine.h5", cwd=darcy)  # zero-shot at 64x64
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["samples"] == 4 and 0.0 < res["rel_l2"] < 1.0


def test_unknown_model_is_named(darcy) -> None:
    r = _cli("train", "resnet", "--data", "train.h5", cwd=darcy)
    assert r.returncode != 0 and "converted-unet" in r.stderr


@pytest.mark.mpi
def test_domain_parallel_mgno_under_mpiexec_matches_serial(darcy) -> None:
    """``mpiexec -n 2 deepkrylov train mgno --domain-parallel``: each sample split over the ranks; the run follows
    the serial one (float32 rounding only) and rank 0 alone writes."""
    from tests.helpers import mpiexec_available, run_mpi

    if not mpiexec_available():
        pytest.skip("mpiexec or mpi4py is not installed")
    common = ["train", "mgno", "--data", str(darcy / "train.h5"), "--ntrain", "12", "--epochs", "2",
              "--batch-size", "4", "--width", "6", "--layers", "2", "--levels", "4", "--lr", "3e-3"]
    script = ("from deepkrylov.cli import main; "
              f"main({common + ['--domain-parallel', '--out', str(darcy / 'dp')]!r})")
    res = run_mpi(2, ["-c", script], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = _cli(*common, "--out", "serial", cwd=darcy)
    assert r.returncode == 0, r.stderr
    dp, serial = ([json.loads(s) for s in (darcy / d / "metrics.jsonl").read_text().splitlines()]
                  for d in ("dp", "serial"))
    assert [h["epoch"] for h in dp] == [1, 2]
    for a, b in zip(dp, serial):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test/rel_l2"] == pytest.approx(b["test/rel_l2"], rel=1e-4)


# -- bad input: one clear line on stderr, a non-zero exit, no traceback -------------------------------------------

def test_not_hdf5_data_is_one_line_without_traceback(darcy) -> None:
    (darcy / "notes.txt").write_text("not an HDF5 file\n")
    r = _cli("train", "mgno", "--data", "notes.txt", "--epochs", "1", cwd=darcy)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["deepkrylov train mgno: 'notes.txt' is not a readable HDF5 file "
                                             "(Unable to synchronously open file (file signature not found))"]


def _fails(argv: list, *expected: str) -> str:
    """``deepkrylov ARGV`` in this process ends with SystemExit carrying one line that holds every ``expected``
    (Python prints such a message alone on stderr and exits with status 1)."""
    from deepkrylov.cli import main

    with pytest.raises(SystemExit) as err:
        main([str(a) for a in argv])
    msg = err.value.code
    assert isinstance(msg, str) and "\n" not in msg, msg
    for part in expected:
        assert part in msg, (part, msg)
    return msg


def test_bad_input_is_named(darcy, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(darcy)
    (darcy / "notes.txt").write_text("not an HDF5 file\n")
    _fails(["datagen", "darcy", "--samples", -3, "--out", tmp_path / "x.h5"], "--samples must be a positive", "-3")
    _fails(["datagen", "burgers", "--samples", 2, "--viscosity", 0, "--out", tmp_path / "x.h5"],
           "--viscosity must be positive")
    _fails(["datagen", "darcy", "--samples", 2, "--viscosity", 0.1, "--out", tmp_path / "x.h5"],
           "--viscosity applies to burgers and navier_stokes only")
    _fails(["datagen", "darcy", "--samples", 2, "--out", "notes.txt/x.h5"], "cannot write --out 'notes.txt/x.h5'")
    _fails(["eval", "--run", tmp_path / "missing", "--data", "train.h5"], "run directory", "does not exist")
    _fails(["eval", "--run", tmp_path, "--data", "train.h5"], "has no model.json")
    _fails(["train", "fno", "--data", "missing.h5"], "data file 'missing.h5' does not exist")
    _fails(["train", "fno", "--data", "train.h5", "--epochs", 0, "--batch-size", 0, "--lr", -1],
           "--epochs must be >= 1, got 0", "--batch-size must be >= 1, got 0", "--lr must be > 0, got -1.0")
    _fails(["train", "fno", "--data", "train.h5", "--ntrain", 30], "need 1 <= --ntrain <= 24")
    _fails(["train", "mgno", "--data", "train.h5", "--levels", 7, "--out", tmp_path / "m"],
           "multiple of 2**(levels-1) = 64", "use --levels 6 or fewer")
    _fails(["train", "mgno", "--data", "train.h5", "--levels", 3, "--resolutions", "8,6"],
           "--resolutions 6 is not a grid this MgNO takes", "nearest valid sizes are 8")
    _fails(["train", "mgno", "--data", "train.h5", "--levels", 3, "--resolutions", "16,48"],
           "--resolutions 48 is not a grid", "nearest valid sizes are 32 and 64")
    _fails(["train", "deeponet", "--data", "train.h5"], "'train.h5' holds inputs (32, 32)", "grid fields: use mgno")
    import numpy as np

    from deepkrylov.operators.data import save_dataset

    save_dataset(str(tmp_path / "anti.h5"), {"u": np.ones((4, 20)), "s": np.ones((4, 30)), "y": np.ones(30)})
    _fails(["train", "fno", "--data", tmp_path / "anti.h5"], "inputs on (20,) and targets on (30,)", "use deeponet")
    _fails(["train", "fno", "--data", "train.h5", "--test", tmp_path / "anti.h5"], "inputs on (20,)")
    # a run: eval's checkpoint and data checks, resume of a damaged checkpoint
    run = tmp_path / "run"
    from deepkrylov.cli import main

    assert main(["train", "fno", "--data", "train.h5", "--ntrain", "8", "--epochs", "1", "--width", "4", "--modes",
                 "2", "--layers", "1", "--out", str(run)]) == 0
    _fails(["eval", "--run", run, "--data", "train.h5", "--checkpoint", "nope.pt"],
           "checkpoint", "nope.pt' does not exist (the run has ['best.pt', 'last.pt'])")
    _fails(["eval", "--run", run, "--data", "notes.txt"], "'notes.txt' is not a readable HDF5 file")
    (run / "junk.pt").write_text("junk")
    _fails(["eval", "--run", run, "--data", "train.h5", "--checkpoint", "junk.pt"], "cannot load the weights")
    save_dataset(str(tmp_path / "b.h5"), {"a": np.ones((2, 32)), "u": np.ones((2, 32))})  # Burgers' layout, 1D
    _fails(["eval", "--run", run, "--data", tmp_path / "b.h5"], "holds 1D fields (32,)", "on 2D grids (32, 32)")
    (run / "last.pt").write_text("junk")
    _fails(["train", "fno", "--data", "train.h5", "--out", run, "--epochs", 2, "--resume"],
           "--resume: cannot read", "last.pt")


def test_domain_parallel_path_on_one_rank_equals_the_plain_run(darcy, tmp_path) -> None:
    """``train fno --domain-parallel`` in one process (HDF5 blocks of the whole grid, statistics from float64 block
    sums, losses on GridTensors) follows the plain run up to float32 rounding; its model.json is the same."""
    from deepkrylov.cli import main

    common = ["train", "fno", "--data", str(darcy / "train.h5"), "--ntrain", "8", "--epochs", "2", "--batch-size",
              "4", "--width", "4", "--modes", "3", "--layers", "1", "--loss", "h1"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--domain-parallel", "--out", str(tmp_path / "dp")]) == 0
    plain, dp = ([json.loads(s) for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                 for d in ("plain", "dp"))
    for a, b in zip(dp, plain):
        for k in ("train_loss", "test/rel_l2", "test/mse"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), k
    spec_dp, spec_plain = (json.loads((tmp_path / d / "model.json").read_text()) for d in ("dp", "plain"))
    assert spec_dp.keys() == spec_plain.keys()
    assert spec_dp["normalization"] == pytest.approx(spec_plain["normalization"], rel=1e-5)
