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
