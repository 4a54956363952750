"""Measurement settings as one MeasureOptions value, and the declared model contract."""

import dataclasses

import pytest
import torch
from torch import nn

import gffmerge
from gffmerge.collect import (
    DenseInput,
    MeasureForward,
    MeasureOptions,
    StructuredInput,
    attach,
    default_forward,
)
from gffmerge.distributed import measure_distributed
from gffmerge.models import EdgeConcatLinear, build_model
from gffmerge.models.layers import ConcatLinear
from gffmerge.stats import Stats
from gffmerge.testing import TinyMLP, fine_tunes, random_batches


def same_stats(a: Stats, b: Stats) -> bool:
    ma, mb = a.models[0], b.models[0]
    return (a.layers == b.layers and ma.graphs == mb.graphs and ma.label == mb.label
            and ma.data == mb.data
            and all(torch.equal(ls.gram, mb.layers[n].gram) and ls.rows == mb.layers[n].rows
                    and (ls.cross is None) == (mb.layers[n].cross is None)
                    and (ls.cross is None or torch.equal(ls.cross, mb.layers[n].cross))
                    for n, ls in ma.layers.items()))


def test_keywords_and_options_measure_the_same():
    model = TinyMLP()
    data = random_batches(4, 3, (2, 6), seed=1)
    by_keywords = gffmerge.measure(model, data, limit=5, cross=True, label="a",
                                   layers=["inp", "out"], progress=False)
    opts = MeasureOptions(limit=5, cross=True, label="a", layers=["inp", "out"],
                          progress=False)
    by_options = gffmerge.measure(model, data, options=opts)
    assert same_stats(by_keywords, by_options)
    assert by_options.models[0].graphs == 6 and set(by_options.layers) == {"inp", "out"}
    # keywords override fields of options=
    wider = gffmerge.measure(model, data, options=opts, layers=None, limit=None)
    assert set(wider.layers) == {"inp", "mid", "out"} and wider.models[0].graphs == 12
    assert by_options.models[0].layers["inp"].cross is not None


def test_options_are_frozen_and_keep_a_layer_generator():
    opts = MeasureOptions(layers=(n for n in ["inp", "mid"]))
    assert opts.layers == ("inp", "mid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.limit = 3
    assert MeasureOptions(layers="inp").layers == "inp"  # one pattern stays one pattern
    # a generator of layer names reaches every model merged, not only the first
    models = fine_tunes(TinyMLP(), 2, seed=2)
    datas = [random_batches(2, 3, (6,), seed=k) for k in range(2)]
    result = gffmerge.merge(models, datas, method="gffmerge",
                            layers=(n for n in ["inp", "out"]), progress=False)
    assert sorted(r.name for r in result.report.layers) == ["inp", "out"]


@pytest.mark.parametrize(("call", "wrong", "close"), [
    (lambda m, d: gffmerge.measure(m, d, limt=3), "limt", "limit"),
    (lambda m, d: gffmerge.measure(m, d, progres=False), "progres", "progress"),
    (lambda m, d: MeasureOptions.build(None, {"crosss": True}), "crosss", "cross"),
    (lambda m, d: measure_distributed(m, d, batchsize_fn=len), "batchsize_fn", "batch_size_fn"),
])
def test_unknown_names_list_the_valid_ones(call, wrong, close):
    with pytest.raises(TypeError) as err:
        call(TinyMLP(), [torch.randn(2, 6)])
    msg = str(err.value)
    assert f"unknown measure option '{wrong}' (did you mean '{close}'?)" in msg
    assert all(name in msg for name in MeasureOptions.names()) and "\n" not in msg


def test_options_must_be_measure_options():
    with pytest.raises(TypeError, match="options= must be a MeasureOptions, got dict"):
        gffmerge.measure(TinyMLP(), [torch.randn(2, 6)], options={"limit": 2})


def test_merge_takes_measure_options():
    models = fine_tunes(TinyMLP(), 2, seed=4)
    datas = [random_batches(3, 2, (6,), seed=k) for k in range(2)]
    a = gffmerge.merge(models, datas, method="gffmerge", limit=3, progress=False)
    b = gffmerge.merge(models, datas, method="gffmerge",
                       measure_options=MeasureOptions(limit=3, progress=False))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="measure_options and also limit=, dense="):
        gffmerge.merge(models, datas, method="gffmerge",
                       limit=3, dense=True, measure_options=MeasureOptions())


def test_distributed_measuring_needs_a_process_group():
    opts = MeasureOptions(progress=False)
    for call in (lambda: measure_distributed(TinyMLP(), [torch.randn(2, 6)], options=opts),
                 lambda: gffmerge.measure(TinyMLP(), [torch.randn(2, 6)], distributed=True)):
        with pytest.raises(RuntimeError, match="needs an initialised process group"):
            call()


# ---------------------------------------------------------------- the model contract
def test_shipped_layers_and_models_declare_the_contract():
    edge, concat, plain = EdgeConcatLinear(3, 4, 5), ConcatLinear([2, 3], 4), nn.Linear(2, 3)
    assert isinstance(edge, StructuredInput) and isinstance(edge, DenseInput)
    assert isinstance(concat, StructuredInput) and isinstance(concat, DenseInput)
    assert not isinstance(plain, StructuredInput) and not isinstance(plain, DenseInput)
    gns = build_model("gns", latent_dim=8, hidden_dim=8, n_layers=1, n_rbf=4)
    assert isinstance(gns, MeasureForward) and not isinstance(TinyMLP(), MeasureForward)


def test_collector_follows_the_contract_not_attribute_names():
    class Described(nn.Linear):
        """Input rows are the forward's input twice, ``[x, x]``, described as two parts."""

        def forward(self, x):
            return super().forward(torch.cat([x, x], -1))

        def gram_parts(self, x):
            return gffmerge.collect.GramInput((gffmerge.collect.Dense(x),
                                               gffmerge.collect.Dense(x)))

        def dense_input(self, x):
            return torch.cat([x, x], -1)

    class Blocked(nn.Linear):
        gram_parts = None  # a method set to None opts out of the protocol

    model = nn.Sequential(Described(6, 2), Blocked(2, 2))
    sums = Stats.empty(model, gffmerge.linear_layers(model)).models[0].layers
    collector = attach(model, sums)
    kinds = [type(h).__name__ for h in collector.hooks]
    collector.remove()
    assert kinds == ["StructuredHook", "DenseHook"]

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.calls = []

        def forward(self, x):
            raise AssertionError("measuring must call measure_forward")

        def measure_forward(self, batch):
            self.calls.append(batch.shape)
            return self.lin(batch)

    custom = Custom()
    x = torch.randn(5, 2)
    default_forward(custom, x)
    stats = gffmerge.measure(custom, [x], progress=False)
    assert custom.calls == [(5, 2), (5, 2)] and stats.models[0].layers["lin"].rows == 5
