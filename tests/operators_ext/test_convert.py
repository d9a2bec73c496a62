"""Converting torch.nn models into resolution-agnostic operators (NNs-to-NOs): exact at the training grid,
converging under refinement, loading the original's weights, refusing what it cannot convert."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.operators.convert import UNet, convert, interpolation_matrix


def _field(n: int, channels: int = 1) -> torch.Tensor:
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # cell centres: nested under refinement
    X, Y = torch.meshgrid(t, t, indexing="ij")
    f = torch.sin(2 * math.pi * X) * torch.cos(2 * math.pi * Y) + 0.5 * torch.cos(2 * math.pi * (X + 2 * Y))
    return f.expand(1, channels, n, n).clone()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.bn(self.c1(x))))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2, padding_mode="circular"), nn.GELU(), _Block(8), _Block(8),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(8, 1, 1),
    )


class _UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.e2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.d = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        return self.d(torch.cat([a, self.up(self.e2(self.pool(a)))], 1))


class _ViT(nn.Module):
    def __init__(self, n: int = 16, p: int = 4, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, d, p, stride=p)
        self.cls_token = nn.Parameter(0.1 * torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, 1 + (n // p) ** 2, d))
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.ConvTranspose2d(d, 1, p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        b, d, h, w = t.shape
        z = torch.cat([self.cls_token.expand(b, -1, -1), t.flatten(2).transpose(1, 2)], 1) + self.pos_embed
        z = self.enc(z)[:, 1:]
        return self.head(z.transpose(1, 2).reshape(b, d, h, w))


def _trained(model: nn.Module) -> nn.Module:
    """Give the model non-default ('trained') weights and batch-norm statistics, in eval mode."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


def test_interpolation_preserves_kernel_sum_and_paper_rule():
    for k in (1, 2, 3, 4, 5):
        for s in (1, 2, 3, 4):
            m = interpolation_matrix(k, s)
            torch.testing.assert_close(m.sum(0), torch.ones(k, dtype=torch.float64))  # constant response kept
    assert interpolation_matrix(3, 2, "linear").shape == (5, 3)  # the paper's s k - s + 1 taps
    assert interpolation_matrix(5, 4, "linear").shape == (17, 5)
    assert interpolation_matrix(3, 2).shape == (7, 3) and interpolation_matrix(3, 3).shape == (9, 3)
    torch.testing.assert_close(interpolation_matrix(3, 2, "point")[::2], torch.eye(3, dtype=torch.float64))  # dilation
    assert not interpolation_matrix(3, 2, "point")[1::2].any()
    with pytest.raises(ValueError, match="kernel must be one of \\('constant', 'linear', 'point'\\), but got 'cubic'"):
        interpolation_matrix(3, 2, "cubic")


@pytest.mark.parametrize("kernel", ["constant", "linear"])
def test_converted_cnn_equals_original_and_converges_under_refinement(kernel):
    torch.manual_seed(0)
    cnn = _trained(_cnn())
    op = convert(cnn, (16, 16), kernel=kernel)
    op.load_state_dict(cnn.state_dict())  # same keys: the original's trained weights load as they are
    with torch.no_grad():
        torch.testing.assert_close(op(_field(16)), cnn(_field(16)), rtol=0, atol=1e-12)
        y = {n: op(_field(n)) for n in (16, 32, 64, 128)}
        assert all(y[n].shape == (1, 1, n, n) for n in y)
        cauchy = [_rel(F.avg_pool2d(y[2 * n], 2), y[n]) for n in (16, 32, 64)]
        naive = _rel(F.avg_pool2d(cnn(_field(32)), 2), y[16])
    # consistent at 2x: close to the training-resolution output, closer than the unconverted CNN run at 2x
    assert cauchy[0] < naive
    # the discretisation error shrinks as the grid is refined
    assert cauchy[2] < 0.7 * cauchy[1] < 0.7 * 0.7 * cauchy[0]


def test_converted_unet_loads_weights_and_converges():
    torch.manual_seed(1)
    unet = _trained(_UNet())
    fresh = convert(_UNet().double().eval(), (16, 16))
    fresh.load_state_dict(unet.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(_field(16)), unet(_field(16)), rtol=0, atol=1e-12)
        y = {n: fresh(_field(n)) for n in (16, 32, 64, 128)}
    assert y[32].shape == (1, 1, 32, 32)
    cauchy = [_rel(F.avg_pool2d(y[2 * n], 2), y[n]) for n in (16, 32, 64)]
    assert cauchy[2] < 0.7 * cauchy[1]


