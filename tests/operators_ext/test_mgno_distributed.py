"""Domain-decomposed MgNO: forward and backward on a GridTensor equal the serial model; domain-parallel training
without whole samples: block-wise losses, HDF5 hyperslab reads, the Trainer on blocks == serial. Run serially and,
by tests/operators_ext/test_mpi.py, on 2 ranks (torch engine) and 4 ranks (mpi engine)."""

from __future__ import annotations

import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.operators.mgno import MgNO
from tests.helpers import assert_matches_serial, assert_trainer_matches_serial

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
    from deepkrylov.operators import Normalized

    assert_trainer_matches_serial(
        ctx, lambda x, y: Normalized.fit(MgNO(1, 1, channels=3, num_layers=2, iterations=[[1, 0]] * 3), x, y),
        (16, 24), samples=6, n_test=3, epochs=2, batch_size=4)


# -- domain-parallel training without whole samples: block-wise losses, HDF5 blocks, the Trainer ------------------

LOSS_CASES = [  # global shape (uneven blocks; on 4 ranks the 1D grid has a one-cell block), lengths
    ((5,), 2.0),
    ((9, 6), (1.0, 3.0)),
    ((6, 5, 7), 1.0),
]


def _losses(d: int, lengths) -> dict:  # type: ignore[no-untyped-def]
    from deepkrylov.operators.losses import H1Loss, LpLoss, MSELoss

    return {"l2": LpLoss(2), "l1-sum": LpLoss(1, reduction="sum"), "l2-none": LpLoss(2, reduction="none"),
            "l3": LpLoss(3), "h1": H1Loss(d, lengths=lengths), "h1-periodic": H1Loss(d, lengths=lengths, periodic=True),
            "h1-none": H1Loss(d, reduction="none"), "mse": MSELoss(), "mse-sum": MSELoss(reduction="sum")}


