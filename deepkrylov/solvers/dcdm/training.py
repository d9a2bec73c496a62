"""Training DCDM as in the paper: Ritz-vector right-hand sides and the line-search residual loss.

- :func:`dcdm_loss`: ``L(q) = mean_i || b_i - A q_i (q_i.b_i)/(q_i.A q_i) ||^2``, the residual left after an exact
  line search along the predicted direction; invariant to the scale of ``q``, so the network only has to learn
  ``A^-1`` up to a factor.
- :func:`ritz_vectors`: Lanczos with full reorthogonalisation on the system operator; Ritz pairs sorted by value.
- :func:`ritz_rhs`: samples ``b = V c`` with ``c ~ N(0, 1)``, the coefficients of the low half of the spectrum
  multiplied by ``boost`` (9 in the paper), normalised.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from deepkrylov.distributed import GridTensor

from .._lift import apply_of, lift_system

__all__ = ["dcdm_loss", "ritz_vectors", "ritz_rhs", "train_dcdm", "train_scene_model"]

log = logging.getLogger("deepkrylov.solvers.dcdm")
Field = Union[torch.Tensor, GridTensor]
Apply = Callable[[Field], Field]


def _bdot(a: GridTensor, b: GridTensor) -> torch.Tensor:
    """Per-sample inner products, shape (batch,)."""
    return a.dot(b, keep_batch=True)


def dcdm_loss(operator, b: Field, q: Field) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Mean squared residual after the exact line search along ``q`` (per sample), scale-invariant in ``q``.

    ``b`` and ``q``: tensors ``(batch, 1, *spatial)`` or GridTensors; ``operator``: an operator or a callable on
    fields like ``b`` (one on plain tensors only sees plain tensors)."""
    s = lift_system(operator, b, q)
    bg, qg = s.b, s.x0
    Aq = apply_of(s.A)(qg)
    alpha = _bdot(qg, bg) / _bdot(qg, Aq)
    r = bg - Aq * alpha.view((-1,) + (1,) * (qg.local.dim() - 1))
    return _bdot(r, r).mean()


