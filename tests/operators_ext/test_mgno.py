"""MgNO: the authors' parameter count, one set of weights at several resolutions, V-cycle structure, resolution
consistency (one limit as the grid is refined), bad inputs and the sizes named in their errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepkrylov.operators.mgno import DARCY_ROUGH_ITERATIONS, MgConv, MgNO


def test_darcy_rough_parameter_count():
    # the authors' Darcy model: no head bias, torch's initialisation, the cycle tied to the input grid
    model = MgNO(in_channels=1, out_channels=1, channels=24, num_layers=4, iterations=[[1, 0]] * 5 + [[2, 0]],
                 transfer_init="random", head_bias=False)
    assert sum(p.numel() for p in model.parameters()) == 572_661
    assert tuple(DARCY_ROUGH_ITERATIONS) == ((1, 0),) * 5 + ((2, 0),)
    assert sum(p.numel() for p in MgNO(head_bias=False).parameters()) == 572_661
    # the resolution-consistent model (the CLI's) adds only the head's bias
    assert sum(p.numel() for p in MgNO(resolution=64).parameters()) == 572_662
    assert MgNO(resolution=64).config()["resolution"] == [64, 64]


def _smooth(n: int) -> torch.Tensor:
    """A smooth field sampled at the cell centres of an n x n grid on the unit square."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x, y = torch.meshgrid(c, c, indexing="ij")
    return (torch.sin(torch.pi * x) * torch.cos(2 * torch.pi * y) + x * y ** 2)[None, None]


def test_mgconv_converges_as_the_grid_is_refined():
    # one random V-cycle (learned finest level 8x8, coarsest 2x2) applied to a smooth function sampled at h, h/2,
    # h/4, h/8: the outputs' cell averages on the 8x8 grid (torch's avg_pool2d) converge to one limit, the
    # differences shrinking >= 3x per refinement (measured 0.26, 0.066, 0.020); the authors' grid-tied cycle with
    # the same weights changes its function with the grid (0.55, 0.32, 0.18: every level's receptive field halves)
    torch.manual_seed(0)
    mg = MgConv(1, 2, [[1, 0], [1, 1], [2, 0]], dim=2, resolution=8).double()
    tied = MgConv(1, 2, [[1, 0], [1, 1], [2, 0]], dim=2).double()
    tied.load_state_dict(mg.state_dict())
    for model, consistent in ((mg, True), (tied, False)):
        with torch.no_grad():
            avg = [F.avg_pool2d(model(_smooth(n)), n // 8) for n in (8, 16, 32, 64)]
        diff = [float((avg[i + 1] - avg[i]).norm() / avg[-1].norm()) for i in range(3)]
        if consistent:
            assert diff[1] < diff[0] / 3 and diff[2] < diff[1] / 3 and diff[2] < 0.03, diff
        else:
            assert diff[2] > 0.1 and diff[2] > diff[1] / 2.5, diff


def test_mgconv_at_its_own_grid_is_the_authors_cycle():
    torch.manual_seed(4)
    mg = MgConv(2, 3, [[1, 0], [2, 1], [1, 0]], dim=2, resolution=16).double()
    tied = MgConv(2, 3, [[1, 0], [2, 1], [1, 0]], dim=2).double()
    tied.load_state_dict(mg.state_dict())
    f = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(mg(f), tied(f), rtol=0, atol=0)
    # on twice the grid: the cycle of the cell averages, interpolated back (cell-centred, zero outside)
    f2 = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(mg(f2), _interp(tied(F.avg_pool2d(f2, 2))))


def _interp(v: torch.Tensor) -> torch.Tensor:
    """Cell-centred bilinear interpolation onto the grid twice as fine, zero outside (3/4 own cell, 1/4 neighbour)."""
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=v.dtype)
    up = v.repeat_interleave(2, 2).repeat_interleave(2, 3)
    return F.conv2d(up, torch.outer(k1, k1).expand(v.shape[1], 1, 3, 3), padding=1, groups=v.shape[1])


def test_whole_model_resampling():
    # resample="model" (default): on a grid 2**k times the training grid the whole network runs on the training
    # grid (cell averages in, cell-centred interpolation out; coarser grids: interpolated in, averaged out);
    # resample="layer": only the V-cycles do
    torch.manual_seed(7)
    net = MgNO(1, 1, channels=3, num_layers=2, iterations=[[1, 0]] * 3, resolution=8).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _interp(net(F.avg_pool2d(x, 2))))
        x4 = x[..., ::4, ::4]
        torch.testing.assert_close(net(x4), F.avg_pool2d(net(_interp(x4)), 2))
        net.resample = "layer"
        assert not torch.allclose(net(x), _interp(net(F.avg_pool2d(x, 2))))


