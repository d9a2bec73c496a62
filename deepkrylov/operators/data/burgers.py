"""1D viscous Burgers ``u_t + (u^2/2)_x = nu u_xx`` on the periodic unit interval, solved spectrally.

Pseudo-spectral in space (2/3-rule dealiasing), integrating factor for the viscous term and classical RK4 in
time, float64. The initial condition is a periodic GRF (Matérn via deepkrylov.mesh); by default the prior of the
FNO paper's Burgers data, ``N(0, 625 (-Delta + 25 I)^-2)``: Matérn nu = 3/2 with ``2 nu / length^2 = 25``.
Data: ``a (N, n)`` the initial condition, ``u (N, n)`` the solution at time ``T``, ``x (n,)``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import gather_rows, progress, rank_size, split
from ._io import save_dataset

__all__ = ["solve_burgers", "generate_burgers"]

FNO_LENGTH = (3.0 / 25.0) ** 0.5
# point standard deviation of N(0, 625 (-Delta + 25 I)^-2) on the periodic unit interval
FNO_SIGMA = float(np.sqrt(np.sum(625.0 / ((2 * np.pi * np.arange(-4096, 4097)) ** 2 + 25.0) ** 2)))


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


def generate_burgers(num_samples: int, n: int = 128, viscosity: float = 0.1, T: float = 1.0, dt: float = 1e-3,
                     length: float = FNO_LENGTH, sigma: float = FNO_SIGMA, seed: int = 0, path: Optional[str] = None,
                     progress_bar: bool = True, comm: object = None) -> dict[str, np.ndarray]:
    """Seeded Burgers data set; under mpiexec the ranks split the samples (every rank returns all of them)."""
    import torch

    from deepkrylov.mesh import StructuredGrid, gaussian_random_field

    a = gaussian_random_field(StructuredGrid((n,)), kernel="matern", length=length, nu=1.5, sigma=sigma,
                              batch=num_samples, seed=seed, periodic=True).numpy()
    comm, rank, size = rank_size(comm)
    lo, hi = split(num_samples, rank, size)
    bar = progress(hi - lo, rank, "burgers", progress_bar)
    parts = []
    for s in range(lo, hi, 50):
        parts.append(solve_burgers(a[s:min(s + 50, hi)], viscosity, T, dt))
        if bar is not None:
            bar.update(min(s + 50, hi) - s)
    if bar is not None:
        bar.close()
    u = gather_rows(comm, np.concatenate(parts) if parts else np.zeros((0, n)), size)
    del torch
    data = {"a": a, "u": u, "x": np.arange(n) / n}
    if path is not None and rank == 0:
        save_dataset(path, data, {"problem": "burgers", "num_samples": num_samples, "n": n, "viscosity": viscosity,
                                  "T": T, "dt": dt, "length": length, "sigma": sigma, "seed": seed})
    return data
