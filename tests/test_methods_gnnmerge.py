"""GNNMerge (gradient): converges to the closed form on linear layers, starts at the mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gffmerge
from gffmerge import methods
from gffmerge.testing import fine_tunes, random_batches


class Two(nn.Module):
    """Two independent linear layers, one with a bias and one without."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 3)
        self.b = nn.Linear(5, 2, bias=False)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], -1)


def _setup(k=3):
    torch.manual_seed(0)
    sources = fine_tunes(Two(), k, scale=0.3, seed=2)
    # unequal row counts and shifted inputs: per-model weighting and the intercept matter
    batches = [random_batches(2 + i, 16, (5,), shift=0.5 * i, seed=20 + i) for i in range(k)]
    stats = gffmerge.Stats.concat(gffmerge.measure(m, b, progress=False)
                                  for m, b in zip(sources, batches))
    return sources, batches, stats


def _closed_form(sources, batches, name):
    """Least squares on the union of the sources' rows, each source's rows scaled by
    1/√n_k, its own outputs as targets, with an intercept when the layer has a bias."""
    rows, ys = [], []
    for s, bs in zip(sources, batches):
        x = np.concatenate([b.double().numpy() for b in bs])
        layer = getattr(s, name)
        y = x @ layer.weight.detach().double().numpy().T
        if layer.bias is not None:
            y = y + layer.bias.detach().double().numpy()
            x = np.concatenate([x, np.ones((len(x), 1))], 1)
        rows.append(x / np.sqrt(len(x)))
        ys.append(y / np.sqrt(len(x)))
    return np.linalg.lstsq(np.concatenate(rows), np.concatenate(ys), rcond=None)[0]


def _theta(model, name):
    layer = getattr(model, name)
    w = layer.weight.detach().double().numpy().T
    if layer.bias is None:
        return w
    return np.concatenate([w, layer.bias.detach().double().numpy()[None]])


@pytest.mark.parametrize("optimizer,steps,lr", [("lbfgs", 100, 1.0), ("adam", 1000, 5e-2)])
def test_gnnmerge_converges_to_closed_form_on_linear_layers(optimizer, steps, lr):
    sources, batches, stats = _setup()
    result = methods.get("gnnmerge")(sources, stats, optimizer=optimizer, steps=steps, lr=lr)
    for name in ("a", "b"):
        want = _closed_form(sources, batches, name)
        np.testing.assert_allclose(_theta(result.model, name), want, rtol=0, atol=1e-4)
    o = result.report.options
    assert o["loss_final"] < o["loss_at_mean"]


def test_gnnmerge_starts_at_the_mean_and_moves_toward_the_closed_form():
    sources, batches, stats = _setup()
    spec = methods.get("gnnmerge")
    zero = spec(sources, stats, steps=0).model
    mean = np.mean([_theta(s, "a") for s in sources], 0)
    np.testing.assert_allclose(_theta(zero, "a"), mean, rtol=0, atol=1e-7)
    want = _closed_form(sources, batches, "a")
    gaps = [np.abs(_theta(spec(sources, stats, steps=n, lr=1e-2).model, "a") - want).max()
            for n in (0, 20, 200)]
    assert gaps[0] > gaps[1] > gaps[2]
    losses = [spec(sources, stats, steps=n, lr=1e-2).report.options["loss_final"]
              for n in (0, 20, 200)]
    assert losses[0] > losses[1] > losses[2]


def test_gnnmerge_constant_step_size_lowers_the_loss():
    sources, _, stats = _setup()
    spec = methods.get("gnnmerge")
    o = spec(sources, stats, steps=100, lr=1e-2, schedule="constant").report.options
    best = spec(sources, stats, optimizer="lbfgs", steps=100, lr=1.0).report.options
    # most of the way from the mean's loss to the minimum
    assert o["loss_final"] - best["loss_final"] < 1e-3 * (o["loss_at_mean"]
                                                          - best["loss_final"])


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(lr=0.0), dict(optimizer="sgd"),
                                 dict(schedule="linear")])
def test_gnnmerge_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        methods.get("gnnmerge").options(**bad)
