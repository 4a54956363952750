"""Stats are additive sums that survive a round trip through a file."""

import pytest
import torch

import gffmerge
from gffmerge.testing import TinyMLP, fine_tunes, max_abs_diff, random_batches


@pytest.fixture
def two_models():
    torch.manual_seed(1)
    models = fine_tunes(TinyMLP(), 2, seed=4)
    datas = [random_batches(4, 6, (3, 6), seed=1), random_batches(3, 5, (3, 6), shift=1, seed=2)]
    return models, datas


def test_save_load_solve_gives_same_model(tmp_path, two_models):
    models, datas = two_models
    stats = gffmerge.Stats.concat(gffmerge.measure(m, d, progress=False, cross=True)
                                  for m, d in zip(models, datas))
    path = stats.save(tmp_path / "s.safetensors")
    loaded = gffmerge.Stats.load(path, model=models[0])
    assert loaded.layers == stats.layers and loaded.architecture == stats.architecture
    for a, b in zip(stats.models, loaded.models):
        assert a.fingerprint == b.fingerprint and a.graphs == b.graphs and a.data == b.data
        for name in a.layers:
            assert torch.equal(a.layers[name].gram, b.layers[name].gram)
            assert torch.equal(a.layers[name].cross, b.layers[name].cross)
            assert a.layers[name].rows == b.layers[name].rows
    m1 = gffmerge.solve(models, stats).model
    m2 = gffmerge.solve(models, loaded).model
    assert max(max_abs_diff(m1, m2).values()) == 0.0


def test_two_halves_add_up_to_whole(two_models):
    models, datas = two_models
    whole = gffmerge.measure(models[0], datas[0], progress=False, cross=True)
    halves = (gffmerge.measure(models[0], datas[0][:2], progress=False, cross=True)
              + gffmerge.measure(models[0], datas[0][2:], progress=False, cross=True))
    assert halves.num_models == 1
    for name, ls in whole.models[0].layers.items():
        other = halves.models[0].layers[name]
        assert other.rows == ls.rows
        assert torch.allclose(other.gram, ls.gram, rtol=1e-13, atol=1e-12)
        assert torch.allclose(other.cross, ls.cross, rtol=1e-13, atol=1e-12)
    assert halves.models[0].graphs == whole.models[0].graphs == 24


def test_adding_different_models_appends(two_models):
    models, datas = two_models
    a = gffmerge.measure(models[0], datas[0], progress=False)
    b = gffmerge.measure(models[1], datas[1], progress=False)
    both = a + b
    assert both.num_models == 2
    assert [m.fingerprint for m in both.models] == [gffmerge.fingerprint(m) for m in models]
    r1 = gffmerge.solve(models, both).model
    r2 = gffmerge.solve(models, [a, b]).model
    assert max(max_abs_diff(r1, r2).values()) == 0.0


def test_limit_is_checked_after_each_batch():
    model = TinyMLP()
    data = [torch.randn(40, 6), torch.randn(30, 6), torch.randn(30, 6)]
    stats = gffmerge.measure(model, data, limit=50, progress=False)
    assert stats.models[0].graphs == 70  # the batch that crosses the limit is used whole
    assert stats.rows("inp") == [70]


def test_stats_on_device_moves_back(two_models):
    models, datas = two_models
    stats = gffmerge.measure(models[0], datas[0], progress=False).to("cpu")
    assert stats.models[0].layers["inp"].gram.dtype == torch.float64
    g = stats.models[0].layers["inp"].gram
    assert torch.equal(g, g.T)  # exactly symmetric
    assert g[-1, -1].item() == stats.rows("inp")[0]
