"""Losses against NumPy/analytic values; Trainer: error reduction, bitwise resume, interrupted runs, bad config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from deepkrylov.operators import MODELS, DeepONet, H1Loss, LpLoss, Trainer


def test_lp_loss_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    ref = np.mean([np.linalg.norm((a[i] - b[i]).ravel()) / np.linalg.norm(b[i].ravel()) for i in range(4)])
    assert float(LpLoss(2)(torch.tensor(a), torch.tensor(b))) == pytest.approx(ref, rel=1e-12)
    ref1 = np.sum([np.abs(a[i] - b[i]).sum() / np.abs(b[i]).sum() for i in range(4)])
    assert float(LpLoss(1, reduction="sum")(torch.tensor(a), torch.tensor(b))) == pytest.approx(ref1, rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        LpLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        LpLoss(reduction="avg")


def test_h1_loss_analytic_periodic() -> None:
    # e = c sin(2 pi x), t = sin(2 pi x): |e|_H1 / |t|_H1 = c for any c (ratio independent of the FD factor)
    n = 256
    x = torch.arange(n, dtype=torch.float64) / n
    t = torch.sin(2 * math.pi * x)[None]
    assert float(H1Loss(1, periodic=True)(1.3 * t, t)) == pytest.approx(0.3, rel=1e-10)
    # gradient part: |t'|^2 / |t|^2 -> (2 pi)^2, so H1 norm^2 / L2 norm^2 = 1 + (2 pi)^2 up to O(h^2)
    h1 = H1Loss(1, periodic=True)._sq_norm(t)
    assert float(h1 / (t**2).sum()) == pytest.approx(1 + (2 * math.pi) ** 2, rel=1e-3)


def _problem() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 4, generator=g)
    y = torch.stack([torch.sin(x.sum(1)), x[:, 0] * x[:, 1]], 1)
    return TensorDataset(x, y)


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))


CFG = dict(batch_size=16, lr=1e-2, scheduler="step", step_size=2, gamma=0.7, progress=False, loss="mse")


def test_training_reduces_error_by_factor_10(tmp_path) -> None:
    ds = _problem()
    tr = Trainer(_model(), dict(CFG, epochs=30), out_dir=str(tmp_path))
    first = tr.evaluate(ds)["mse"]
    hist = tr.fit(ds, {"val": ds})
    assert hist[-1]["val/mse"] < first / 10
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 31))
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


def test_resume_is_bitwise(tmp_path) -> None:
    ds = _problem()
    full = Trainer(_model(), dict(CFG, epochs=5))
    full.fit(ds, {"val": ds})
    part = Trainer(_model(), dict(CFG, epochs=2), out_dir=str(tmp_path))
    part.fit(ds, {"val": ds})
    # "interrupted" after epoch 2: a new process resumes from last.pt and keeps the finished epochs
    torch.manual_seed(12345)  # the fresh process's RNG state must not matter
    rest = Trainer(_model(), dict(CFG, epochs=5), out_dir=str(tmp_path))
    rest.fit(ds, {"val": ds}, resume=True)
    assert rest.epoch == 5
    for a, b in zip(full.module.parameters(), rest.module.parameters()):
        assert torch.equal(a, b)
    epochs = [json.loads(s)["epoch"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]


def test_bad_config_and_checkpoint(tmp_path) -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Trainer(_model(), {"optimizer": "lbfgs"})
    with pytest.raises(ValueError, match="unknown training option"):
        Trainer(_model(), {"epoch": 3})
    with pytest.raises(ValueError, match="loss must be one of"):
        Trainer(_model(), {"loss": "l3"})
    with pytest.raises(FileNotFoundError):
        Trainer(_model()).load_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="monitor must be one of"):
        Trainer(_model(), {"monitor": "val_loss"})
    with pytest.raises(RuntimeError, match="no best weights"):
        Trainer(_model()).restore_best()


def test_restore_best_by_training_mse() -> None:
    """Best weights are those of the evaluation with the lowest monitored metric, restored exactly (a large
    learning rate makes the last epoch worse than the best one)."""
    ds = _problem()
    tr = Trainer(_model(), dict(CFG, epochs=12, lr=0.5, scheduler="none", monitor="mse", eval_every=3))
    hist = tr.fit(ds, {"train": ds})
    checked = [r for r in hist if "train/mse" in r]
    assert [r["epoch"] for r in checked] == [3, 6, 9, 12]
    best = min(r["train/mse"] for r in checked)
    assert tr.best == best < checked[-1]["train/mse"]
    tr.restore_best()
    assert tr.evaluate(ds)["mse"] == pytest.approx(best, rel=1e-6)


def test_inverse_time_schedule_matches_formula() -> None:
    tr = Trainer(_model(), dict(CFG, epochs=6, lr=1e-2, scheduler="inverse_time", step_size=2, gamma=0.5))
    hist = tr.fit(_problem())
    # the lr logged after epoch e is that of epoch e + 1: lr0 / (1 + gamma * e / step_size)
    assert [r["lr"] for r in hist] == pytest.approx([1e-2 / (1 + 0.5 * e / 2) for e in range(1, 7)], rel=1e-12)


def test_registry_has_models() -> None:
    assert {"deeponet", "mgno", "fno"} <= set(MODELS)
    assert MODELS["deeponet"] is DeepONet
