"""Domain-decomposed MgNO: forward and backward on a GridTensor equal the serial model (run on 1, 2 and 4 ranks)."""

from __future__ import annotations

import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.operators.mgno import MgNO
from tests.helpers import assert_matches_serial

CASES = [
    # dim, shape (divisible by 2**(levels-1)), iterations, padding mode
    (2, (20, 12), [[1, 1], [1, 0], [2, 1]], "zeros"),  # uneven blocks on the coarse levels
    (2, (16, 24), [[1, 0], [1, 0], [2, 0]], "circular"),
    (1, (64,), [[2, 0], [1, 1], [1, 0], [2, 0]], "reflect"),
    (3, (8, 8, 12), [[1, 0], [2, 0]], "zeros"),
]


@pytest.mark.parametrize("dim,shape,iterations,mode", CASES)
def test_distributed_mgno_equals_serial(ctx, dim, shape, iterations, mode):
    torch.manual_seed(0)
    model = MgNO(in_channels=2, out_channels=1, channels=3, num_layers=2, iterations=iterations, dim=dim,
                 padding_mode=mode).double()
    x_full = torch.randn((2, 2) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_matches_serial(ctx, model, x_full, ProcessGrid(ctx, shape), atol=1e-10)


def test_domain_parallel_training_steps_equal_serial(ctx):
    """Three Adam steps on a relative-L2 loss: GridTensor blocks with all-reduced gradients == one process."""
    shape = (16, 24)
    x = torch.randn((3, 1) + shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.randn((3, 1) + shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = ProcessGrid(ctx, shape)
    xg, yg = GridTensor.from_global(x, grid), GridTensor.from_global(y, grid)
    models = []
    for distributed in (True, False):
        torch.manual_seed(5)
        model = MgNO(1, 1, channels=3, num_layers=2, iterations=[[1, 0], [1, 0], [1, 0]]).double()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            if distributed:
                d = model(xg) - yg
                loss = (d.norm(keep_batch=True) / yg.norm(keep_batch=True)).mean()
                loss.backward()
                for p in model.parameters():
                    ctx.comm.allreduce_(p.grad)
            else:
                d = model(x) - y
                loss = (d.flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).mean()
                loss.backward()
            opt.step()
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)


def test_domain_parallel_trainer_equals_serial(ctx):
    """``Trainer(grid=...)``: two epochs of batches (the last one short) with normalised MgNO on GridTensor blocks
    reach the parameters and metrics of the serial Trainer."""
    from torch.utils.data import TensorDataset

    from deepkrylov.operators import Normalized, Trainer

    shape = (16, 24)
    g = torch.Generator().manual_seed(7)
    x = torch.randn((6, 1) + shape, generator=g, dtype=torch.float64)
    y = torch.randn((6, 1) + shape, generator=g, dtype=torch.float64)
    cfg = dict(epochs=2, batch_size=4, lr=1e-2, progress=False, loss="l2", loss_dim=2)
    runs = []
    for grid in (ProcessGrid(ctx, shape), None):
        torch.manual_seed(5)
        model = Normalized.fit(MgNO(1, 1, channels=3, num_layers=2, iterations=[[1, 0], [1, 0], [1, 0]]), x, y)
        trainer = Trainer(model.double(), cfg, grid=grid)
        hist = trainer.fit(TensorDataset(x, y), {"test": TensorDataset(x[:3], y[:3])})
        runs.append((model, hist))
        del trainer
    (dist, hd), (serial, hs) = runs
    for p, q in zip(dist.parameters(), serial.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)
    assert abs(hd[-1]["test/rel_l2"] - hs[-1]["test/rel_l2"]) < 1e-10
    assert abs(hd[-1]["train_loss"] - hs[-1]["train_loss"]) < 1e-10