def test_converted_vit_interpolates_positional_embedding():
    torch.manual_seed(2)
    vit = _trained(_ViT())
    op = convert(vit, (16, 16))
    op.load_state_dict(vit.state_dict())
    x = _field(16)
    with torch.no_grad():
        torch.testing.assert_close(op(x), vit(x), rtol=0, atol=1e-12)
        y2 = op(_field(32))
        assert y2.shape == (1, 1, 32, 32) and torch.isfinite(y2).all()
        with pytest.raises(RuntimeError):
            vit(_field(32))  # the original ViT is tied to its token count
    # the embedding is read as a function on the cell-centred token grid: at 2x it is its linear interpolation
    op._operator_state.update((16, 16))
    pe = op.pos_embed
    assert pe.shape == vit.pos_embed.shape
    op._operator_state.update((32, 32))
    pe2 = op.pos_embed
    assert pe2.shape == (1, 1 + 64, 16)
    torch.testing.assert_close(pe2[:, :1], vit.pos_embed[:, :1])
    grid = vit.pos_embed[0, 1:].T.reshape(1, 16, 4, 4)
    ref = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe2[:, 1:], ref)


def test_layernorm_over_space_and_bad_modules():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.LayerNorm([2, 8, 8])).double().eval()
    op = convert(net, (8, 8))
    torch.testing.assert_close(op(_field(8)), net(_field(8)))
    assert op(_field(16)).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match="cannot convert module 1 \\(LSTM\\)"):
        convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.LSTM(2, 2)), (8, 8))
    with pytest.raises(ValueError, match="cannot convert module body.emb \\(Embedding\\)"):
        convert(_Named(), (8, 8))
    with pytest.raises(ValueError, match="dilated convolutions are not supported"):
        convert(nn.Conv2d(1, 1, 3, dilation=2), (8, 8))
    with pytest.raises(ValueError, match="Upsample to a fixed size"):
        convert(nn.Upsample(size=(16, 16)), (8, 8))
    assert op(_field(12)[..., :8]).shape == (1, 2, 12, 8)  # no strided layer: any grid (here 1.5x, 1x) runs


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.body = nn.Module()
        self.body.emb = nn.Embedding(4, 2)


