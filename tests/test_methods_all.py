"""Every registered merge method, on tiny models: shapes kept, finite, identity on clones."""

import copy

import pytest
import torch

import gffmerge
from gffmerge import methods
from gffmerge.architecture import architecture_signature
from gffmerge.collect.fisher import diagonal_fisher
from gffmerge.testing import TinyMLP, fine_tunes, max_abs_diff, random_batches

# what this test can hand a method; a method needing more must extend it
PROVIDED = ("stats", "cross", "base_model", "base_optional", "gradients", "labelled_data",
            "data")


def _loss(model, batch):
    """A per-sample loss for the Fisher on unlabelled random inputs (target 0)."""
    return model(batch).square().flatten(1).sum(1)


def _datas(k):
    # 96 rows per model: every Gram (at most 17 × 17) is well conditioned
    return [random_batches(3, 8, (4, 6), shift=0.3 * i, seed=40 + i) for i in range(k)]


def _run(spec, models, datas, base):
    needs = spec.needs_for()
    unmet = needs.beyond(*PROVIDED)
    assert not unmet, f"method '{spec.name}' needs {unmet}: teach this test to provide them"
    stats = None
    if needs.stats:
        stats = gffmerge.Stats.concat(gffmerge.measure(m, d, progress=False, cross=needs.cross)
                                      for m, d in zip(models, datas))
    gradients = [diagonal_fisher(m, d, loss=_loss) for m, d in zip(models, datas)]
    # methods that run the models get the data itself (and hold out frames to validate on)
    data = [list(d) for d in datas] if needs.data else None
    return spec(models, stats, base=base, gradients=gradients, data=data)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", methods.available())
def test_every_method_merges_tiny_models(name, k):
    spec = methods.get(name)
    torch.manual_seed(k)
    base = TinyMLP()
    models = fine_tunes(base, k, seed=k)
    before = [copy.deepcopy(m.state_dict()) for m in models]
    result = _run(spec, models, _datas(k), base)
    merged = result.model
    assert type(merged) is TinyMLP
    assert architecture_signature(merged) == architecture_signature(models[0])
    for key, value in merged.state_dict().items():
        assert torch.isfinite(value).all(), f"{name}: {key} is not finite"
    # the sources are left as they were, and the merge is a new module
    for m, sd in zip(models, before):
        assert all(torch.equal(m.state_dict()[key], v) for key, v in sd.items())
    assert all(merged is not m for m in models)
    assert result.report.method == name and result.report.num_models == k


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", methods.available())
def test_every_method_gives_back_identical_sources(name, k):
    torch.manual_seed(100 + k)
    base = TinyMLP()
    with torch.no_grad():
        for p in base.parameters():  # away from the default init, so the test could fail
            p.add_(0.2 * torch.randn_like(p))
    clones = [copy.deepcopy(base) for _ in range(k)]
    merged = _run(methods.get(name), clones, _datas(k), base).model
    diff = max_abs_diff(merged, base)
    assert max(diff.values()) <= 1e-5, {key: v for key, v in diff.items() if v > 1e-5}
