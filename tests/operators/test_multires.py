"""Multi-resolution training (``TrainConfig(resolutions=...)``): the resampling against NumPy, batches at several
grids, and the error falling at every resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from deepkrylov.operators import Trainer
from deepkrylov.operators.trainer import TrainConfig, _resample


def test_resample_matches_numpy() -> None:
    x = np.random.default_rng(0).standard_normal((2, 1, 12, 8))
    t = torch.tensor(x)
    np.testing.assert_array_equal(_resample(t, (4, 4), "stride").numpy(), x[:, :, ::3, ::2])
    np.testing.assert_allclose(_resample(t, (4, 4), "area").numpy(),
                               x.reshape(2, 1, 4, 3, 4, 2).mean((3, 5)), rtol=0, atol=1e-14)
    # linear between cell centres, clamped at the ends: np.interp on the centres (i + 1/2) / n
    v = x[:, :, :, 0]
    for m in (5, 12, 29):
        ref = np.stack([[np.interp((np.arange(m) + 0.5) / m, (np.arange(12) + 0.5) / 12, v[b, 0])]
                        for b in range(2)])
        np.testing.assert_allclose(_resample(torch.tensor(v), (m,), "linear").numpy(), ref, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="divide"):
        _resample(t, (5, 4), "stride")


def test_bad_resolutions_are_named() -> None:
    for bad in (32, [], [0], ["a"], [[32, -1]]):
        with pytest.raises(ValueError, match="resolutions"):
            TrainConfig(resolutions=bad)
    with pytest.raises(ValueError, match="resample"):
        TrainConfig(resample="cubic")
    assert TrainConfig(resolutions=(16, [8, 4]))["resolutions"] == [16, [8, 4]]


def test_multiresolution_batches_train() -> None:
    """A pointwise operator (y = sin 2x) learnt by a 1x1-conv network from batches at 8, 16 and 32 points: every
    epoch's batches cycle through the three grids and the relative error falls at each of them (about 6x in these 120 steps)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 32, generator=g, dtype=torch.float64).cumsum(-1) / 4
    ds = TensorDataset(x, torch.sin(2 * x))
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 1), torch.nn.Tanh(), torch.nn.Conv1d(16, 1, 1)).double()
    seen: list[int] = []

    def fwd(m: torch.nn.Module, inputs: tuple) -> torch.Tensor:
        if m.training:
            seen.append(inputs[0].shape[-1])
        return m(*inputs)

    tr = Trainer(model, dict(epochs=40, batch_size=8, lr=5e-2, progress=False, resolutions=[8, 16, 32], eval_every=40),
                 forward=fwd)
    evals = {f"n{n}": TensorDataset(*(_resample(t, (n,), "stride") for t in ds.tensors)) for n in (8, 16, 32)}
    before = {k: tr.evaluate(d)["rel_l2"] for k, d in evals.items()}
    hist = tr.fit(ds, evals)
    assert seen[:6] == [8, 16, 32, 8, 16, 32] and len(seen) == 40 * 3
    for k in evals:
        assert hist[-1][f"{k}/rel_l2"] < before[k] / 4, (k, before[k], hist[-1][f"{k}/rel_l2"])


def test_multiresolution_refuses_a_domain_grid(ctx) -> None:
    from deepkrylov.distributed import ProcessGrid

    with pytest.raises(ValueError, match="domain-parallel"):
        Trainer(torch.nn.Conv1d(1, 1, 1), dict(resolutions=[8], progress=False), grid=ProcessGrid(ctx, (16,)))
