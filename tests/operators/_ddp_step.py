"""Run under mpiexec: DDP Trainer steps (float64) and a rank-split Burgers generation; rank 0 writes the
parameters, the evaluation metrics and the data to the .npz path given as argv[1].

Steps: 9 samples, global batch 4, 2 epochs, Adam: global batches 4, 4, 1 per epoch, so on 2 ranks the shares are
uneven and, in the last batch, one rank gets none (on 4 ranks, three); such a rank must still take part with zero
weight."""

from __future__ import annotations

import sys

import numpy as np
import torch


def problem() -> tuple[torch.utils.data.TensorDataset, torch.nn.Module]:
    from deepkrylov.operators import DeepONet

    g = torch.Generator().manual_seed(0)
    u = torch.randn(9, 10, generator=g, dtype=torch.float64)
    s = torch.randn(9, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(7)
    return torch.utils.data.TensorDataset(u, s), DeepONet([10, 16, 8], [1, 16, 8]).double()


Y = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]
CFG = dict(epochs=2, batch_size=4, optimizer="adam", lr=1e-2, loss="l2", progress=False, seed=0)


def steps() -> tuple[list[np.ndarray], dict[str, float]]:
    """Parameters after training and the metrics of the last epoch (train loss, eval rel L2 and MSE)."""
    from deepkrylov.operators import Trainer

    ds, model = problem()
    tr = Trainer(model, CFG, forward=lambda m, inp: m(inp[0], Y))
    hist = tr.fit(ds, {"train": ds})
    return [p.detach().numpy().copy() for p in tr.module.parameters()], hist[-1]


def main() -> None:
    from deepkrylov.distributed import init
    from deepkrylov.operators.data import generate_burgers

    ctx = init(backend="auto")
    ctx.init_torch_distributed()
    params, rec = steps()
    burgers = generate_burgers(5, n=32, T=0.05, progress_bar=False)
    if ctx.rank == 0:
        metrics = np.array([rec["train_loss"], rec["train/rel_l2"], rec["train/mse"]])
        np.savez(sys.argv[1], size=ctx.size, burgers=burgers["u"], metrics=metrics,
                 **{f"p{i}": p for i, p in enumerate(params)})
    ctx.close_torch_distributed()


if __name__ == "__main__":
    main()