def test_converted_unet_builder_loads_a_plain_unet():
    from deepkrylov.operators.convert import converted_unet

    torch.manual_seed(4)
    unet = _trained(UNet(1, 2, width=4, depth=2))
    op = converted_unet(1, 2, width=4, depth=2, resolution=(16, 16)).double().eval()
    op.load_state_dict(unet.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(op(_field(16)), unet(_field(16)), rtol=0, atol=1e-12)
        assert op(_field(32)).shape == (1, 2, 32, 32)


# ---- resolution consistency against the analytic limit -----------------------------------------------------------
_MODES = ((1, 0, 1.0), (1, 2, 0.5), (3, 1, -0.3))  # (kx, ky, amplitude) of a smooth periodic field


def _periodic(n: int) -> torch.Tensor:
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # cell centres
    X, Y = torch.meshgrid(t, t, indexing="ij")
    return sum(a * torch.cos(2 * math.pi * (kx * X + ky * Y)) for kx, ky, a in _MODES)[None, None]


def _cell_mean(x: torch.Tensor, y: torch.Tensor, h: float) -> torch.Tensor:
    """The field's exact average over the h x h cell centred at (x, y): each mode times sinc(k h / 2) per axis."""
    out = torch.zeros_like(x)
    for kx, ky, a in _MODES:
        damp = math.prod(float(torch.sinc(torch.tensor(k * h, dtype=torch.float64))) for k in (kx, ky))
        out = out + a * damp * torch.cos(2 * math.pi * (kx * x + ky * y))
    return out


def _limit(w: torch.Tensor, b: float, stride: int, pad: int, n0: int, n_out: int, pool: str = "",
           point: bool = False) -> torch.Tensor:
    """The operator every converted grid approximates, on an ``n_out`` output grid: the training kernel placed as
    it sat relative to its output cell (for stride 2: half a cell off), its taps reading the field's exact cell
    averages over training cells of size ``h = 1/n0`` (``point``: the field's values at the tap centres);
    ``pool="max"``: the maximum over the taps."""
    h, k = 1.0 / n0, 2 if w is None else w.shape[-1]
    c = (torch.arange(n_out, dtype=torch.float64) + 0.5) / n_out  # output cell centres
    X, Y = torch.meshgrid(c, c, indexing="ij")
    offs = [(m - pad - stride / 2 + 0.5) * h for m in range(k)]  # training tap centres relative to the output cell
    vals = [[_cell_mean(X + ox, Y + oy, 0.0 if point else h) for oy in offs] for ox in offs]
    if pool == "max":
        return torch.stack([v for row in vals for v in row]).amax(0)[None, None]
    return (sum(w[i, j] * vals[i][j] for i in range(k) for j in range(k)) + b)[None, None]


@pytest.mark.parametrize("layer,kernel", [("conv3", "constant"), ("conv5", "constant"), ("conv3-stride2", "constant"),
                                          ("maxpool2", "point"), ("conv3", "point"), ("conv3-stride2", "point")])
def test_converted_layer_converges_to_one_limit_at_h_h2_h4(layer, kernel):
    """A converted CNN layer trained at h = 1/16, applied to one smooth (periodic) function sampled at h, h/2 and
    h/4, approaches the analytic limit operator at second order -- the training grid included. With point taps a
    stride-1 stencil is that limit exactly on every grid."""
    torch.manual_seed(5)
    n0 = 16
    if layer == "maxpool2":
        net, w, b, stride, pad = nn.MaxPool2d(2), None, 0.0, 2, 0
    else:
        k, stride = (5, 1) if layer == "conv5" else (3, 2 if "stride2" in layer else 1)
        net = nn.Conv2d(1, 1, k, stride=stride, padding=k // 2, padding_mode="circular").double()
        w, b, pad = net.weight.detach()[0, 0], float(net.bias.detach()), k // 2
    op = convert(nn.Sequential(net), (n0, n0), kernel=kernel)
    errors = []
    point = kernel == "point" and w is not None  # pooling always averages over training cells first
    with torch.no_grad():
        for n in (n0, 2 * n0, 4 * n0):
            y = op(_periodic(n))
            ref = _limit(w, b, stride, pad, n0, y.shape[-1], "max" if w is None else "", point)
            if layer == "maxpool2":  # pooling knows no periodicity: leave out the windows within 2h of the edge
                c = n // n0
                y, ref = y[..., c:-c, c:-c], ref[..., c:-c, c:-c]
            errors.append(_rel(y, ref))
    if point:  # the training grid samples the stencil exactly; a stride-1 one stays exact when dilated
        assert errors[0] < 1e-14 and (stride > 1 or max(errors) < 1e-14), errors
        if stride > 1:  # stride-2 taps fall on fine cell vertices: the mean of two cells, O(h^2)
            assert errors[2] < 0.3 * errors[1], errors
        return
    assert errors[0] < 0.05
    # O(h^2) to one limit: 4x per halving once the fine cells split the training cells (the training grid's own
    # error has another constant)
    assert errors[1] < 0.6 * errors[0] and errors[2] < 0.3 * errors[1], errors


def test_naive_maxpool_and_strided_conv_drift_under_refinement():
    """Why the rules above: run as they are on 2x and 4x finer grids, a stride-2 3x3 convolution (half a fine
    cell off centre) and a 2x2 max pooling (max over more samples) move away from the limit the training grid saw."""
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, padding_mode="circular").double()
    w, b = conv.weight.detach()[0, 0], float(conv.bias.detach())
    with torch.no_grad():
        naive = [_rel(conv(_periodic(n)), _limit(w, b, 2, 1, 16, n // 2)) for n in (16, 32, 64)]
        pooled = [_rel(F.max_pool2d(_periodic(n), 2)[..., 1:-1, 1:-1],
                       _limit(None, 0, 2, 0, 16, n // 2, "max")[..., 1:-1, 1:-1]) for n in (16, 32, 64)]
    assert naive[2] > naive[0] and pooled[2] > pooled[0]


def test_bad_resolution_names_the_sizes_that_work():
    torch.manual_seed(6)
    op = convert(UNet(1, 1, width=4, depth=2).double().eval(), (16, 16))
    with torch.no_grad():
        assert op(_field(16)).shape == (1, 1, 16, 16)  # learns its strides at the training grid
        assert op(_field(32)).shape == (1, 1, 32, 32) and op(_field(8)).shape == (1, 1, 8, 8)
        assert op(_field(20)).shape == (1, 1, 20, 20)  # 1.25x: fractional refinement, 20 / 4 pooled cells
        msg = "cannot run on \\(18, 18\\).*axis 0: multiples of 4 \\(4, 8, 12, 16, 32, 64, \\.\\.\\.\\)"
        with pytest.raises(ValueError, match=msg):
            op(_field(18))
        fresh = convert(UNet(1, 1, width=4, depth=2).double().eval(), (16, 16))
        with pytest.raises(ValueError, match="layer pool \\(MaxPool2d\\) \\(stride 2\\) would need 9/2 output points.*"
                                             "multiples of 4"):
            fresh(_field(18))  # first call: the failing layer itself names the constraint
