"""DCDM, the Deep Conjugate Direction Method: a network predicts search directions that the iteration
A-orthogonalises and line-searches.

:func:`dcdm` solves with any preconditioner object (the paper's network, Jacobi, multigrid, a callable);
:class:`NetworkPreconditioner` is the one "normalise r, cast, call the network, cast back" step that the Python
loop and the PETSc plugins share; :class:`DCDMNet` is the paper's network; :func:`load_model` /
:func:`save_model` read and write model files (``load_model()`` is the shipped model); the training pieces make
Ritz-vector data and minimise the scale-invariant line-search loss.

Example::

    from deepkrylov.solvers.dcdm import dcdm, load_model
    res = dcdm(A, b, load_model())          # the shipped network
    res = dcdm(A, b, Jacobi(A))             # the same iteration with another preconditioner
"""

from .iteration import DEFAULT_MAX_IT, as_dcdm_preconditioner, dcdm
from .model import SHIPPED_MODEL, load_model, save_model, shipped_model_record
from .network import DCDMNet
from .preconditioner import NetworkPreconditioner
from .training import dcdm_loss, ritz_rhs, ritz_vectors, train_dcdm

__all__ = [
    "dcdm", "DEFAULT_MAX_IT", "as_dcdm_preconditioner", "NetworkPreconditioner", "DCDMNet",
    "load_model", "save_model", "shipped_model_record", "SHIPPED_MODEL",
    "dcdm_loss", "ritz_rhs", "ritz_vectors", "train_dcdm",
]
