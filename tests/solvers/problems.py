"""Test problems built independently of deepkrylov.mesh: cell-centred graph Laplacians as SciPy CSR in natural
(x-fastest) order, with Dirichlet, Neumann, periodic faces and solid obstacle cells (identity rows)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def laplacian(shape: tuple, bc: str = "dirichlet", mask: np.ndarray | None = None) -> sp.csr_matrix:
    """-Laplacian (unit spacing) on cells of ``shape``; bc in dirichlet | neumann | periodic applies to every face.

    ``mask`` (bool, True = fluid): edges only between fluid cells, solid cells get identity rows (decoupled),
    fluid faces touching a solid cell are zero-flux (Neumann).
    """
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    fluid = np.ones(shape, bool) if mask is None else mask.astype(bool)
    diag = np.zeros(shape)
    rows, cols = [], []
    for ax in range(len(shape)):
        a = np.moveaxis(idx, ax, 0)
        f = np.moveaxis(fluid, ax, 0)
        d = np.moveaxis(diag, ax, 0)
        pairs = [(a[:-1], a[1:], f[:-1] & f[1:])]
        if bc == "periodic" and shape[ax] > 2:
            pairs.append((a[-1:], a[:1], f[-1:] & f[:1]))
        for i, j, ok in pairs:
            rows += [i[ok], j[ok]]
            cols += [j[ok], i[ok]]
        if bc == "dirichlet":  # ghost value -u at the wall: +2 on the diagonal
            d[0] += 2.0 * f[0]
            d[-1] += 2.0 * f[-1]
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    c = np.concatenate(cols) if cols else np.zeros(0, int)
    off = sp.csr_matrix((-np.ones(r.size), (r, c)), shape=(n, n))
    deg = -np.asarray(off.sum(axis=1)).ravel()
    dvals = diag.ravel() + deg
    dvals[~fluid.ravel()] = 1.0
    return (off + sp.diags(dvals)).tocsr()


def sphere_mask(shape: tuple, radius_frac: float = 0.25) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij")
    r2 = sum((g - s / 2) ** 2 for g, s in zip(grids, shape))
    return r2 > (radius_frac * min(shape)) ** 2


def rhs(shape: tuple, seed: int = 0, mask: np.ndarray | None = None, singular: bool = False) -> np.ndarray:
    b = np.random.default_rng(seed).standard_normal(shape)
    if mask is not None:
        b[~mask] = 0.0
    if singular:
        b -= b.mean()
    return b
