"""Boundary conditions per face of a structured grid: Dirichlet (zero value on the face), Neumann (zero flux),
periodic (both faces of an axis)."""

from __future__ import annotations

from typing import Sequence, Union

__all__ = ["BoundaryConditions", "BC_KINDS"]

BC_KINDS = ("dirichlet", "neumann", "periodic")


class BoundaryConditions:
    """One kind per face: ``faces[axis] = (low_kind, high_kind)`` in tensor axis order.

    Build with ``BoundaryConditions.uniform(ndim, "dirichlet")`` or from a list of per-axis pairs or kinds.
    """

    def __init__(self, faces: Sequence[Union[str, Sequence[str]]]) -> None:
        norm = []
        for axis, f in enumerate(faces):
            lo, hi = (f, f) if isinstance(f, str) else tuple(f)
            for k in (lo, hi):
                if k not in BC_KINDS:
                    raise ValueError(f"boundary kind must be one of {BC_KINDS}, but got {k!r} on axis {axis}")
            if (lo == "periodic") != (hi == "periodic"):
                raise ValueError(f"periodic must be set on both faces of axis {axis}, but got ({lo!r}, {hi!r})")
            norm.append((lo, hi))
        self.faces = tuple(norm)

    @classmethod
    def uniform(cls, ndim: int, kind: str) -> "BoundaryConditions":
        return cls([kind] * ndim)

    @property
    def ndim(self) -> int:
        return len(self.faces)

    def periodic(self, axis: int) -> bool:
        return self.faces[axis][0] == "periodic"

    @property
    def any_periodic(self) -> bool:
        return any(self.periodic(a) for a in range(self.ndim))

    @property
    def any_dirichlet(self) -> bool:
        return any("dirichlet" in f for f in self.faces)

    def __repr__(self) -> str:
        return f"BoundaryConditions({list(self.faces)})"
