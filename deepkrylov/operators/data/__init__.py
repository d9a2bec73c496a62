"""Seeded PDE data generators stored as HDF5 with their parameters (``io.save_dataset``/``io.load_dataset``)."""

from . import _io as io  # noqa: F401
from . import navier_stokes  # noqa: F401
from ._io import HDF5Fields, load_dataset, save_dataset  # noqa: F401
from .antiderivative import antiderivative, generate_antiderivative, rbf_grf_1d  # noqa: F401
from .burgers import generate_burgers, solve_burgers  # noqa: F401
from .darcy import generate_darcy, solve_darcy  # noqa: F401
from .diffusion_reaction import generate_diffusion_reaction, solve_diffusion_reaction  # noqa: F401
from .navier_stokes import generate_navier_stokes  # noqa: F401

GENERATORS = {
    "antiderivative": generate_antiderivative,
    "diffusion_reaction": generate_diffusion_reaction,
    "burgers": generate_burgers,
    "darcy": generate_darcy,
    "navier_stokes": generate_navier_stokes,
}


def generate(problem: str, **kwargs):  # type: ignore[no-untyped-def]
    """Run the generator named ``problem`` (one of ``GENERATORS``) with ``kwargs``."""
    if problem not in GENERATORS:
        raise ValueError(f"problem must be one of {sorted(GENERATORS)}, but got {problem!r}")
    return GENERATORS[problem](**kwargs)