def ritz_vectors(
    operator, shape: tuple[int, ...], steps: int, *, mask: Optional[torch.Tensor] = None, seed: int = 0,  # type: ignore[no-untyped-def]
    dtype: torch.dtype = torch.float64, drop_below: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (ascending) and vectors ``(k, *shape)`` from ``steps`` Lanczos steps on a serial operator.

    ``mask`` (1 on unknowns, 0 elsewhere) restricts the start vector, so the Krylov space stays on the unknowns.
    Ritz values below ``drop_below`` (e.g. a Neumann null space) are dropped.
    """
    apply = apply_of(operator)
    n = math.prod(shape)
    if steps < 2 or steps > n:
        raise ValueError(f"steps must be in [2, {n}] for a grid of {n} cells, but got {steps}")
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=dtype)
    if mask is not None:
        v = v * mask.reshape(-1).to(dtype)
    V = torch.zeros(steps, n, dtype=dtype)
    alpha = torch.zeros(steps, dtype=dtype)
    beta = torch.zeros(steps, dtype=dtype)
    V[0] = v / v.norm()
    for j in range(steps):
        w = apply(V[j].reshape((1, 1) + tuple(shape))).reshape(-1)
        alpha[j] = V[j] @ w
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)  # full reorthogonalisation, twice for safety
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)
        if j + 1 == steps:
            break
        beta[j] = w.norm()
        if beta[j] < 1e-12 * max(1.0, float(alpha[: j + 1].abs().max())):
            steps = j + 1  # invariant subspace found
            V, alpha, beta = V[:steps], alpha[:steps], beta[:steps]
            break
        V[j + 1] = w / beta[j]
    T = torch.diag(alpha) + torch.diag(beta[: steps - 1], 1) + torch.diag(beta[: steps - 1], -1)
    values, Y = torch.linalg.eigh(T)
    vectors = (Y.T @ V).reshape((steps,) + tuple(shape))
    keep = values > drop_below
    return values[keep], vectors[keep]


def ritz_rhs(
    vectors: torch.Tensor, count: int, *, seed: int = 0, low_fraction: float = 0.55, boost: float = 9.0,
) -> torch.Tensor:
    """``count`` normalised right-hand sides ``(count, 1, *spatial)`` from Ritz vectors (ascending values)."""
    k = vectors.shape[0]
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(count, k, generator=g, dtype=vectors.dtype)
    c[:, : max(1, int(low_fraction * k))] *= boost
    b = c @ vectors.reshape(k, -1)
    b = b / b.norm(dim=1, keepdim=True)
    return b.reshape((count, 1) + tuple(vectors.shape[1:]))


class LineSearchLoss(torch.nn.Module):
    """:func:`dcdm_loss` as a ``loss(q, b)`` module for the :class:`~deepkrylov.operators.Trainer`."""

    def __init__(self, operator) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.operator = operator

    def forward(self, q: Field, b: Field) -> torch.Tensor:
        return dcdm_loss(self.operator, b, q)


def train_dcdm(
    model: torch.nn.Module, operator, rhs: torch.Tensor, *, out_dir: Union[str, Path], epochs: int = 10,  # type: ignore[no-untyped-def]
    batch_size: int = 10, lr: float = 1e-4, seed: int = 0, validation_fraction: float = 0.1,
    config: Optional[dict] = None, progress: bool = True,
) -> dict:
    """Train with Adam on the line-search loss, through the operators' :class:`~deepkrylov.operators.Trainer`
    (the one training loop of the project: checkpoints, exact resume from ``out_dir/last.pt``, metrics).

    Writes ``out_dir/model.pt`` (best validation weights + model config), the Trainer's ``last.pt``/``best.pt``/
    ``metrics.jsonl``, ``config.json`` and ``loss.json`` (the loss curve). Returns the final record.
    """
    from torch.utils.data import TensorDataset

    from deepkrylov.operators.trainer import Trainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_val = max(1, int(round(validation_fraction * rhs.shape[0])))
    dtype = next(model.parameters()).dtype
    train_b, val_b = rhs[n_val:].to(dtype), rhs[:n_val].to(dtype)
    record = {
        "model": model.config() if hasattr(model, "config") else {}, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "seed": seed, "train_size": int(train_b.shape[0]), "validation_size": n_val, **(config or {}),
    }
    (out / "config.json").write_text(json.dumps(record, indent=2))
    trainer = Trainer(model, dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, monitor="loss",
                                  progress=progress), out_dir=str(out), device="cpu", loss=LineSearchLoss(operator))
    t0 = time.perf_counter()
    earlier = json.loads((out / "loss.json").read_text()) if (out / "last.pt").exists() and \
        (out / "loss.json").exists() else []
    history = trainer.fit(TensorDataset(train_b, train_b), {"val": TensorDataset(val_b, val_b)}, resume=True)
    if trainer.best_state is not None:  # improved in this run (else model.pt already holds the best weights)
        trainer.restore_best()
        torch.save({"config": record["model"], "state_dict": model.state_dict(), "val_loss": trainer.best},
                   out / "model.pt")
    first = history[0]["epoch"] if history else epochs + 1
    curve = [h for h in earlier if h["epoch"] < first] + [
        {"epoch": h["epoch"], "train_loss": h["train_loss"], "val_loss": h.get("val/loss")} for h in history]
    (out / "loss.json").write_text(json.dumps(curve, indent=2))
    log.info("trained %d epochs in %.1f s, best validation loss %.4e", len(curve), time.perf_counter() - t0,
             trainer.best)
    return {"config": record, "history": curve, "best_val_loss": trainer.best}


def train_scene_model(
    n: int = 32, dim: int = 3, scene: str = "smoke", *, samples: int = 2000, lanczos_steps: int = 600,
    epochs: int = 10, batch_size: int = 10, lr: float = 1e-4, seed: int = 0, out_dir: Union[str, Path] = "runs/dcdm",
    model_kwargs: Optional[dict] = None, progress: bool = True, command: str = "",
    init: Optional[Union[str, Path]] = None,
) -> dict:
    """The paper's recipe on one scene: Ritz vectors of its pressure matrix, boosted-low-spectrum right-hand
    sides, Adam on the line-search loss. Writes the model and a training record into ``out_dir``.

    ``init`` starts from the weights of a saved model (e.g. one trained on a coarser grid: the network is fully
    convolutional) instead of a random initialisation; its configuration then replaces ``model_kwargs``."""
    import platform

    from ..problems import scene_problem
    from .model import load_model, save_model
    from .network import DCDMNet

    initial = load_model(init) if init is not None else None  # checked before the (long) Lanczos run
    if initial is not None and initial.dim != dim:
        raise ValueError(f"the initial model {init} is {initial.dim}D but the scene is {dim}D")
    t0 = time.perf_counter()
    A, _ = scene_problem(n, dim, scene)
    fluid = (A.mask == 0).to(torch.float64)
    values, vectors = ritz_vectors(A, (n,) * dim, lanczos_steps, mask=fluid, seed=seed)
    rhs = ritz_rhs(vectors, samples, seed=seed + 1).to(torch.float32)
    del vectors
    t_data = time.perf_counter() - t0
    log.info("data: %d Ritz vectors (values %.3e..%.3e), %d right-hand sides in %.1fs",
             len(values), float(values[0]), float(values[-1]), samples, t_data)
    torch.manual_seed(seed)
    model = initial if initial is not None else DCDMNet(dim=dim, **(model_kwargs or {}))
    A32 = type(A)(A.grid, A.bc, A.coefficient, A.mask, scaled=A.scaled, dtype=torch.float32)
    result = train_dcdm(model, A32, rhs, out_dir=out_dir, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        progress=progress, config={"scene": scene, "n": n, "dim": dim, "samples": samples,
                                                   "lanczos_steps": lanczos_steps})
    best = torch.load(Path(out_dir) / "model.pt", weights_only=True)
    model.load_state_dict(best["state_dict"])
    record = {
        "command": command, "init": str(init) if init is not None else None, "scene": scene, "grid": [n] * dim, "lanczos_steps": lanczos_steps,
        "ritz_vectors": int(len(values)), "samples": samples, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "final_train_loss": result["history"][-1]["train_loss"] if result["history"] else None,
        "best_val_loss": result["best_val_loss"], "history": result["history"],
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                    f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}",
        "data_seconds": t_data, "total_seconds": time.perf_counter() - t0, "torch": torch.__version__,
    }
    save_model(model, Path(out_dir) / "model.pt", record=json.dumps(record))
    (Path(out_dir) / "record.json").write_text(json.dumps(record, indent=2))
    return record
