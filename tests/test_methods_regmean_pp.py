"""RegMean++: RegMean's solve on inputs from the partly merged model, checked in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gffmerge
from gffmerge import methods
from gffmerge.testing import fine_tunes, random_batches


class Stack(nn.Module):
    """Purely linear, narrowing (every layer's inputs span their space); the middle layer
    has no bias."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.l2 = nn.Linear(5, 4, bias=False)
        self.l3 = nn.Linear(4, 3)

    def forward(self, x):
        return self.l3(self.l2(self.l1(x)))


def _sources(k=3):
    torch.manual_seed(0)
    base = Stack().double()
    sources = fine_tunes(base, k, scale=0.3, seed=1)
    # unequal row counts, so per-model weighting differs from pooling
    batches = [random_batches(2 + k_, 10, (6,), shift=k_, seed=10 + k_, dtype=torch.float64)
               for k_ in range(k)]
    return sources, batches


def _numpy_reference(sources, batches, alpha, *, lstsq):
    """Layer by layer in numpy: merged-model inputs, each source's layer as the target,
    per-model mean Grams (rows scaled by 1/√n_k), no intercept, biases averaged."""
    xs = [np.concatenate([b.numpy() for b in bs]) for bs in batches]
    out = {}
    for name in ("l1", "l2", "l3"):
        ws = [getattr(s, name).weight.detach().numpy().T for s in sources]
        bias = [getattr(s, name).bias for s in sources]
        if lstsq:  # the union of the sources' rows, scaled, solved as least squares
            X = np.concatenate([x / np.sqrt(len(x)) for x in xs])
            Y = np.concatenate([x @ w / np.sqrt(len(x)) for x, w in zip(xs, ws)])
            w = np.linalg.lstsq(X, Y, rcond=None)[0]
        else:  # RegMean's formula with off-diagonal shrinkage
            gs = [x.T @ x / len(x) for x in xs]
            gs = [alpha * g + (1 - alpha) * np.diag(np.diag(g)) for g in gs]
            w = np.linalg.solve(sum(gs), sum(g @ wk for g, wk in zip(gs, ws)))
        b = (np.mean([bk.detach().numpy() for bk in bias], 0) if bias[0] is not None
             else np.zeros(w.shape[1]))
        out[name] = (w, b)
        xs = [x @ w + b for x in xs]
    return out


def test_regmean_pp_equals_least_squares_on_the_union_for_linear_network():
    sources, batches = _sources()
    result = methods.get("regmean_pp")(sources, data=batches, alpha=1.0, frames=None)
    assert result.report.options["stages"] == [["l1"], ["l2"], ["l3"]]
    want = _numpy_reference(sources, batches, 1.0, lstsq=True)
    for name, (w, b) in want.items():
        layer = getattr(result.model, name)
        np.testing.assert_allclose(layer.weight.detach().numpy().T, w, rtol=0, atol=1e-10)
        if layer.bias is not None:
            np.testing.assert_allclose(layer.bias.detach().numpy(), b, rtol=0, atol=1e-12)
    # biases are the sources' mean (not fitted) and are reported as averaged
    assert {"l1.bias", "l3.bias"} <= set(result.report.averaged)
    assert not {"l1.weight", "l2.weight", "l3.weight"} & set(result.report.averaged)


def test_regmean_pp_with_shrinkage_matches_formula_and_differs_from_regmean():
    sources, batches = _sources()
    result = methods.get("regmean_pp")(sources, data=batches, frames=None)  # alpha 0.9
    want = _numpy_reference(sources, batches, 0.9, lstsq=False)
    for name, (w, _) in want.items():
        np.testing.assert_allclose(getattr(result.model, name).weight.detach().numpy().T, w,
                                   rtol=0, atol=1e-10)
    # RegMean (inputs from each source itself) agrees on the first layer only
    stats = gffmerge.Stats.concat(gffmerge.measure(m, b, progress=False)
                                  for m, b in zip(sources, batches))
    plain = methods.get("regmean")(sources, stats, alpha=0.9).model
    torch.testing.assert_close(plain.l1.weight, result.model.l1.weight, rtol=0, atol=1e-10)
    assert (plain.l3.weight - result.model.l3.weight).abs().max() > 1e-3


def test_regmean_pp_frames_budget_uses_first_frames():
    sources, batches = _sources(2)
    result = methods.get("regmean_pp")(sources, data=batches, alpha=1.0, frames=10)
    assert result.report.options["frames_used"] == [10, 10]
    first = [b[:1] for b in batches]
    want = _numpy_reference(sources, first, 1.0, lstsq=True)
    np.testing.assert_allclose(result.model.l3.weight.detach().numpy().T, want["l3"][0],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad", [dict(alpha=1.5), dict(frames=0), dict(ridge=-1.0),
                                 dict(ridge_mode="nope")])
def test_regmean_pp_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        methods.get("regmean_pp").options(**bad)
