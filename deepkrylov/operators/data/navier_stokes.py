"""2D incompressible Navier-Stokes in vorticity form on the periodic unit square (the FNO data set's setting).

    dw/dt + u . grad w = nu Lap w + f,   u = (d psi/dy, -d psi/dx),   -Lap psi = w,   w(0) = w0

Pseudo-spectral: the nonlinear term is evaluated in physical space with 2/3-rule dealiasing; time stepping is
Crank-Nicolson for viscosity with a Heun (predictor-corrector) step for advection and forcing. Initial vorticity
is a Gaussian random field with covariance ``7^{3/2} (-Lap + 49)^{-2.5}`` (mean zero); the forcing is
``0.1 (sin 2pi(x+y) + cos 2pi(x+y))``. Everything is seeded and computed in float64.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["grf_vorticity", "fno_forcing", "solve_navier_stokes_2d", "generate_navier_stokes"]


def _wavenumbers(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular wavenumbers ``2 pi k`` on the (n, n//2+1) rfft grid: (ky along axis 0, kx along axis 1)."""
    k_full = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64, device=device) * 2 * math.pi
    k_half = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64, device=device) * 2 * math.pi
    return k_full[:, None].expand(n, n // 2 + 1), k_half[None, :].expand(n, n // 2 + 1)


def _check_n(n: int) -> None:
    if int(n) < 4 or int(n) % 2:
        raise ValueError(f"the grid size n must be an even integer >= 4, but got {n}")


def grf_vorticity(
    num: int, n: int, seed: int = 0, alpha: float = 2.5, tau: float = 7.0, device: Union[str, torch.device] = "cpu"
) -> torch.Tensor:
    """``num`` samples ``(num, n, n)`` of the mean-zero GRF with covariance ``tau^(2 alpha - 2) (-Lap + tau^2)^-alpha``
    (the FNO initial vorticity for ``alpha=2.5, tau=7``; ``sigma = tau^(alpha - 1)`` = 7^{1.5})."""
    _check_n(n)
    if num < 1:
        raise ValueError(f"num must be >= 1, but got {num}")
    device = torch.device(device)
    ky, kx = _wavenumbers(n, device)
    sigma = tau ** (alpha - 1.0)
    sqrt_eig = sigma * (kx**2 + ky**2 + tau**2) ** (-alpha / 2.0)
    sqrt_eig[0, 0] = 0.0
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(num, n, n, generator=g, dtype=torch.float64).to(device)
    xi = torch.fft.rfft2(noise, norm="ortho")  # unit-variance coefficients of the orthonormal Fourier basis
    return torch.fft.irfft2(sqrt_eig * xi, s=(n, n), norm="forward")


def fno_forcing(n: int, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """``0.1 (sin 2pi(x+y) + cos 2pi(x+y))`` on the ``n x n`` grid ``x_i = i/n``."""
    _check_n(n)
    t = torch.arange(n, dtype=torch.float64, device=torch.device(device)) / n
    X, Y = torch.meshgrid(t, t, indexing="ij")
    return 0.1 * (torch.sin(2 * math.pi * (X + Y)) + torch.cos(2 * math.pi * (X + Y)))


def solve_navier_stokes_2d(
    w0: torch.Tensor, viscosity: float, T: float, dt: float = 1e-3, record_steps: int = 1,
    forcing: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate from ``w0`` (``(batch, n, n)``, float64) to time ``T``; returns ``(times, w)`` with ``w`` of shape
    ``(batch, record_steps, n, n)`` at the ``record_steps`` equally spaced times ``T/record_steps, ..., T``.

    ``forcing``: ``(n, n)`` field or None (no forcing).
    """
    if w0.dim() != 3 or w0.shape[-1] != w0.shape[-2]:
        raise ValueError(f"w0 must have shape (batch, n, n), but got {tuple(w0.shape)}")
    n = w0.shape[-1]
    _check_n(n)
    if viscosity <= 0 or T <= 0 or dt <= 0:
        raise ValueError(f"viscosity, T and dt must be > 0, but got {viscosity}, {T}, {dt}")
    if record_steps < 1:
        raise ValueError(f"record_steps must be >= 1, but got {record_steps}")
    steps = int(round(T / dt))
    if steps < record_steps or abs(steps * dt - T) > 1e-9 * max(1.0, T):
        raise ValueError(f"T={T} must be a multiple of dt={dt} with at least record_steps={record_steps} steps")
    if steps % record_steps:
        raise ValueError(f"T/dt = {steps} steps must be divisible by record_steps={record_steps}")
    w0 = w0.to(torch.float64)
    device = w0.device
    ky, kx = _wavenumbers(n, device)
    k2 = kx**2 + ky**2
    inv_lap = 1.0 / torch.where(k2 == 0, torch.ones_like(k2), k2)
    inv_lap[0, 0] = 0.0
    kmax = n // 2
    dealias = ((ky.abs() <= 2.0 / 3.0 * kmax * 2 * math.pi) & (kx.abs() <= 2.0 / 3.0 * kmax * 2 * math.pi)).to(
        torch.float64
    )
    f_h = torch.zeros_like(k2, dtype=torch.complex128) if forcing is None else torch.fft.rfft2(
        forcing.to(device=device, dtype=torch.float64)
    )
    lhs = 1.0 + 0.5 * dt * viscosity * k2
    rhs_op = 1.0 - 0.5 * dt * viscosity * k2

    def advection(w_h: torch.Tensor) -> torch.Tensor:
        psi_h = w_h * inv_lap
        u = torch.fft.irfft2(1j * ky * psi_h, s=(n, n))  # u = d psi / dy  (y along axis 0)
        v = torch.fft.irfft2(-1j * kx * psi_h, s=(n, n))  # v = -d psi / dx
        wx = torch.fft.irfft2(1j * kx * w_h, s=(n, n))
        wy = torch.fft.irfft2(1j * ky * w_h, s=(n, n))
        return dealias * torch.fft.rfft2(u * wx + v * wy)

    w_h = torch.fft.rfft2(w0)
    every = steps // record_steps
    out, times = [], []
    for step in range(1, steps + 1):
        adv = advection(w_h)
        w_pred = (rhs_op * w_h + dt * (f_h - adv)) / lhs
        adv2 = advection(w_pred)
        w_h = (rhs_op * w_h + dt * (f_h - 0.5 * (adv + adv2))) / lhs
        if step % every == 0:
            out.append(torch.fft.irfft2(w_h, s=(n, n)))
            times.append(step * dt)
    return torch.tensor(times, dtype=torch.float64), torch.stack(out, dim=1)


def generate_navier_stokes(
    num_samples: int, n: int = 64, viscosity: float = 1e-3, T: float = 1.0, dt: float = 1e-3,
    record_steps: int = 1, seed: int = 0, batch_size: int = 100, device: Union[str, torch.device] = "cpu",
    path: Optional[str] = None,
) -> dict[str, np.ndarray]:
    """Seeded data set ``{"w0": (N, n, n), "w": (N, record_steps, n, n), "t": (record_steps,)}`` with the FNO
    initial field and forcing; written to HDF5 at ``path`` when given (through the package's data I/O)."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, but got {num_samples}, {batch_size}")
    w0 = grf_vorticity(num_samples, n, seed=seed, device=device)
    f = fno_forcing(n, device=device)
    chunks, times = [], None
    for s in range(0, num_samples, batch_size):
        times, w = solve_navier_stokes_2d(w0[s:s + batch_size], viscosity, T, dt, record_steps, f)
        chunks.append(w)
    data = {
        "w0": w0.cpu().numpy(), "w": torch.cat(chunks).cpu().numpy(), "t": times.numpy(),  # type: ignore[union-attr]
    }
    if path is not None:
        _save(path, data, {"equation": "navier_stokes_2d", "n": n, "viscosity": viscosity, "T": T, "dt": dt,
                           "record_steps": record_steps, "seed": seed})
    return data


def _save(path: str, data: dict[str, np.ndarray], attrs: dict) -> None:
    from deepkrylov.operators.data import io  # the package's HDF5 I/O

    io.save_dataset(path, data, attrs)