def test_multigrid_initial_transfers():
    # transfer_init="multigrid": restriction = random + the 2x2 cell average of each channel, prolongation =
    # random + cell-centred bilinear interpolation, smoothers / levels; "random" (default) is torch's (the authors')
    torch.manual_seed(5)
    a = MgConv(2, 2, [[1, 0], [1, 0]], dim=1)
    torch.manual_seed(5)
    b = MgConv(2, 2, [[1, 0], [1, 0]], dim=1, transfer_init="multigrid")
    torch.testing.assert_close(b.restrict_u[0].weight - a.restrict_u[0].weight,
                               torch.eye(2)[:, :, None] * torch.tensor([0.0, 0.5, 0.5]))
    torch.testing.assert_close(b.prolong[0].weight - a.prolong[0].weight,
                               torch.eye(2)[:, :, None] * torch.tensor([0.25, 0.75, 0.75, 0.25]))
    torch.testing.assert_close(b.pre[1][0].S.weight, a.pre[1][0].S.weight / 2)  # 2 levels


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_same_weights_at_two_resolutions(dim):
    torch.manual_seed(0)
    model = MgNO(in_channels=1, out_channels=2, channels=4, num_layers=2, iterations=[[1, 0], [1, 1], [2, 0]],
                 dim=dim).double()
    n = {1: 32, 2: 16, 3: 8}[dim]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for size in (n, 2 * n):
        x = torch.randn((2, 1) + (size,) * dim, dtype=torch.float64)
        y = model(x)
        assert y.shape == (2, 2) + (size,) * dim and torch.isfinite(y).all()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_mgconv_is_a_linear_v_cycle():
    # MgConv is linear in f: V(a f + b g) = a V(f) + b V(g), and with one level and one step it is S f.
    torch.manual_seed(1)
    mg = MgConv(2, 3, [[2, 1], [1, 0], [1, 1]], dim=2, padding_mode="circular").double()
    f, g = torch.randn(2, 1, 2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(mg(2 * f - 3 * g), 2 * mg(f) - 3 * mg(g), rtol=1e-12, atol=1e-12)
    one = MgConv(2, 3, [[1, 0]], dim=2).double()
    s = one.pre[0][0].S
    torch.testing.assert_close(one(f), F.conv2d(f, s.weight, padding=1))


def test_two_level_cycle_matches_hand_written_formula():
    torch.manual_seed(2)
    mg = MgConv(1, 2, [[1, 0], [1, 0]], dim=1, padding_mode="zeros").double()
    f = torch.randn(1, 1, 16, dtype=torch.float64)
    S0 = mg.pre[0][0].S.weight
    A1, S1 = mg.pre[1][0].A.weight, mg.pre[1][0].S.weight
    u0 = F.conv1d(f, S0, padding=1)
    f1 = F.conv1d(f, mg.restrict_f[0].weight, stride=2, padding=1)
    u1 = F.conv1d(u0, mg.restrict_u[0].weight, stride=2, padding=1)
    u1 = u1 + F.conv1d(f1 - F.conv1d(u1, A1, padding=1), S1, padding=1)
    ref = u0 + F.conv_transpose1d(u1, mg.prolong[0].weight, stride=2, padding=1)
    torch.testing.assert_close(mg(f), ref)


def test_padding_mode_is_the_boundary_condition():
    # every 3x3 smoothing/restriction convolution uses the padding mode (periodic: circular wrap-around);
    # with a single level and a circular mode the cycle is translation-equivariant on the torus
    torch.manual_seed(3)
    mg = MgConv(1, 2, [[2, 0]], dim=2, padding_mode="circular").double()
    f = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    S0, A1, S1 = mg.pre[0][0].S.weight, mg.pre[0][1].A.weight, mg.pre[0][1].S.weight
    wrap = lambda v: F.pad(v, (1, 1, 1, 1), mode="circular")  # noqa: E731
    u = F.conv2d(wrap(f), S0)
    u = u + F.conv2d(wrap(f - F.conv2d(wrap(u), A1)), S1)
    torch.testing.assert_close(mg(f), u)
    torch.testing.assert_close(mg(torch.roll(f, (5, 7), (2, 3))), torch.roll(mg(f), (5, 7), (2, 3)))
    z = MgConv(1, 2, [[2, 0]], dim=2, padding_mode="zeros").double()
    z.load_state_dict(mg.state_dict())
    assert not torch.allclose(z(f), mg(f))


def test_bad_inputs():
    model = MgNO(in_channels=2, channels=4, num_layers=1, iterations=[[1, 0]] * 3)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(levels-1\) = 4, but got \(16, 18\); the nearest "
                                         r"valid sizes to 18 are 16 and 20"):
        model(torch.zeros(1, 2, 16, 18))
    authors = MgNO(channels=2, num_layers=1)
    with pytest.raises(ValueError, match="the nearest valid sizes to 100 are 96 and 128"):
        authors(torch.zeros(1, 1, 100, 100))
    consistent = MgNO(channels=2, num_layers=1, resolution=64)  # 6 levels: coarsest 2, sizes 2, 4, ..., 64, 128, ...
    with pytest.raises(ValueError, match="size 100 is not its learned finest grid 64 times a power of two; the "
                                         "nearest valid sizes are 64 and 128"):
        consistent(torch.zeros(1, 1, 100, 100))
    with pytest.raises(ValueError, match=r"size 1 is coarser than its coarsest level \(2\); the nearest valid sizes "
                                         r"are 2 \(grid \(1, 1\)\)"):
        consistent(torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="refined by the same factor"):
        consistent(torch.zeros(1, 1, 64, 128))
    for n in (2, 32, 64, 256):
        assert consistent(torch.zeros(1, 1, n, n)).shape == (1, 1, n, n)
    with pytest.raises(ValueError, match=r"multiple of 2\*\*\(levels-1\) = 32"):
        MgNO(resolution=48)
    with pytest.raises(ValueError, match="takes 2 input channels, but got 3"):
        model(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="this MgNO is 2D"):
        model(torch.zeros(1, 2, 16))
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        MgNO(padding_mode="mirror")
    with pytest.raises(ValueError, match="activation must be one of"):
        MgNO(activation="swish")
    with pytest.raises(ValueError, match="finest level needs at least one pre-smoothing step"):
        MgNO(iterations=[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="list of \\[pre, post\\]"):
        MgNO(iterations=[3, 1])
    with pytest.raises(ValueError, match="transfer_init must be one of"):
        MgNO(transfer_init="xavier")


def test_uncentered_normalisation_keeps_zero():
    # MgNO's normalisation (the CLI's): zero means and root-mean-square scales, so a zero input maps to the model's
    # zero-input output and a zero output to a zero field (the Dirichlet boundary value of Darcy)
    from deepkrylov.operators.normalization import Normalized

    g = torch.Generator().manual_seed(6)
    x, y = 3 + torch.rand(4, 1, 16, 16, generator=g, dtype=torch.float64), torch.rand(4, 1, 16, 16, generator=g)
    stats = Normalized.uncentered(*Normalized.statistics(x, y))
    assert stats[0] == stats[2] == 0.0
    assert abs(stats[1] / float(x.pow(2).mean().sqrt()) - 1) < 1e-3
    assert abs(stats[3] / float(y.double().pow(2).mean().sqrt()) - 1) < 1e-3
    model = Normalized(MgNO(channels=2, num_layers=1, resolution=16, iterations=[[1, 0]] * 3), *stats).double()
    inner = model.model
    torch.testing.assert_close(model(x), inner(x / stats[1]) * stats[3])
