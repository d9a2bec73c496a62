"""Training the learned multigrid's stencil network on generated scenes.

Data: random smoke-style scenes (:func:`~deepkrylov.solvers.problems.random_scene`) at one or more sizes; per
scene, samples mixed from Ritz vectors of its pressure matrix with the low half of the spectrum boosted (the DCDM
recipe, :func:`~deepkrylov.solvers.dcdm.ritz_rhs`) and white noise. Loss: :func:`energy_loss` (default), the
error reduction of one cycle in the energy norm, or the anchor's :func:`residual_loss`; the residual loss gave
4 PCG iterations instead of 8-10 on random scenes but an indefinite cycle on the smoke scene at 64^3 and 128^3.
Adam through the operators' Trainer; the best weights by the loss on held-out scenes are kept.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from deepkrylov.mesh import BoundaryConditions, StructuredGrid, laplacian

from .dcdm.training import ritz_rhs, ritz_vectors
from .learned_multigrid import LearnedMultigrid, StencilNet, save_stencil_net
from .problems import random_scene

log = logging.getLogger("deepkrylov.solvers")

__all__ = ["train_learned_multigrid", "residual_loss", "energy_loss", "LOSSES"]


def residual_loss(M: LearnedMultigrid, b: torch.Tensor) -> torch.Tensor:
    """The anchor's loss: ``||b - A M b||^2 / ||b||^2`` per sample (shape ``(batch,)``)."""
    r = b - M.A.apply(M.apply(b))
    return (r * r).flatten(1).sum(1) / (b * b).flatten(1).sum(1)


def energy_loss(M: LearnedMultigrid, e: torch.Tensor) -> torch.Tensor:
    """``||(I - M A) e||_A^2 / ||e||_A^2`` per sample: the error reduction of one cycle in the energy norm, which
    bounds PCG's convergence; below 1 on every ``e`` exactly when the cycle is positive definite, so minimising it
    keeps the learned cycle a valid PCG preconditioner, which the residual loss does not."""
    Ae = M.A.apply(e)
    d = e - M.apply(Ae)
    Ad = M.A.apply(d)
    return (d * Ad).flatten(1).sum(1) / (e * Ae).flatten(1).sum(1)


LOSSES = {"energy": energy_loss, "residual": residual_loss}


def _scene(n: int, seed: int, net: StencilNet, rhs: int, lanczos_steps: int) -> tuple:
    """A scene's cycle and its samples: half Ritz mixtures (low spectrum boosted), half white noise on fluid."""
    mask = random_scene(n, 3, seed=seed)
    A = laplacian(StructuredGrid((n,) * 3), BoundaryConditions.uniform(3, "neumann"), mask, scaled=False)
    M = LearnedMultigrid(A, net)
    _, vectors = ritz_vectors(A, A.grid.shape, lanczos_steps, mask=A.fluid, seed=seed)
    smooth = ritz_rhs(vectors, rhs - rhs // 2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    rough = torch.randn((rhs // 2, 1) + A.grid.shape, generator=g, dtype=torch.float64) * A.fluid
    rough = rough / rough.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    return M, torch.cat((smooth, rough))


class _Scenes(torch.nn.Module):
    """The stencil network with every scene's cycle and samples, for the Trainer: ``forward(ids)`` takes rows
    ``(scene, sample)`` and returns each sample's loss value ``(batch, 1)``, refreshing the stencils of the
    scenes in the batch from the current weights."""

    def __init__(self, net: StencilNet, scenes: list, loss: Callable) -> None:
        super().__init__()
        self.net = net
        self._scenes, self._loss = scenes, loss

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: list = [None] * ids.shape[0]
        for s in ids[:, 0].unique().tolist():
            rows = (ids[:, 0] == s).nonzero().flatten().tolist()
            M, samples = self._scenes[s]
            M.refresh()
            values = self._loss(M, samples[ids[rows, 1]])
            for r, v in zip(rows, values):
                out[r] = v
        return torch.stack(out).unsqueeze(1)


class _Mean(torch.nn.Module):
    def forward(self, values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return values.mean()


def _pairs(first: int, scenes: list) -> torch.Tensor:
    return torch.tensor([(first + i, k) for i, (_, x) in enumerate(scenes) for k in range(x.shape[0])])


def train_learned_multigrid(
    *, sizes: Sequence[int] = (32,), scenes: int = 40, validation_scenes: int = 4, rhs_per_scene: int = 32,
    lanczos_steps: int = 150, epochs: int = 7, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
    net: Optional[StencilNet] = None, out: Optional[Union[str, Path]] = None, command: str = "",
    loss: str = "energy", progress: bool = False,
) -> tuple[StencilNet, dict]:
    """Train a :class:`StencilNet` (module docstring) with the operators' :class:`~deepkrylov.operators.Trainer`
    (the project's one training loop; the best weights by the loss on the held-out scenes are kept). Returns the
    best network and the training record (also written beside ``out`` as JSON when ``out`` is given)."""
    from torch.utils.data import TensorDataset

    from deepkrylov.operators.trainer import Trainer

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, but got {loss!r}")
    if scenes < 1 or validation_scenes < 1 or epochs < 1:
        raise ValueError(f"scenes, validation_scenes and epochs must be positive, got {scenes}, "
                         f"{validation_scenes}, {epochs}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = net if net is not None else StencilNet()
    train = [_scene(sizes[i % len(sizes)], seed * 100_000 + i, net, rhs_per_scene, lanczos_steps)
             for i in range(scenes)]
    val = [_scene(sizes[i % len(sizes)], seed * 100_000 + 50_000 + i, net, 8, lanczos_steps)
           for i in range(validation_scenes)]
    data_seconds = time.perf_counter() - t0
    model = _Scenes(net, train + val, LOSSES[loss])
    train_ids, val_ids = _pairs(0, train), _pairs(len(train), val)
    train_ds = TensorDataset(train_ids, torch.zeros(len(train_ids), 1))
    val_ds = TensorDataset(val_ids, torch.zeros(len(val_ids), 1))
    trainer = Trainer(model, dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, monitor="loss",
                                  progress=progress), device="cpu", loss=_Mean())
    initial = trainer.evaluate(val_ds)["loss"]
    history = trainer.fit(train_ds, {"val": val_ds})
    trainer.restore_best()
    net.eval()
    for h in history:
        log.info("learned-mg epoch %d: train loss %.4e, validation loss %.4e", h["epoch"], h["train_loss"],
                 h["val/loss"])
    record = {
        "command": command, "sizes": list(sizes), "scenes": scenes, "validation_scenes": validation_scenes,
        "rhs_per_scene": rhs_per_scene, "lanczos_steps": lanczos_steps, "epochs": epochs,
        "steps": epochs * -(-len(train_ids) // batch_size), "batch_size": batch_size, "lr": lr, "seed": seed,
        "loss": loss, "loss_formula": (LOSSES[loss].__doc__ or "").split(" per sample")[0].strip(),
        "initial_validation_loss": initial, "best_validation_loss": trainer.best, "data_seconds": data_seconds,
        "total_seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "history": [{"epoch": h["epoch"], "train_loss": h["train_loss"], "validation_loss": h["val/loss"]}
                    for h in history],
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_stencil_net(net, out)
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return net, record
