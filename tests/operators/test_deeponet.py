"""DeepONet shapes and merge rules for every variant, against hand-written einsum merges."""

from __future__ import annotations

import pytest
import torch

from deepkrylov.operators import CNNBranch, DeepONet, periodic_features, pod_basis


def test_unstacked_aligned_merge_and_zero_bias() -> None:
    torch.manual_seed(0)
    m = DeepONet([10, 16, 8], [1, 16, 8])
    u, y = torch.randn(5, 10), torch.rand(7, 1)
    out = m(u, y)
    assert out.shape == (5, 7)
    assert bool(torch.all(m.b.detach() == 0))
    ref = torch.einsum("bi,ni->bn", m.branch(u), m.trunk(y)) + m.b
    torch.testing.assert_close(out, ref)
    # trunk output activated (ReLU >= 0), branch output linear (has negatives)
    assert (m.trunk(y) >= 0).all() and (m.branch(u) < 0).any()


def test_pointwise_stacked_multi_output() -> None:
    torch.manual_seed(0)
    m = DeepONet([10, 16, 8], [1, 16, 8], aligned=False, stacked=True, num_outputs=2)
    u, y = torch.randn(5, 10), torch.rand(5, 1)
    out = m(u, y)
    assert out.shape == (5, 2)
    assert len(m.branch.nets) == 16
    b = m.branch(u).reshape(5, 2, 8)
    t = m.trunk(y).reshape(5, 2, 8)
    torch.testing.assert_close(out, torch.einsum("bki,bki->bk", b, t) + m.b)
    aligned = DeepONet([10, 8], [1, 8], num_outputs=3)
    assert aligned(u, torch.rand(4, 1)).shape == (5, 4, 3)
    with pytest.raises(ValueError, match="one point per function"):
        m(u, torch.rand(4, 1))


def test_pod_deeponet() -> None:
    torch.manual_seed(0)
    ys = torch.randn(30, 3) @ torch.randn(3, 12)  # rank-3 outputs
    mean, modes = pod_basis(ys, 3)
    torch.testing.assert_close(modes.T @ modes, torch.eye(3), atol=1e-5, rtol=0)
    # rank-3 data is reproduced exactly by its 3 modes
    coef = (ys - mean) @ modes
    torch.testing.assert_close(coef @ modes.T + mean, ys, atol=1e-4, rtol=0)
    m = DeepONet([10, 16, 3], None, pod=(mean, modes))
    u = torch.randn(4, 10)
    torch.testing.assert_close(m(u), m.branch(u) @ modes.T + mean)
    with pytest.raises(ValueError, match="p must be in"):
        pod_basis(ys, 40)
    with pytest.raises(ValueError, match="aligned"):
        DeepONet([10, 3], None, pod=(mean, modes), aligned=False)


def test_cnn_branch_feature_and_output_transforms() -> None:
    torch.manual_seed(0)
    m = DeepONet(CNNBranch(1, 8, ndim=2, width=4), [2, 8, 8], feature_transform=periodic_features,
                 output_transform=lambda y, out: out * y[:, 0] * (1 - y[:, 0]))
    u, y = torch.randn(3, 16, 16), torch.tensor([[0.0], [0.25], [1.0]])
    out = m(u, y)
    assert out.shape == (3, 3)
    assert torch.all(out[:, 0] == 0) and torch.all(out[:, 2] == 0)  # the output transform's zero boundary
    # periodic features make y and y + 1 indistinguishable before the output transform
    m2 = DeepONet([5, 8], [2, 8], feature_transform=periodic_features)
    v = torch.randn(2, 5)
    torch.testing.assert_close(m2(v, y), m2(v, y + 1.0), atol=1e-5, rtol=0)
    assert m(torch.randn(2, 32, 32), y).shape == (2, 3)  # any resolution


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="branch output"):
        DeepONet([10, 8], [1, 6])
    with pytest.raises(ValueError, match="activation"):
        DeepONet([10, 8], [1, 8], activation="swish2")
    with pytest.raises(ValueError, match="trunk is required"):
        DeepONet([10, 8], None)


def test_init_trunk_biases_puts_kinks_at_data_points() -> None:
    """Zero biases make a ReLU trunk positively homogeneous (trunk(2y) = 2 trunk(y)); after init_trunk_biases each
    first-layer unit's kink sits at one of the given coordinates, and a short fit of the antiderivative reaches a
    lower error than with zero biases (same weights, same data, deterministic)."""
    from torch.utils.data import TensorDataset

    from deepkrylov.operators import Trainer
    from deepkrylov.operators.data import generate_antiderivative

    torch.manual_seed(0)
    m = DeepONet([20, 40, 40], [1, 40, 40], "relu", aligned=False)
    y = torch.rand(50, 1)
    assert torch.allclose(m.trunk(2 * y), 2 * m.trunk(y))
    zero_bias = {k: v.clone() for k, v in m.state_dict().items()}
    m.init_trunk_biases(y, generator=torch.Generator().manual_seed(1))
    lin = m.trunk.net[0]
    kinks = -lin.bias / lin.weight[:, 0]
    assert torch.cdist(kinks[:, None], y).min(1).values.max() < 1e-6
    assert not torch.allclose(m.trunk(2 * y), 2 * m.trunk(y))

    d = generate_antiderivative(500, m=20, aligned=False, seed=0)
    ds = TensorDataset(*(torch.as_tensor(d[k], dtype=torch.float32) for k in ("u", "y", "s")))
    errors = []
    for state in (zero_bias, {k: v.clone() for k, v in m.state_dict().items()}):
        m.load_state_dict(state)
        t = Trainer(m, dict(epochs=1500, batch_size=500, loss="mse", progress=False),
                    forward=lambda n, i: n(i[0], i[1]))
        t.fit(ds)
        errors.append(t.evaluate(ds)["mse"])
    assert errors[1] < 0.75 * errors[0], errors  # 5.1e-5 vs 8.5e-5

    with pytest.raises(ValueError, match="trunk built from widths"):
        DeepONet([8, 4], None, pod=(torch.zeros(5), torch.zeros(5, 4))).init_trunk_biases(y)
    with pytest.raises(ValueError, match="features"):
        m.init_trunk_biases(torch.rand(10, 3))
