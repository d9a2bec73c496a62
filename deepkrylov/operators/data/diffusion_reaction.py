"""Diffusion-reaction of the DeepONet paper: ``s_t = D s_xx + k s^2 + u(x)`` on (x, t) in [0,1]x[0,1], zero
initial and boundary values; implicit finite differences (backward Euler for diffusion, reaction and source
explicit), float64. Input ``u``: RBF GRF (length 0.2) on the ``nx`` grid points. Data: ``u (N, nx)``,
``s (N, nt, nx)`` at times ``t (nt,)`` (t_1..T) and points ``x (nx,)``."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.linalg import solve_banded

from ._common import gather_rows, progress, rank_size, split
from ._io import save_dataset
from .antiderivative import rbf_grf_1d

__all__ = ["solve_diffusion_reaction", "generate_diffusion_reaction"]


def solve_diffusion_reaction(u: np.ndarray, D: float = 0.01, k: float = 0.01, T: float = 1.0, nt: int = 100
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x (nx,), t (nt,), s (batch, nt, nx))`` for source rows ``u (batch, nx)`` on equispaced x in [0,1]."""
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    nx = u.shape[1]
    if nx < 3 or nt < 1 or D <= 0:
        raise ValueError(f"need nx >= 3, nt >= 1, D > 0, but got {nx}, {nt}, {D}")
    x = np.linspace(0.0, 1.0, nx)
    h, dt = 1.0 / (nx - 1), T / nt
    r = D * dt / h**2
    ni = nx - 2
    ab = np.zeros((3, ni))
    ab[0, 1:], ab[1], ab[2, :-1] = -r, 1 + 2 * r, -r
    s = np.zeros((u.shape[0], nx))
    out = np.zeros((u.shape[0], nt, nx))
    for n in range(nt):
        rhs = s[:, 1:-1] + dt * (k * s[:, 1:-1] ** 2 + u[:, 1:-1])
        s[:, 1:-1] = solve_banded((1, 1), ab, rhs.T).T
        out[:, n] = s
    return x, dt * np.arange(1, nt + 1), out


def generate_diffusion_reaction(num_samples: int, nx: int = 100, nt: int = 100, D: float = 0.01, k: float = 0.01,
                                length: float = 0.2, seed: int = 0, path: Optional[str] = None,
                                progress_bar: bool = True, comm: object = None) -> dict[str, np.ndarray]:
    """Seeded data set; under mpiexec the ranks split the samples (every rank returns all of them)."""
    xf, uf = rbf_grf_1d(num_samples, length, seed=seed)
    x = np.linspace(0.0, 1.0, nx)
    u = np.stack([np.interp(x, xf, row) for row in uf])
    comm, rank, size = rank_size(comm)
    lo, hi = split(num_samples, rank, size)
    bar = progress(hi - lo, rank, "diffusion-reaction", progress_bar)
    parts = []
    for s0 in range(lo, hi, 100):
        parts.append(solve_diffusion_reaction(u[s0:min(s0 + 100, hi)], D, k, 1.0, nt)[2])
        if bar is not None:
            bar.update(min(s0 + 100, hi) - s0)
    if bar is not None:
        bar.close()
    s = gather_rows(comm, np.concatenate(parts) if parts else np.zeros((0, nt, nx)), size)
    data = {"u": u, "s": s, "x": x, "t": np.arange(1, nt + 1) / nt}
    if path is not None and rank == 0:
        save_dataset(path, data, {"problem": "diffusion_reaction", "num_samples": num_samples, "nx": nx, "nt": nt,
                                  "D": D, "k": k, "length": length, "seed": seed})
    return data
