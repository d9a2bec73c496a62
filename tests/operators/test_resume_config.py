"""Resume keeps the run's configuration: the Trainer refuses a conflicting one (naming the options and both values),
and ``deepkrylov train ... --resume`` takes the run's options that the command does not give."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from deepkrylov.cli import main
from deepkrylov.operators import Trainer
from deepkrylov.operators.data import generate_darcy
from deepkrylov.operators.trainer import RESUMABLE_OPTIONS, checkpoint_config, config_conflicts


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True).sin())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


CFG = dict(batch_size=8, lr=1e-2, loss="l2", progress=False, epochs=2)


def test_trainer_refuses_conflicting_config(tmp_path) -> None:
    Trainer(_model(), CFG, out_dir=str(tmp_path)).fit(_data())
    t = Trainer(_model(), dict(CFG, epochs=3, loss="h1", lr=5e-3), out_dir=str(tmp_path))
    with pytest.raises(ValueError) as err:
        t.fit(_data(), resume=True)
    msg = str(err.value)
    assert "loss: checkpoint 'l2', now 'h1'" in msg and "lr: checkpoint 0.01, now 0.005" in msg
    assert "epochs" not in msg.split("(")[1].split(")")[0]  # epochs may change: not listed as a conflict
    fresh = _model().state_dict()
    assert t.epoch == 0 and all(torch.equal(v, fresh[k]) for k, v in t.module.state_dict().items())  # nothing loaded


def test_trainer_resume_allows_more_epochs(tmp_path) -> None:
    Trainer(_model(), CFG, out_dir=str(tmp_path)).fit(_data())
    t = Trainer(_model(), dict(CFG, epochs=4, eval_every=2), out_dir=str(tmp_path))
    t.fit(_data(), resume=True)
    assert t.epoch == 4
    assert checkpoint_config(str(tmp_path / "last.pt"))["epochs"] == 4


def test_config_conflicts_defaults_for_missing_keys() -> None:
    cur = Trainer(_model(), dict(CFG, progress=False)).config
    old = {k: v for k, v in cur.items() if k != "monitor"}  # a checkpoint written before 'monitor' existed
    assert config_conflicts(old, cur) == []
    assert config_conflicts(dict(old, seed=1), cur) == [("seed", 1, 0)]
    assert set(RESUMABLE_OPTIONS) >= {"epochs"}


@pytest.fixture(scope="module")
def darcy(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "darcy16.h5"
    generate_darcy(12, n=16, seed=0, path=str(path), progress_bar=False)
    return str(path)


def _train(darcy: str, out: str, *extra: str) -> int:
    return main(["train", "fno", "--data", darcy, "--out", out, "--width", "8", "--modes", "4", "--layers", "2",
                 "--batch-size", "4", *extra])


def test_cli_resume_takes_the_runs_options(darcy, tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    assert _train(darcy, out, "--epochs", "1", "--loss", "l2", "--lr", "2e-3") == 0
    # the README's resume line: --loss and --lr not given -> the run's l2 and 2e-3, not the CLI defaults (h1)
    assert main(["train", "fno", "--data", darcy, "--out", out, "--epochs", "2", "--resume"]) == 0
    cfg = checkpoint_config(str(tmp_path / "run" / "last.pt"))
    assert (cfg["loss"], cfg["lr"], cfg["epochs"], cfg["batch_size"]) == ("l2", 2e-3, 2, 4)
    err = capsys.readouterr().err
    assert "with the run's " in err and "--loss l2" in err and "--lr 0.002" in err
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert (spec["width"], spec["modes"], spec["layers"]) == (8, 4, 2)
    epochs = [json.loads(s)["epoch"] for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_cli_resume_refuses_a_conflicting_option(darcy, tmp_path) -> None:
    out = str(tmp_path / "run")
    assert _train(darcy, out, "--epochs", "1", "--loss", "h1") == 0
    with pytest.raises(SystemExit) as err:
        _train(darcy, out, "--epochs", "2", "--loss", "l2", "--resume")
    assert "--loss: the run used 'h1', the command gives 'l2'" in str(err.value)
    with pytest.raises(SystemExit, match="--width: the run used 8, the command gives 12"):
        main(["train", "fno", "--data", darcy, "--out", out, "--width", "12", "--resume"])


def test_cli_multiresolution_run_resumes_with_its_resolutions(darcy, tmp_path) -> None:
    out = str(tmp_path / "run")
    assert _train(darcy, out, "--epochs", "1", "--resolutions", "8,16", "--resample", "area") == 0
    assert main(["train", "fno", "--data", darcy, "--out", out, "--epochs", "2", "--resume"]) == 0
    cfg = checkpoint_config(str(tmp_path / "run" / "last.pt"))
    assert (cfg["resolutions"], cfg["resample"], cfg["epochs"]) == ([8, 16], "area", 2)
    with pytest.raises(SystemExit, match="--resolutions: the run used \\[8, 16\\], the command gives \\[16\\]"):
        _train(darcy, out, "--epochs", "3", "--resolutions", "16", "--resume")
