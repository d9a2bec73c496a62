"""Seeded PDE data generators stored as HDF5 (``io.save_dataset``/``io.load_dataset``)."""

from . import _io as io  # noqa: F401
from ._io import load_dataset, save_dataset  # noqa: F401
from . import navier_stokes  # noqa: F401
from .navier_stokes import generate_navier_stokes  # noqa: F401
