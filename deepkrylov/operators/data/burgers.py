"""1D viscous Burgers ``u_t + (u^2/2)_x = nu u_xx`` on the periodic unit interval, solved spectrally.

Pseudo-spectral in space (2/3-rule dealiasing), integrating factor for the viscous term and classical RK4 in
time, float64, on a fine grid (at least 1024 points: shocks at small viscosity are a few thousandths wide) sampled
at ``n`` points. The initial condition is a zero-mean periodic GRF with Fourier-mode variance
``sigma^2 (4 pi^2 k^2 + tau^2)^-gamma`` (a Matérn field with nu = gamma - 1/2, constant mode dropped, as the FNO
data script does). Defaults: the FNO paper's Burgers set, also used by Lu et al. 2022 -- ``N(0, 625 (-Delta +
25 I)^-2)``, i.e. gamma 2, tau 5, sigma 25, viscosity 0.1, T = 1. (Their published errors fit these smooth data:
32 POD modes leave < 0.01% of a test output, a linear map 8%; at viscosity 1/1000, the value in the public
script, 32 modes leave 8.9%, far above their POD-DeepONet's 1.94%.)
Data: ``a (N, n)`` the initial condition, ``u (N, n)`` the solution at time ``T``, ``x (n,)``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ._common import gather_rows, progress, rank_size, split
from ._io import save_dataset

__all__ = ["solve_burgers", "generate_burgers", "stable_dt"]

_SOLVE_POINTS = 1024  # default fine grid (at viscosity 1/1000: 7e-7 from a 4096-point solve, rel. L2 at T = 1)


def solve_burgers(u0: np.ndarray, viscosity: float, T: float, dt: float = 1e-4) -> np.ndarray:
    """Solution at time ``T`` for initial rows ``u0 (batch, n)`` on the periodic grid ``x_j = j / n``."""
    if viscosity < 0 or T < 0 or dt <= 0:
        raise ValueError(f"need viscosity >= 0, T >= 0, dt > 0, but got {viscosity}, {T}, {dt}")
    u0 = np.atleast_2d(np.asarray(u0, dtype=np.float64))
    n = u0.shape[1]
    k = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / n)
    keep = np.abs(np.fft.rfftfreq(n, 1.0 / n)) < n / 3.0
    steps = max(1, int(np.ceil(T / dt - 1e-12)))
    h = T / steps
    e_half = np.exp(-viscosity * k**2 * h / 2)
    e_full = e_half**2

    def nl(v: np.ndarray) -> np.ndarray:
        w = np.fft.irfft(v * keep, n)
        return -0.5j * k * np.fft.rfft(w * w) * keep

    v = np.fft.rfft(u0)
    for _ in range(steps):
        k1 = nl(v)
        k2 = nl(e_half * (v + 0.5 * h * k1))
        k3 = nl(e_half * v + 0.5 * h * k2)
        k4 = nl(e_full * v + h * e_half * k3)
        v = e_full * v + h / 6 * (e_full * k1 + 2 * e_half * (k2 + k3) + k4)
    return np.fft.irfft(v, n)


def stable_dt(u0: np.ndarray, T: float) -> float:
    """A time step for :func:`solve_burgers` on the grid of ``u0``: RK4's advective limit with a margin (the
    maximum principle bounds |u| by max |u0|), at most 1e-3, dividing ``T`` evenly."""
    n = np.shape(u0)[-1]
    speed = max(float(np.abs(u0).max()), 1e-12)
    h = min(1e-3, 1.0 / (speed * 2 * np.pi * n / 3))
    return T / max(1, math.ceil(T / h)) if T > 0 else h


def generate_burgers(num_samples: int, n: int = 128, viscosity: float = 0.1, T: float = 1.0,
                     dt: Optional[float] = None, gamma: float = 2.0, tau: float = 5.0, sigma: float = 25.0,
                     refine: Optional[int] = None, seed: int = 0, path: Optional[str] = None,
                     progress_bar: bool = True, comm: object = None) -> dict[str, np.ndarray]:
    """Seeded Burgers data set (see the module docstring); under mpiexec the ranks split the samples (every rank
    returns all of them). The equation is solved on ``n * refine`` points (default: at least 1024) and every
    ``refine``-th point is kept; ``dt`` defaults to :func:`stable_dt`."""
    import torch

    from deepkrylov.mesh import StructuredGrid, gaussian_random_field

    if gamma <= 0.5 or tau <= 0 or sigma < 0:
        raise ValueError(f"need gamma > 1/2, tau > 0, sigma >= 0, but got {gamma}, {tau}, {sigma}")
    refine = max(1, math.ceil(_SOLVE_POINTS / n)) if refine is None else int(refine)
    if refine < 1:
        raise ValueError(f"refine must be >= 1, but got {refine}")
    fine = n * refine
    # gaussian_random_field scales to a point std over all grid modes, the constant one included: give it the
    # std that puts sigma^2 (4 pi^2 k^2 + tau^2)^-gamma in every mode, then drop the constant mode (the mean)
    k = np.fft.fftfreq(fine, 1.0 / fine)
    point_std = sigma * float(np.sqrt(np.sum((4 * np.pi**2 * k**2 + tau**2) ** -gamma)))
    smoothness = gamma - 0.5  # Matérn nu
    a = gaussian_random_field(StructuredGrid((fine,)), kernel="matern", length=float(np.sqrt(2 * smoothness)) / tau,
                              nu=smoothness, sigma=point_std, batch=num_samples, seed=seed, periodic=True).numpy()
    a -= a.mean(axis=1, keepdims=True)
    step = stable_dt(a, T) if dt is None else float(dt)
    comm, rank, size = rank_size(comm)
    lo, hi = split(num_samples, rank, size)
    bar = progress(hi - lo, rank, "burgers", progress_bar)
    parts = []
    for s in range(lo, hi, 50):
        parts.append(solve_burgers(a[s:min(s + 50, hi)], viscosity, T, step)[:, ::refine])
        if bar is not None:
            bar.update(min(s + 50, hi) - s)
    if bar is not None:
        bar.close()
    u = gather_rows(comm, np.concatenate(parts) if parts else np.zeros((0, n)), size)
    del torch
    data = {"a": np.ascontiguousarray(a[:, ::refine]), "u": u, "x": np.arange(n) / n}
    if path is not None and rank == 0:
        save_dataset(path, data, {"problem": "burgers", "num_samples": num_samples, "n": n, "viscosity": viscosity,
                                  "T": T, "dt": step, "gamma": gamma, "tau": tau, "sigma": sigma, "refine": refine,
                                  "seed": seed})
    return data
