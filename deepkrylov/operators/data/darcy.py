"""2D Darcy flow ``-div(a grad u) = f`` on the unit square with ``u = 0`` on the boundary, at any resolution.

The coefficient is FNO's thresholded GRF (``high`` where the field is >= 0, ``low`` elsewhere), the operator is
deepkrylov.mesh's cell-centred ``DiffusionOperator`` and every sample is solved with deepkrylov's own Jacobi-PCG
(float64): this is where the operators and the solvers meet. Data: ``a (N, n, n)``, ``u (N, n, n)``.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from ._common import gather_rows, progress, rank_size, split
from ._io import save_dataset

__all__ = ["solve_darcy", "generate_darcy"]


def solve_darcy(a: Union[np.ndarray, torch.Tensor], f: Union[float, np.ndarray, torch.Tensor] = 1.0,
                rtol: float = 1e-10, max_it: int = 100000) -> np.ndarray:
    """Solutions ``(batch, n, n)`` for coefficients ``a (batch, n, n)`` (or ``(n, n)``) and source ``f``
    (number or ``(n, n)`` cell values); raises if PCG does not converge."""
    from deepkrylov.mesh import DiffusionOperator, StructuredGrid
    from deepkrylov.solvers import Jacobi, pcg

    a_t = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    if a_t.ndim == 2:
        a_t = a_t[None]
    if a_t.ndim != 3 or a_t.shape[1] != a_t.shape[2]:
        raise ValueError(f"a must have shape (batch, n, n), but got {tuple(a_t.shape)}")
    if (a_t <= 0).any():
        raise ValueError("a must be positive everywhere")
    n = a_t.shape[1]
    grid = StructuredGrid((n, n))
    rhs = torch.as_tensor(np.asarray(f), dtype=torch.float64).expand(1, 1, n, n).contiguous()
    out = np.empty(tuple(a_t.shape))
    for i in range(a_t.shape[0]):
        A = DiffusionOperator(grid, coefficient=a_t[i])
        res = pcg(A, rhs, M=Jacobi(A), rtol=rtol, max_it=max_it)
        if not res.converged:
            raise RuntimeError(f"Darcy sample {i}: PCG did not converge ({res.reason}, {res.iterations} its)")
        out[i] = res.x[0, 0].numpy()
    return out


def generate_darcy(num_samples: int, n: int = 64, high: float = 12.0, low: float = 3.0, length: float = 0.1,
                   f: float = 1.0, seed: int = 0, rtol: float = 1e-10, path: Optional[str] = None,
                   progress_bar: bool = True, comm: object = None) -> dict[str, np.ndarray]:
    """Seeded data set; under mpiexec the ranks split the samples (every rank returns all of them)."""
    from deepkrylov.mesh import StructuredGrid, darcy_coefficient, gaussian_random_field

    field = gaussian_random_field(StructuredGrid((n, n)), kernel="matern", length=length, nu=1.5,
                                  batch=num_samples, seed=seed)
    a = darcy_coefficient(field, high, low).numpy()
    comm, rank, size = rank_size(comm)
    lo, hi = split(num_samples, rank, size)
    bar = progress(hi - lo, rank, "darcy", progress_bar)
    parts = []
    for i in range(lo, hi):
        parts.append(solve_darcy(a[i], f, rtol))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    u = gather_rows(comm, np.concatenate(parts) if parts else np.zeros((0, n, n)), size)
    data = {"a": a, "u": u}
    if path is not None and rank == 0:
        save_dataset(path, data, {"problem": "darcy", "num_samples": num_samples, "n": n, "high": high, "low": low,
                                  "length": length, "f": f, "seed": seed, "rtol": rtol})
    return data
