"""Every user-facing failure says what was wrong and how to fix it."""

import copy

import pytest
import torch
from torch import nn

import gffmerge
from gffmerge.testing import TinyMLP, fine_tunes, random_batches


def test_mismatched_architectures_list_differences():
    a, b = TinyMLP(hidden=16), TinyMLP(hidden=8)
    with pytest.raises(gffmerge.ArchitectureMismatchError,
                       match=r"'inp.weight' has shape \[16, 6\].*but \[8, 6\]"):
        gffmerge.merge([a, b], [[torch.randn(2, 6)]] * 2, method="gffmerge", progress=False)
    c = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(gffmerge.ArchitectureMismatchError,
                       match="is in model 0 but not in model 1"):
        gffmerge.merge([a, c], None, method="average")


def test_architecture_checked_before_any_measuring():
    calls = []

    class Spy(TinyMLP):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)
    with pytest.raises(gffmerge.ArchitectureMismatchError):
        gffmerge.merge([Spy(), Spy(hidden=4)], [[torch.randn(2, 6)]] * 2, method="gffmerge",
                       progress=False)
    assert not calls


def test_nan_activations_name_model_and_layer():
    model = TinyMLP()
    data = [torch.randn(4, 6), torch.full((4, 6), float("nan"))]
    with pytest.raises(gffmerge.NonFiniteActivationError,
                       match=r"model 'ft-2' produced NaN/Inf inputs to layer 'inp' in batch 1"):
        gffmerge.measure(model, data, label="ft-2", progress=False)
    model.mid.weight.data[0, 0] = float("inf")
    with pytest.raises(gffmerge.NonFiniteActivationError, match="layer 'out'"):
        gffmerge.measure(model, [torch.randn(4, 6)], progress=False)


def test_empty_data():
    with pytest.raises(gffmerge.EmptyDataError, match="measured on no data"):
        gffmerge.measure(TinyMLP(), [], label="beta", progress=False)


def test_singular_gram_with_zero_ridge():
    models = [nn.Linear(4, 2).double() for _ in range(2)]
    x = torch.randn(50, 4, dtype=torch.float64)
    x[:, 3] = x[:, 2]  # a duplicated feature: rank 3 of 4 (+ intercept)
    with pytest.raises(gffmerge.SingularGramError, match=r"layer\(s\) .*singular.*ridge > 0"):
        gffmerge.merge(models, [[x], [x]], method="gffmerge", ridge=0.0, progress=False)
    # with the official tiny ridge it solves (and the report shows the conditioning)
    result = gffmerge.merge(models, [[x], [x]], method="gffmerge", progress=False)
    assert result.report.layers[0].cond > 1e6


def test_unknown_method_name():
    with pytest.raises(gffmerge.UnknownMethodError,
                       match=r"unknown merge method 'regmaen' \(did you mean 'regmean'\?\)"):
        gffmerge.merge([TinyMLP()], None, method="regmaen")
    with pytest.raises(TypeError, match="method 'gffmerge' has no option.*ridge_scale"):
        gffmerge.merge([TinyMLP()], None, method="gffmerge", ridge_scale=2)
    with pytest.raises(ValueError, match="weighting='pool' is not valid"):
        gffmerge.merge([TinyMLP()], None, method="gffmerge", weighting="pool")


def test_stats_from_another_model(tmp_path):
    models = fine_tunes(TinyMLP(), 2, seed=0)
    datas = [random_batches(2, 4, (6,), seed=i) for i in range(2)]
    stats = [gffmerge.measure(m, d, progress=False) for m, d in zip(models, datas)]
    with pytest.raises(gffmerge.StatsMismatchError,
                       match=r"stats entry 0 .* different model than models\[0\].*same order"):
        gffmerge.solve(models, [stats[1], stats[0]])
    other = TinyMLP(hidden=8)
    path = stats[0].save(tmp_path / "a.safetensors")
    with pytest.raises(gffmerge.StatsMismatchError, match="different architecture"):
        gffmerge.Stats.load(path, model=other)
    tuned = copy.deepcopy(models[1])
    tuned.out.bias.data += 1
    with pytest.raises(gffmerge.StatsMismatchError, match=r"re-measure this model"):
        gffmerge.solve([models[0], tuned], stats)
    with pytest.raises(gffmerge.StatsMismatchError, match="got 3 models but stats for 2"):
        gffmerge.solve([*models, models[0]], stats)


def test_bad_stats_files(tmp_path):
    with pytest.raises(gffmerge.StatsFormatError, match="does not exist"):
        gffmerge.Stats.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(gffmerge.StatsFormatError, match="not a readable safetensors"):
        gffmerge.Stats.load(bad)


def test_cross_target_needs_cross_sums():
    models = fine_tunes(TinyMLP(), 2, seed=0)
    stats = [gffmerge.measure(m, [torch.randn(3, 6)], progress=False) for m in models]
    with pytest.raises(gffmerge.StatsMismatchError, match="measure.*cross=True"):
        gffmerge.solve(models, stats, target="cross")


def test_integer_buffers_must_agree():
    class WithCounter(TinyMLP):
        def __init__(self):
            super().__init__()
            self.register_buffer("steps", torch.tensor(3))
    a, b = WithCounter(), WithCounter()
    b.steps += 1
    with pytest.raises(gffmerge.ArchitectureMismatchError, match="non-float buffer 'steps'"):
        gffmerge.merge([a, b], None, method="average")


def test_wrong_number_of_data_sources():
    with pytest.raises(ValueError, match="one data iterable per model"):
        gffmerge.merge(fine_tunes(TinyMLP(), 2), [[torch.randn(2, 6)]], method="gffmerge",
                       progress=False)