@pytest.mark.parametrize("shape,lengths", LOSS_CASES)
def test_block_losses_and_gradients_equal_serial(ctx, shape, lengths):
    """Every loss on GridTensor blocks (global reductions, halos for H1) == the serial loss on the whole tensors
    (torch.gradient / torch.roll for H1, torch.nn.functional.mse_loss), value and this block's gradient, 1e-12."""
    grid = ProcessGrid(ctx, shape)
    g = torch.Generator().manual_seed(11)
    pred = torch.randn((3, 2) + shape, generator=g, dtype=torch.float64)
    target = torch.randn((3, 2) + shape, generator=g, dtype=torch.float64)
    blk = (slice(None), slice(None)) + grid.local_slices
    for name, loss in _losses(len(shape), lengths).items():
        p_loc = pred[blk].clone().requires_grad_(True)
        t_loc = target[blk].clone().requires_grad_(True)
        value = loss(GridTensor(p_loc, grid), GridTensor(t_loc, grid))
        ps, ts = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
        ref = loss(ps, ts)
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12, msg=name)
        w = torch.linspace(0.5, 1.5, ref.numel(), dtype=torch.float64).reshape(ref.shape)
        (value * w).sum().backward()
        (ref * w).sum().backward()
        torch.testing.assert_close(p_loc.grad, ps.grad[blk], rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(t_loc.grad, ts.grad[blk], rtol=1e-12, atol=1e-12, msg=name)


def test_block_losses_refuse_mixed_inputs(ctx):
    from deepkrylov.operators.losses import H1Loss, LpLoss

    grid = ProcessGrid(ctx, (8, 8))
    x = GridTensor.zeros(grid, 2, 1, dtype=torch.float64)
    with pytest.raises(TypeError, match="both GridTensors"):
        LpLoss()(x, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="needs a 1D grid, but the grid is 2D"):
        H1Loss(1)(x, x)


class _CNN(torch.nn.Module):
    """Two distributed convolutions (zero and circular padding) with a tanh between: blocks in, blocks out."""

    def __init__(self) -> None:
        super().__init__()
        from deepkrylov.distributed import HaloConv2d

        self.a = HaloConv2d(1, 4, 3, padding=1)
        self.b = HaloConv2d(4, 1, 3, padding=1, padding_mode="circular")

    def forward(self, x):  # type: ignore[no-untyped-def]
        h = self.a(x)
        return self.b(h.map(torch.tanh) if isinstance(h, GridTensor) else torch.tanh(h))


def _hdf5(ctx, tmp_path, shape):  # type: ignore[no-untyped-def]
    """A float64 data file ``a``/``w`` (w: (N, 3 time steps, *shape)) written by rank 0 and read by every rank."""
    from deepkrylov.operators.data import save_dataset

    g = torch.Generator().manual_seed(21)
    a = torch.randn((7,) + shape, generator=g, dtype=torch.float64)
    w = torch.randn((7, 3) + shape, generator=g, dtype=torch.float64)
    path = str(tmp_path / "blocks.h5")
    if ctx.rank == 0:
        save_dataset(path, {"a": a.numpy(), "w": w.numpy()})
    path = ctx.comm.bcast_object(path)
    ctx.comm.barrier()
    return path, a, w[:, -1]


def test_hdf5_blocks_are_this_ranks_hyperslabs(ctx, tmp_path):
    from deepkrylov.operators.data import HDF5Fields

    shape = (9, 6)
    path, a, w = _hdf5(ctx, tmp_path, shape)
    grid = ProcessGrid(ctx, shape)
    ds = HDF5Fields(path, ["a", ("w", -1)], grid, samples=range(1, 6), dtype=torch.float64)
    blk = (slice(None),) + grid.local_slices
    assert len(ds) == 5 and ds[0][0].shape == (1,) + grid.local_shape
    got = ds.__getitems__([4, 0, 2])  # any order, one read per field
    for k, i in enumerate((5, 1, 3)):
        torch.testing.assert_close(got[k][0], a[i][None][blk], rtol=0, atol=0)
        torch.testing.assert_close(got[k][1], w[i][None][blk], rtol=0, atol=0)
    with pytest.raises(ValueError, match="process grid"):
        HDF5Fields(path, ["a"], ProcessGrid(ctx, (9, 7)))
    with pytest.raises(KeyError, match="lacks field 'u'"):
        HDF5Fields(path, ["a", "u"], grid)


def test_domain_training_from_hdf5_equals_serial(ctx, tmp_path, monkeypatch):
    """Trainer(grid=...) on blocks read from an HDF5 file (H1 loss, two epochs with a short batch, evaluation)
    reaches the serial Trainer's parameters and metrics on the whole arrays; no field is ever gathered or cut from
    a whole one."""
    from torch.utils.data import TensorDataset

    from deepkrylov.operators import Normalized, Trainer
    from deepkrylov.operators.data import HDF5Fields

    shape = (16, 12)
    path, a, w = _hdf5(ctx, tmp_path, shape)
    grid = ProcessGrid(ctx, shape)
    cfg = dict(epochs=2, batch_size=4, lr=1e-2, progress=False, loss="h1", loss_dim=2)

    def model() -> torch.nn.Module:
        torch.manual_seed(5)
        return Normalized(_CNN(), 0.1, 2.0, -0.3, 0.5).double()

    serial = Trainer(model(), cfg)
    hs = serial.fit(TensorDataset(a[:5, None], w[:5, None]), {"test": TensorDataset(a[5:, None], w[5:, None])})

    def whole(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a whole field was gathered or cut during domain-parallel training")

    monkeypatch.setattr(GridTensor, "gather", whole)
    monkeypatch.setattr(GridTensor, "from_global", whole)
    fields = ["a", ("w", -1)]
    dist = Trainer(model(), cfg, grid=grid)
    hd = dist.fit(HDF5Fields(path, fields, grid, samples=range(5), dtype=torch.float64),
                  {"test": HDF5Fields(path, fields, grid, samples=range(5, 7), dtype=torch.float64)})
    for p, q in zip(dist.module.parameters(), serial.module.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)  # the last step's summed gradient
    for a_rec, b_rec in zip(hd, hs):
        for k in ("train_loss", "test/rel_l2", "test/mse", "test/loss"):
            assert abs(a_rec[k] - b_rec[k]) <= 1e-10 * abs(b_rec[k]), (k, a_rec[k], b_rec[k])
