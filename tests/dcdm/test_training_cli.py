"""``deepkrylov train dcdm`` end to end on a small 2D scene: training writes a loadable model and its record,
a second call resumes, ``--init`` fine-tunes a trained model on a finer grid, and a model of the wrong dimension
is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from deepkrylov.solvers.dcdm.model import load_model


def _train(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "deepkrylov.cli", "train", "dcdm", "--dim", "2", "--samples", "40",
           "--lanczos-steps", "40", "--batch-size", "8", "--lr", "1e-3", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_train_resume_and_fine_tune(tmp_path) -> None:
    r = _train("--n", "16", "--epochs", "2", "--out", "coarse", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "coarse" / "record.json").read_text())
    assert record["grid"] == [16, 16] and len(record["history"]) == 2
    assert record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]
    r = _train("--n", "16", "--epochs", "3", "--out", "coarse", cwd=tmp_path)  # resumes: one more epoch
    assert r.returncode == 0, r.stderr
    history = json.loads((tmp_path / "coarse" / "loss.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    coarse = load_model(tmp_path / "coarse" / "model.pt")

    r = _train("--n", "32", "--epochs", "1", "--lr", "0", "--init", "coarse/model.pt", "--out", "fine", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fine = load_model(tmp_path / "fine" / "model.pt")
    for p, q in zip(coarse.parameters(), fine.parameters()):  # lr 0: the fine-tuned model starts from the coarse one
        assert torch.equal(p, q)
    assert json.loads((tmp_path / "fine" / "record.json").read_text())["init"] == "coarse/model.pt"


def test_init_of_the_wrong_dimension_is_refused(tmp_path) -> None:
    r = _train("--n", "16", "--epochs", "1", "--init", "shipped", "--out", "x", cwd=tmp_path)
    assert r.returncode != 0 and "is 3D but the scene is 2D" in r.stderr
