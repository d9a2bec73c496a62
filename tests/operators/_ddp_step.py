"""Run under mpiexec: one DDP Trainer step (float64, global batch 8) and a rank-split Burgers generation; rank 0
writes the parameters and the data to the .npz path given as argv[1]."""

from __future__ import annotations

import sys

import numpy as np
import torch


def problem() -> tuple[torch.utils.data.TensorDataset, torch.nn.Module]:
    from deepkrylov.operators import DeepONet

    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, 10, generator=g, dtype=torch.float64)
    s = torch.randn(8, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(7)
    return torch.utils.data.TensorDataset(u, s), DeepONet([10, 16, 8], [1, 16, 8]).double()


Y = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]
CFG = dict(epochs=1, batch_size=8, optimizer="sgd", lr=0.1, loss="l2", progress=False, seed=0)


def one_step() -> list[np.ndarray]:
    from deepkrylov.operators import Trainer

    ds, model = problem()
    tr = Trainer(model, CFG, forward=lambda m, inp: m(inp[0], Y))
    tr.fit(ds)
    return [p.detach().numpy().copy() for p in tr.module.parameters()]


def main() -> None:
    from deepkrylov.distributed import init
    from deepkrylov.operators.data import generate_burgers

    ctx = init(backend="auto")
    ctx.init_torch_distributed()
    params = one_step()
    burgers = generate_burgers(5, n=32, T=0.05, progress_bar=False)
    if ctx.rank == 0:
        np.savez(sys.argv[1], size=ctx.size, burgers=burgers["u"], **{f"p{i}": p for i, p in enumerate(params)})


if __name__ == "__main__":
    main()
