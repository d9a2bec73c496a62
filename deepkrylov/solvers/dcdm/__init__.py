"""DCDM, the Deep Conjugate Direction Method: a network predicts search directions that the iteration
A-orthogonalises and line-searches. :func:`dcdm` solves; :class:`DCDMNet` is the paper's network; the training
pieces make Ritz-vector data and minimise the scale-invariant line-search loss."""

from .iteration import dcdm
from .network import DCDMNet
from .training import dcdm_loss, ritz_rhs, ritz_vectors, train_dcdm

__all__ = ["dcdm", "DCDMNet", "dcdm_loss", "ritz_rhs", "ritz_vectors", "train_dcdm"]
