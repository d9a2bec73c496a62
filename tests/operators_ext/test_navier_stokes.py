"""Navier-Stokes vorticity generator: exact decaying Euler eigenmodes, second-order time stepping, GRF statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepkrylov.operators.data.navier_stokes import (
    fno_forcing,
    generate_navier_stokes,
    grf_vorticity,
    solve_navier_stokes_2d,
)


def _xy(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(n, dtype=torch.float64) / n
    Y, X = torch.meshgrid(t, t, indexing="ij")  # y along axis 0
    return X, Y


def test_viscous_decay_of_an_eigenmode_combination_matches_exp():
    # modes with one |k|^2 are steady for the nonlinear term (J(psi, w) = 0), so without forcing
    # w(t) = w0 exp(-nu 4 pi^2 |k|^2 t) exactly; Crank-Nicolson is second order in dt
    n, nu = 32, 0.01
    X, Y = _xy(n)
    w0 = (torch.cos(2 * math.pi * (X + 2 * Y)) + torch.sin(2 * math.pi * (2 * X - Y)))[None]
    errs = []
    for dt in (2e-2, 1e-2):
        t, w = solve_navier_stokes_2d(w0, nu, 0.4, dt=dt, record_steps=4)
        exact = w0[:, None] * torch.exp(-nu * 4 * math.pi**2 * 5 * t)[None, :, None, None]
        errs.append(float((w - exact).abs().max()))
    assert errs[1] < 1e-4
    assert 3.5 < errs[0] / errs[1] < 4.5  # O(dt^2)


def test_nonlinear_term_transfers_energy_and_forcing_drives_the_flow():
    n = 32
    X, Y = _xy(n)
    w0 = (torch.cos(2 * math.pi * X) + torch.cos(2 * math.pi * 2 * Y))[None]  # two different |k|: not steady
    _, w = solve_navier_stokes_2d(w0, 1e-3, 0.5, dt=1e-2, record_steps=1)
    spectrum = torch.fft.rfft2(w[0, 0]).abs()
    assert spectrum[2, 1] > 1e-3 * spectrum.max()  # the interaction mode (kx, ky) = (1, 2) appears
    # no initial vorticity: the forcing alone builds up f t (nonlinear term vanishes for the forced mode)
    f = fno_forcing(n)
    t, w = solve_navier_stokes_2d(torch.zeros(1, n, n, dtype=torch.float64), 1e-3, 0.1, dt=1e-3, forcing=f)
    decay = (1 - math.exp(-1e-3 * 8 * math.pi**2 * 0.1)) / (1e-3 * 8 * math.pi**2)
    torch.testing.assert_close(w[0, 0], f * decay, rtol=1e-6, atol=1e-9)


def test_grf_is_seeded_mean_zero_and_has_the_fno_spectrum():
    a, b = grf_vorticity(64, 32, seed=3), grf_vorticity(64, 32, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, grf_vorticity(64, 32, seed=4))
    assert float(a.mean(dim=(1, 2)).abs().max()) < 1e-12
    # E|w_k|^2 (orthonormal coefficients) = 7^3 (4 pi^2 |k|^2 + 49)^-2.5 for every k != 0
    coef = torch.fft.rfft2(a, norm="forward")
    for k in ((0, 1), (1, 0), (2, 3)):
        var = float((coef[:, k[0], k[1]].abs() ** 2).mean())
        expected = 7**3 * (4 * math.pi**2 * (k[0] ** 2 + k[1] ** 2) + 49) ** -2.5
        assert abs(var / expected - 1) < 0.35


def test_generate_and_bad_inputs(tmp_path):
    d = generate_navier_stokes(3, n=16, viscosity=1e-3, T=0.04, dt=1e-2, record_steps=2, seed=1, batch_size=2)
    assert d["w0"].shape == (3, 16, 16) and d["w"].shape == (3, 2, 16, 16)
    np.testing.assert_allclose(d["t"], [0.02, 0.04])
    d2 = generate_navier_stokes(3, n=16, viscosity=1e-3, T=0.04, dt=1e-2, record_steps=2, seed=1, batch_size=3)
    np.testing.assert_allclose(d["w"], d2["w"], rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="even integer >= 4, but got 15"):
        grf_vorticity(1, 15)
    with pytest.raises(ValueError, match="must be divisible by record_steps=3"):
        solve_navier_stokes_2d(torch.zeros(1, 8, 8, dtype=torch.float64), 1e-3, 0.04, dt=1e-2, record_steps=3)
    with pytest.raises(ValueError, match="must be > 0"):
        solve_navier_stokes_2d(torch.zeros(1, 8, 8, dtype=torch.float64), 0.0, 1.0)
