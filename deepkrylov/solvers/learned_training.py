"""Training the learned multigrid's stencil network on generated scenes.

Data: random smoke-style scenes (:func:`~deepkrylov.solvers.problems.random_scene`) at one or more sizes; per
scene, samples mixed from Ritz vectors of its pressure matrix with the low half of the spectrum boosted (the DCDM
recipe, :func:`~deepkrylov.solvers.dcdm.ritz_rhs`) and white noise. Loss: :func:`energy_loss` (default), the
error reduction of one cycle in the energy norm, or the anchor's :func:`residual_loss`; the residual loss gave
4 PCG iterations instead of 8-10 on random scenes but an indefinite cycle on the smoke scene at 64^3 and 128^3.
Adam; the best weights by the loss on held-out scenes are kept.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from deepkrylov.mesh import BoundaryConditions, StructuredGrid, laplacian

from .dcdm.training import ritz_rhs, ritz_vectors
from .learned_multigrid import LearnedMultigrid, StencilNet, save_stencil_net
from .problems import random_scene

log = logging.getLogger("deepkrylov.solvers")

__all__ = ["train_learned_multigrid", "residual_loss", "energy_loss", "LOSSES"]


def residual_loss(M: LearnedMultigrid, b: torch.Tensor) -> torch.Tensor:
    """The anchor's loss: mean over the batch of ``||b - A M b||^2 / ||b||^2``."""
    r = b - M.A.apply(M.apply(b))
    return ((r * r).flatten(1).sum(1) / (b * b).flatten(1).sum(1)).mean()


def energy_loss(M: LearnedMultigrid, e: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||(I - M A) e||_A^2 / ||e||_A^2``: the error reduction of one cycle in the energy
    norm, which bounds PCG's convergence; below 1 on every ``e`` exactly when the cycle is positive definite, so
    minimising it keeps the learned cycle a valid PCG preconditioner, which the residual loss does not."""
    Ae = M.A.apply(e)
    d = e - M.apply(Ae)
    Ad = M.A.apply(d)
    return ((d * Ad).flatten(1).sum(1) / (e * Ae).flatten(1).sum(1)).mean()


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


def train_learned_multigrid(
    *, sizes: Sequence[int] = (32,), scenes: int = 40, validation_scenes: int = 4, rhs_per_scene: int = 32,
    lanczos_steps: int = 150, steps: int = 2000, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
    net: Optional[StencilNet] = None, out: Optional[Union[str, Path]] = None, log_every: int = 50,
    time_limit: Optional[float] = None, command: str = "", loss: str = "energy",
) -> tuple[StencilNet, dict]:
    """Train a :class:`StencilNet` (module docstring). Returns the best network and the training record (also
    written beside ``out`` as JSON when ``out`` is given)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, but got {loss!r}")
    loss_fn = LOSSES[loss]
    if scenes < 1 or validation_scenes < 1 or steps < 1:
        raise ValueError(f"scenes, validation_scenes and steps must be positive, got {scenes}, "
                         f"{validation_scenes}, {steps}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = net if net is not None else StencilNet()
    train = [_scene(sizes[i % len(sizes)], seed * 100_000 + i, net, rhs_per_scene, lanczos_steps)
             for i in range(scenes)]
    val = [_scene(sizes[i % len(sizes)], seed * 100_000 + 50_000 + i, net, 8, lanczos_steps)
           for i in range(validation_scenes)]
    data_seconds = time.perf_counter() - t0

    def validate() -> float:
        with torch.no_grad():
            total = 0.0
            for M, b in val:
                M.refresh()
                total += float(loss_fn(M, b))
            return total / len(val)

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    initial = best = validate()
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    history = [{"step": 0, "validation_loss": initial}]
    step = 0
    for step in range(1, steps + 1):
        M, rhs = train[int(torch.randint(len(train), (), generator=g))]
        pick = torch.randperm(rhs.shape[0], generator=g)[:batch_size]
        M.refresh()
        value = loss_fn(M, rhs[pick])
        opt.zero_grad()
        value.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            v = validate()
            history.append({"step": step, "train_loss": float(value.detach()), "validation_loss": v,
                            "seconds": time.perf_counter() - t0})
            log.info("learned-mg step %d: train loss %.4e, validation loss %.4e (%.0f s)", step,
                     float(value.detach()), v, time.perf_counter() - t0)
            if v < best:
                best, best_state = v, {k: t.clone() for k, t in net.state_dict().items()}
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
    net.load_state_dict(best_state)
    record = {
        "command": command, "sizes": list(sizes), "scenes": scenes, "validation_scenes": validation_scenes,
        "rhs_per_scene": rhs_per_scene, "lanczos_steps": lanczos_steps, "steps": step, "batch_size": batch_size,
        "lr": lr, "seed": seed, "loss": loss, "loss_formula": (loss_fn.__doc__ or "").split(":")[0].strip(),
        "initial_validation_loss": initial, "best_validation_loss": best, "data_seconds": data_seconds,
        "total_seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in net.parameters()), "history": history,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_stencil_net(net, out)
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return net, record
