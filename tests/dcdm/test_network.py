"""DCDM network and training pieces: parameter counts, distributed == serial, loss invariance, Lanczos/Ritz."""

from __future__ import annotations

import math

import pytest
import torch

from deepkrylov.distributed import ProcessGrid
from deepkrylov.solvers.dcdm.network import DCDMNet
from deepkrylov.solvers.dcdm.training import dcdm_loss, ritz_rhs, ritz_vectors
from tests.helpers import assert_matches_serial


def test_parameter_counts_match_the_paper():
    assert sum(p.numel() for p in DCDMNet().parameters()) == 97_457  # 64^3 model
    assert sum(p.numel() for p in DCDMNet(pre=6, mid=5, post=3).parameters()) == 152_881  # 128^3 model


@pytest.mark.parametrize("dim,shape", [(2, (14, 10)), (3, (12, 10, 8))])
def test_distributed_forward_backward_equal_serial(ctx, dim, shape):
    torch.manual_seed(0)
    model = DCDMNet(dim=dim, width=4, pre=2, mid=1, post=1).double()
    x_full = torch.randn((2, 1) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_matches_serial(ctx, model, x_full, ProcessGrid(ctx, shape), atol=1e-10)


def test_bad_inputs():
    model = DCDMNet(dim=3, width=2, pre=2, mid=1, post=1)
    with pytest.raises(ValueError, match="this DCDM model is 3D .* got a 2D input"):
        model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="grid sizes must be even, but got \\(8, 8, 7\\)"):
        model(torch.zeros(1, 1, 8, 8, 7))
    with pytest.raises(ValueError, match="pre must be an even number"):
        DCDMNet(pre=3)


def _laplace_1d(x: torch.Tensor) -> torch.Tensor:
    """Dirichlet 1D Laplacian (2, -1) on (batch, 1, n)."""
    p = torch.nn.functional.pad(x, (1, 1))
    return 2 * x - p[..., :-2] - p[..., 2:]


def test_loss_is_scale_invariant_and_zero_for_exact_inverse():
    n = 32
    A = 2 * torch.eye(n, dtype=torch.float64) - torch.diag(torch.ones(n - 1, dtype=torch.float64), 1) - torch.diag(
        torch.ones(n - 1, dtype=torch.float64), -1)
    b = torch.randn(3, 1, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = torch.randn(3, 1, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    l1 = dcdm_loss(_laplace_1d, b, q)
    for c in (1e-3, -2.0, 7e4):
        torch.testing.assert_close(dcdm_loss(_laplace_1d, b, c * q), l1, rtol=1e-10, atol=0)
    exact = torch.linalg.solve(A, b.squeeze(1).T).T.unsqueeze(1)
    assert dcdm_loss(_laplace_1d, b, 5.0 * exact) < 1e-20
    assert l1 > 1e-3


def test_ritz_values_of_full_lanczos_are_the_exact_eigenvalues():
    n = 24
    values, vectors = ritz_vectors(_laplace_1d, (n,), steps=n, seed=0)
    exact = torch.tensor([2 - 2 * math.cos(k * math.pi / (n + 1)) for k in range(1, n + 1)], dtype=torch.float64)
    torch.testing.assert_close(values, exact, rtol=1e-10, atol=1e-10)
    # Ritz vectors are eigenvectors: A v = lambda v
    Av = _laplace_1d(vectors.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(Av, values[:, None] * vectors, rtol=0, atol=1e-9)
    b = ritz_rhs(vectors, 5, seed=1)
    assert b.shape == (5, 1, n)
    torch.testing.assert_close(b.flatten(1).norm(dim=1), torch.ones(5, dtype=torch.float64))
    # the boosted low part of the spectrum (55% of the Ritz vectors, x9) carries most of the energy
    coeff = b.squeeze(1) @ vectors.T
    k = int(0.55 * n)
    assert (coeff[:, :k] ** 2).sum() > 10 * (coeff[:, k:] ** 2).sum()


def test_inference_runs_on_the_onednn_path():
    """No layer on torch's slow small conv3d path: eval-mode float32 CPU inference goes through a oneDNN twin
    of the network, with the same output as the plain path (to float32 rounding) and rebuilt when weights change."""
    import torch

    from deepkrylov.solvers.dcdm import DCDMNet

    torch.manual_seed(0)
    net = DCDMNet().eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        fast = net(x)
        assert "_twin" in net.__dict__
    with torch.enable_grad():
        plain = net(x).detach()
    assert float((fast - plain).abs().max()) <= 1e-5 * float(plain.abs().max())
    with torch.no_grad():
        net.head.bias.add_(1.0)
        assert torch.allclose(net(x), fast + 1.0, atol=1e-5)
