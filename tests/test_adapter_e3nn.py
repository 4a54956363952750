"""Irreps-aware merging of e3nn ``o3.Linear`` networks (gffmerge.adapters.irreps).

The merge of a network of e3nn linears must be the per-irrep least-squares fit on the
union of the sources' inputs (checked against ``numpy.linalg.lstsq`` in float64), and the
merged network, written back into e3nn's own layers, must stay equivariant.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

o3 = pytest.importorskip("e3nn.o3", reason="e3nn is not installed (pip install "
                                          "'gffmerge[sevenn]' brings it)")

import gffmerge  # noqa: E402
from gffmerge.adapters.irreps import (  # noqa: E402
    IrrepsLinear,
    ScaledDense,
    convert_e3nn,
    write_e3nn,
)

IRREPS = ["3x0e+2x1o+2x0e+1x2e", "4x0e+3x1o+2x2e", "2x0e+2x1o+1x2e"]


def _native(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(o3.Linear(IRREPS[0], IRREPS[1], biases=True),
                        o3.Linear(IRREPS[1], IRREPS[2])).double()
    with torch.no_grad():
        net[0].bias.normal_()
    return net


def _sources(k: int = 2):
    base = _native(0)
    out = []
    for s in range(k):
        m = copy.deepcopy(base)
        torch.manual_seed(100 + s)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * torch.randn_like(p))
        out.append(m)
    return out


def _data(seed: int, n: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shift = torch.zeros(o3.Irreps(IRREPS[0]).dim, dtype=torch.float64)
    shift[:3] = 1.0 + seed  # scalars with a mean, so the bias column matters
    return [torch.randn(n, o3.Irreps(IRREPS[0]).dim, generator=g, dtype=torch.float64) + shift
            for _ in range(3)]


def test_irreps_linear_is_the_e3nn_map():
    lin = o3.Linear("4x0e+3x1o+2x0e+2x2e", "5x0e+2x1o+3x2e+1x1e", biases=True).double()
    with torch.no_grad():
        lin.bias.normal_()
    x = lin.irreps_in.randn(11, -1).double()
    il = IrrepsLinear.from_e3nn(lin)
    assert torch.allclose(il(x), lin(x), atol=1e-12)
    w, b = il.e3nn_weights(lin)
    assert torch.allclose(w, lin.weight) and torch.allclose(b, lin.bias)
    # the 1x1e output block has no input path: no nn.Linear, zeros out
    assert set(il.blocks) == {"0", "1", "2"}
    assert il(x)[:, -3:].abs().max() == 0


def test_scaled_dense_is_the_e3nn_layer():
    from e3nn.nn import FullyConnectedNet

    net = FullyConnectedNet([5, 7, 3], torch.nn.functional.silu).double()
    x = torch.randn(9, 5, dtype=torch.float64)
    want = net(x)
    conv = copy.deepcopy(net)
    done = convert_e3nn(conv)
    assert sorted(done.values()) == ["dense", "dense"]
    assert all(isinstance(m, ScaledDense) for m in conv)
    assert torch.allclose(conv(x), want, atol=1e-12)


def _rows(x: torch.Tensor, irreps: str, block_inputs: list[int]) -> np.ndarray:
    """[N·(2l+1), Σ mul] rows of the input blocks ``block_inputs`` (components as rows)."""
    ir = o3.Irreps(irreps)
    sl = ir.slices()
    parts = [x[:, sl[i]].reshape(len(x), ir[i].mul, ir[i].ir.dim).transpose(1, 2)
             .reshape(-1, ir[i].mul) for i in block_inputs]
    return torch.cat(parts, 1).numpy()


def test_merge_is_least_squares_on_the_union_and_equivariant():
    natives = _sources(2)
    models = []
    for m in natives:
        c = copy.deepcopy(m)
        convert_e3nn(c)
        models.append(c)
    data = [_data(1), _data(2)]
    result = gffmerge.merge(models, data, method="gffmerge", ridge=0.0, progress=False)
    merged = result.model

    # layer 0: per output block, lstsq on the union of both sources' rows, targets the
    # sources' own outputs, with an intercept column for the scalar (biased) block
    for k, blk in merged[0].blocks.items():
        k = int(k)
        src = merged[0].paths[k]
        xs, ys = [], []
        for model, batches in zip(models, data):
            for x in batches:
                rows = _rows(x, IRREPS[0], src)
                layer = model[0].blocks[str(k)]
                with torch.no_grad():
                    y = layer(torch.from_numpy(rows)).numpy()
                if layer.bias is not None:
                    rows = np.hstack([rows, np.ones((len(rows), 1))])
                xs.append(rows)
                ys.append(y)
        theta, *_ = np.linalg.lstsq(np.vstack(xs), np.vstack(ys), rcond=None)
        got = blk.weight.detach().numpy().T
        if blk.bias is not None:
            got = np.vstack([got, blk.bias.detach().numpy()[None]])
        np.testing.assert_allclose(got, theta, atol=1e-8, rtol=0)

    # layer 1: the inputs are each source's own layer-0 outputs
    for k, blk in merged[1].blocks.items():
        k = int(k)
        src = merged[1].paths[k]
        xs, ys = [], []
        for model, batches in zip(models, data):
            for x in batches:
                with torch.no_grad():
                    h = model[0](x)
                rows = _rows(h, IRREPS[1], src)
                with torch.no_grad():
                    ys.append(model[1].blocks[str(k)](torch.from_numpy(rows)).numpy())
                xs.append(rows)
        theta, *_ = np.linalg.lstsq(np.vstack(xs), np.vstack(ys), rcond=None)
        np.testing.assert_allclose(blk.weight.detach().numpy().T, theta, atol=1e-8, rtol=0)

    # back into e3nn's own layers: the same function, and equivariant
    native = copy.deepcopy(natives[0])
    write_e3nn(merged, native)
    x = torch.cat(_data(3))
    with torch.no_grad():
        assert torch.allclose(native(x), merged(x), atol=1e-10)
        for seed in range(3):
            torch.manual_seed(seed)
            R = o3.rand_matrix().double()
            d_in = o3.Irreps(IRREPS[0]).D_from_matrix(R)
            d_out = o3.Irreps(IRREPS[2]).D_from_matrix(R)
            err = (native(x @ d_in.T) - native(x) @ d_out.T).abs().max()
            assert err < 1e-5, err
        # a flattened (irreps-blind) merge of the same data is not equivariant in general;
        # the per-block one is: every block is one matrix for all components
        assert not torch.allclose(native(x), natives[0](x), atol=1e-3)


def test_identical_sources_give_back_the_source():
    native = _native(3)
    conv = copy.deepcopy(native)
    convert_e3nn(conv)
    models = [copy.deepcopy(conv) for _ in range(3)]
    result = gffmerge.merge(models, [_data(1), _data(2), _data(4)], method="gffmerge",
                            ridge=1e-3, ridge_mode="relative", prior="mean", progress=False)
    for (n, a), (_, b) in zip(result.model.state_dict().items(), conv.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n
