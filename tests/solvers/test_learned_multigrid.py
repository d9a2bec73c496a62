"""Learned multigrid: hand-built stencils reproduce the classical cycle, the cycle is symmetric for any weights,
the shipped weights give a positive preconditioner that converges on held-out scenes, training lowers the loss,
bad weights files are refused; on several ranks (test_mpi.py) the cycle equals the serial one."""

from __future__ import annotations

import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import BoundaryConditions, StructuredGrid, laplacian
from deepkrylov.solvers import cg
from deepkrylov.solvers.dcdm import dcdm
from deepkrylov.solvers.learned_multigrid import (
    SHIPPED_LEARNED_MODEL, LearnedMultigrid, StencilNet, load_stencil_net, save_stencil_net,
)
from deepkrylov.solvers.learned_training import residual_loss
from deepkrylov.solvers.multigrid import Multigrid
from deepkrylov.solvers.problems import random_scene, scene_problem


def _rand(A, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, 1) + A.grid.shape, generator=g, dtype=torch.float64) * A.fluid


def _scene(n, seed):
    return laplacian(StructuredGrid((n,) * 3), BoundaryConditions.uniform(3, "neumann"), random_scene(n, seed=seed),
                     scaled=False)


def _perturbed(seed=0):
    net = StencilNet()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype))
    return net


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_hand_built_stencils_equal_the_classical_cycle(steps):
    """StencilNet's initial weights are Jacobi stencils whose dampings are the Chebyshev smoother's: the learned
    cycle then equals Multigrid(smoother='chebyshev', degree=steps) to rounding."""
    A, _ = scene_problem(16, 3, "smoke")
    L = LearnedMultigrid(A, StencilNet(steps=steps))
    M = Multigrid(A, smoother="chebyshev", degree=steps)
    for seed in range(2):
        r = _rand(A, seed)
        z, z0 = L.apply(r), M.apply(r)
        assert float((z - z0).abs().max()) <= 1e-12 * float(z0.abs().max())


def test_symmetric_for_any_weights():
    A = _scene(16, 7)
    L = LearnedMultigrid(A, _perturbed())
    u, v = _rand(A, 1), _rand(A, 2)
    uLv, vLu = float((u * L.apply(v)).sum()), float((v * L.apply(u)).sum())
    assert abs(uLv - vLu) <= 1e-12 * abs(uLv)


def test_shipped_weights_on_held_out_scenes():
    assert SHIPPED_LEARNED_MODEL.exists()
    for seed in (900001, 900002):
        A = _scene(32, seed)
        L = LearnedMultigrid(A)
        for s in range(3):  # positive along random directions
            u = _rand(A, s)
            assert float((u * L.apply(u)).sum()) > 0
        b = _rand(A, 9)
        res = cg(A, b, M=L, rtol=1e-6, max_it=40)
        assert res.converged and res.iterations <= 15, res.iterations
        assert dcdm(A, b, L, rtol=1e-6, max_it=40).iterations <= res.iterations + 2
    A, b = scene_problem(32, 3, "smoke")
    res = cg(A, b, M=LearnedMultigrid(A), rtol=1e-6, max_it=40)
    assert res.converged and res.iterations <= 12, res.iterations


def test_training_lowers_the_loss():
    A = _scene(16, 3)
    net = StencilNet()
    L = LearnedMultigrid(A, net)
    b = _rand(A, 4).repeat(4, 1, 1, 1, 1) + 0.1 * torch.randn((4, 1) + A.grid.shape, dtype=torch.float64)
    b = b * A.fluid
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    losses = []
    for _ in range(8):
        L.refresh()
        loss = residual_loss(L, b).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_bad_weights(tmp_path):
    A, _ = scene_problem(16, 3, "smoke")
    with pytest.raises(ValueError, match="for 2D grids, but the operator is 3D"):
        LearnedMultigrid(A, StencilNet(dim=2))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt or not a torch file"):
        LearnedMultigrid(A, bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"config": {}, "state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a learned multigrid weights file"):
        load_stencil_net(foreign)
    wrong = tmp_path / "wrong.pt"
    save_stencil_net(StencilNet(steps=1), wrong)
    blob = torch.load(wrong, weights_only=True)
    blob["config"]["steps"] = 2
    torch.save(blob, wrong)
    with pytest.raises(ValueError, match="does not fit a StencilNet"):
        load_stencil_net(wrong)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_stencil_net(tmp_path / "missing.pt")


def test_ranks_equal_serial(ctx):
    A = _scene(32, 900003)
    L = LearnedMultigrid(A, _perturbed(1))
    r = _rand(A, 5)
    z = L.apply(GridTensor.from_global(r, ProcessGrid(ctx, A.grid.shape))).gather()
    z0 = LearnedMultigrid(A, _perturbed(1)).apply(r)
    torch.testing.assert_close(z, z0, rtol=0, atol=1e-10 * float(z0.abs().max()))


def test_training_through_the_trainer(tmp_path):
    """train_learned_multigrid runs the operators' Trainer on generated scenes, keeps the best weights by the
    held-out energy loss, and writes them with their record."""
    from deepkrylov.solvers.learned_training import train_learned_multigrid

    net, record = train_learned_multigrid(sizes=(16,), scenes=2, validation_scenes=1, rhs_per_scene=8,
                                          lanczos_steps=20, epochs=2, batch_size=4, lr=2e-4, out=tmp_path / "w.pt")
    assert len(record["history"]) == 2 and record["best_validation_loss"] <= record["initial_validation_loss"]
    assert record["best_validation_loss"] == min(h["validation_loss"] for h in record["history"]) or \
        record["best_validation_loss"] == record["initial_validation_loss"]
    loaded = load_stencil_net(tmp_path / "w.pt")
    for p, q in zip(net.parameters(), loaded.parameters()):
        assert torch.equal(p, q)
