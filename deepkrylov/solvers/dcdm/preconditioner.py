"""A network as a preconditioner: ``z = ||r|| f(r / ||r||)``, the one implementation of "normalise, cast, call, cast
back" that the Python :func:`~deepkrylov.solvers.dcdm.dcdm` loop and the PETSc plugins (``DCDM``, ``DCDMPC``)
share."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from deepkrylov.distributed import GridTensor, as_grid_tensor

from ..preconditioners import Preconditioner

__all__ = ["NetworkPreconditioner"]

Field = Union[torch.Tensor, GridTensor]


class NetworkPreconditioner(Preconditioner):
    """``z = ||r|| model(r / ||r||)``, the network run in its dtype and the result returned in ``r``'s.

    The DCDM network is nonlinear and was trained on unit-norm residuals, so its input is normalised. Its output is
    scaled back by ``||r||``: the map is then positively homogeneous (``M(c r) = c M(r)``, ``M(0) = 0``), which
    changes nothing in a line-searched iteration (DCDM, FCG: the scale of a direction cancels) but makes PETSc's
    *preconditioned* residual norm ``||M r||`` (``KSPFCG``'s default) shrink with ``r`` instead of staying
    ``O(1)``. The network runs without autograd. Not symmetric and not linear: use it in
    :func:`~deepkrylov.solvers.dcdm.dcdm` or :func:`~deepkrylov.solvers.fcg`, not in plain CG.

    Args:
        model: the network: an ``nn.Module`` or callable on GridTensors ``(batch, 1, *spatial)`` that says so with
            ``takes_grid_tensors = True`` (:class:`~deepkrylov.solvers.dcdm.DCDMNet`), or one on plain tensors
            (then on one rank only).
        dtype: the dtype the network runs in; default: the dtype of its parameters (else ``r``'s).
    """

    is_symmetric = False
    is_positive_definite = None
    takes_grid_tensors = True

    def __init__(self, model: Any, *, dtype: Optional[torch.dtype] = None) -> None:
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable, but got {type(model).__name__}")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, but got {dtype!r}")
        if dtype is None and isinstance(model, torch.nn.Module):
            p = next(model.parameters(), None)
            dtype = p.dtype if p is not None else None
        self.model = model
        self.dtype = dtype

    @property
    def dim(self) -> Optional[int]:
        """The number of spatial axes the network takes (its ``dim`` attribute), or None when it does not say."""
        d = getattr(self.model, "dim", None)
        return int(d) if isinstance(d, int) else None

    def apply(self, r: Field) -> Field:
        g, restore = as_grid_tensor(r, r.shape[2:] if len(r.shape) > 2 else None)
        with torch.no_grad():
            n = g.norm()
            if not float(n) > 0:  # zero (M(0) = 0) or NaN (passed on for the caller's NaN check)
                return restore(g * n)
            rin = g / n
            if self.dtype is not None and self.dtype != g.dtype:
                return restore(self._call(rin.to(self.dtype)).to(g.dtype) * n)
            return restore(self._call(rin) * n)

    def _call(self, r: GridTensor) -> GridTensor:
        """The network on ``r``: as it is for a network on GridTensors (``takes_grid_tensors``, e.g.
        :class:`~deepkrylov.solvers.dcdm.DCDMNet`), on the block of a one-rank grid for any other."""
        if getattr(self.model, "takes_grid_tensors", False):
            return self.model(r)
        if r.grid.size > 1:
            raise TypeError(f"{type(self.model).__name__} takes plain tensors only (no takes_grid_tensors = True), "
                            f"but the residual is split over {r.grid.size} ranks; use a network on GridTensors "
                            "such as DCDMNet")
        return r.with_local(self.model(r.local))

    def __repr__(self) -> str:
        name = type(self.model).__name__
        return f"NetworkPreconditioner({name}{', dtype=' + str(self.dtype) if self.dtype is not None else ''})"
