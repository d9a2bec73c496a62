"""Training the learned multigrid's stencil network on generated scenes.

Data: random smoke-style scenes (:func:`~deepkrylov.solvers.problems.random_scene`) at one or more sizes; per
scene, right-hand sides mixed from Ritz vectors of its pressure matrix with the low half of the spectrum boosted
(the DCDM recipe, :func:`~deepkrylov.solvers.dcdm.ritz_rhs`). Loss (the anchor's): the mean squared residual
``||b - A M b||^2`` of one application of the cycle to unit-norm right-hand sides. Adam; the best weights by the
loss on held-out scenes are kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from deepkrylov.mesh import BoundaryConditions, StructuredGrid, laplacian

from .dcdm.training import ritz_rhs, ritz_vectors
from .learned_multigrid import LearnedMultigrid, StencilNet, save_stencil_net
from .problems import random_scene

__all__ = ["train_learned_multigrid", "residual_loss"]


def residual_loss(M: LearnedMultigrid, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||b - A M b||^2 / ||b||^2``."""
    r = b - M.A.apply(M.apply(b))
    return ((r * r).flatten(1).sum(1) / (b * b).flatten(1).sum(1)).mean()


def _scene(n: int, seed: int, net: StencilNet, rhs: int, lanczos_steps: int) -> tuple:
    mask = random_scene(n, 3, seed=seed)
    A = laplacian(StructuredGrid((n,) * 3), BoundaryConditions.uniform(3, "neumann"), mask, scaled=False)
    M = LearnedMultigrid(A, net)
    _, vectors = ritz_vectors(A, A.grid.shape, lanczos_steps, mask=A.fluid, seed=seed)
    return M, ritz_rhs(vectors, rhs, seed=seed)


def train_learned_multigrid(
    *, sizes: Sequence[int] = (32,), scenes: int = 40, validation_scenes: int = 4, rhs_per_scene: int = 32,
    lanczos_steps: int = 150, steps: int = 2000, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
    net: Optional[StencilNet] = None, out: Optional[Union[str, Path]] = None, log_every: int = 50,
    time_limit: Optional[float] = None, command: str = "",
) -> tuple[StencilNet, dict]:
    """Train a :class:`StencilNet` (module docstring). Returns the best network and the training record (also
    written beside ``out`` as JSON when ``out`` is given)."""
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
                total += float(residual_loss(M, b))
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
        loss = residual_loss(M, rhs[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            v = validate()
            history.append({"step": step, "train_loss": float(loss.detach()), "validation_loss": v,
                            "seconds": time.perf_counter() - t0})
            if v < best:
                best, best_state = v, {k: t.clone() for k, t in net.state_dict().items()}
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
    net.load_state_dict(best_state)
    record = {
        "command": command, "sizes": list(sizes), "scenes": scenes, "validation_scenes": validation_scenes,
        "rhs_per_scene": rhs_per_scene, "lanczos_steps": lanczos_steps, "steps": step, "batch_size": batch_size,
        "lr": lr, "seed": seed, "loss": "mean ||b - A M b||^2 over unit-norm Ritz right-hand sides",
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
