"""MgNO: the authors' parameter count, one set of weights at several resolutions, V-cycle structure, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepkrylov.operators.mgno import DARCY_ROUGH_ITERATIONS, MgConv, MgNO


def test_darcy_rough_parameter_count():
    model = MgNO(in_channels=1, out_channels=1, channels=24, num_layers=4, iterations=[[1, 0]] * 5 + [[2, 0]])
    assert sum(p.numel() for p in model.parameters()) == 572_661
    assert tuple(DARCY_ROUGH_ITERATIONS) == ((1, 0),) * 5 + ((2, 0),)
    assert sum(p.numel() for p in MgNO().parameters()) == 572_661


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
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(levels-1\) = 4, but got \(16, 18\)"):
        model(torch.zeros(1, 2, 16, 18))
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
