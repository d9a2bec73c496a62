"""Antiderivative data set of the DeepONet paper: ``s'(x) = u(x)``, ``s(0) = 0`` on [0, 1].

``u`` is a zero-mean Gaussian random field with the RBF kernel ``exp(-|x-x'|^2 / (2 l^2))`` (l = 0.2), sampled
on 1000 points, interpolated by cubic splines to ``m`` equispaced sensors; ``s`` is the exact antiderivative of
that spline. Aligned form: ``u (N, m)``, ``y (P, 1)``, ``s (N, P)``; unaligned triples: ``u (N, m)``,
``y (N, 1)``, ``s (N,)`` with one random point per function.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.interpolate import CubicSpline

from ._common import rank_size
from ._io import save_dataset

__all__ = ["rbf_grf_1d", "antiderivative", "generate_antiderivative"]


def rbf_grf_1d(num: int, length: float = 0.2, points: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x (points,), u (num, points))``: seeded samples of the RBF-kernel GRF on [0, 1]."""
    if length <= 0 or num < 1 or points < 2:
        raise ValueError(f"need length > 0, num >= 1, points >= 2, but got {length}, {num}, {points}")
    x = np.linspace(0.0, 1.0, points)
    k = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length**2)
    w, v = np.linalg.eigh(k)
    root = v * np.sqrt(np.clip(w, 0.0, None))
    z = np.random.default_rng(seed).standard_normal((num, points))
    return x, z @ root.T


def antiderivative(x: np.ndarray, u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Antiderivative from 0 of the cubic spline through ``(x, u[i])`` at points ``y`` (rows of ``u``)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size and (y.min() < x[0] or y.max() > x[-1]):
        raise ValueError(f"points must lie in the domain [{x[0]}, {x[-1]}], but got [{y.min()}, {y.max()}]")
    spl = CubicSpline(x, np.atleast_2d(u), axis=1).antiderivative()
    return spl(y) - spl(x[:1])


def generate_antiderivative(num_samples: int, m: int = 100, num_points: int = 100, aligned: bool = True,
                            length: float = 0.2, seed: int = 0, path: Optional[str] = None,
                            sensors: Optional[np.ndarray] = None, comm: object = None) -> dict[str, np.ndarray]:
    """Seeded data set (see the module docstring); ``num_points`` equispaced outputs when aligned. Cheap, so
    every rank computes all of it; under mpiexec only rank 0 writes ``path``."""
    if m < 2 or num_points < 1:
        raise ValueError(f"need m >= 2 and num_points >= 1, but got {m}, {num_points}")
    xs = np.linspace(0.0, 1.0, m) if sensors is None else np.asarray(sensors, dtype=np.float64)
    if xs.min() < 0.0 or xs.max() > 1.0:
        raise ValueError(f"sensors must lie in [0, 1], but got [{xs.min()}, {xs.max()}]")
    x, u_fine = rbf_grf_1d(num_samples, length, seed=seed)
    u = CubicSpline(x, u_fine, axis=1)(xs)
    if aligned:
        y = np.linspace(0.0, 1.0, num_points)
        s = antiderivative(xs, u, y)
        data = {"u": u, "y": y[:, None], "s": s}
    else:
        y = np.random.default_rng(seed + 1).random(num_samples)
        s = np.array([antiderivative(xs, u[i], y[i:i + 1])[0, 0] for i in range(num_samples)])
        data = {"u": u, "y": y[:, None], "s": s}
    data["sensors"] = xs
    if path is not None and rank_size(comm)[1] == 0:
        save_dataset(path, data, {"problem": "antiderivative", "num_samples": num_samples, "m": m,
                                  "num_points": num_points, "aligned": aligned, "length": length, "seed": seed})
    return data
