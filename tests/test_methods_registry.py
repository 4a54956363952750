"""A method is one file: found from a module or an entry point; needs are declared."""

import json
import sys
from dataclasses import dataclass

import pytest
import torch

import gffmerge
from gffmerge import methods
from gffmerge.cli import main
from gffmerge.methods import Needs, registry
from gffmerge.testing import TinyMLP, fine_tunes, random_batches

PLUGIN = '''
"""A third-party merge method: the mean, scaled by a typed option."""
from dataclasses import dataclass

from gffmerge.methods import Needs, register
from gffmerge.report import MergeReport
from gffmerge.solver import build_model, mean_state_dict


@dataclass(frozen=True)
class ScaledMeanOptions:
    scale: float = 1.0

    __option_help__ = {{"scale": "factor on every floating tensor"}}


@register("{name}", description="{name}: scaled element-wise mean",
          reference="https://example.org/{name}", options=ScaledMeanOptions,
          needs=Needs(stats=False, {extra}))
def scaled_mean(models, stats, options):
    state = {{k: v * options.scale if v.is_floating_point() else v
             for k, v in mean_state_dict(models).items()}}
    from gffmerge.report import MergeResult
    return MergeResult(build_model(models[0], state),
                       MergeReport("{name}", {{"scale": options.scale}}, len(models)))
'''


@pytest.fixture
def isolated_registry(monkeypatch, tmp_path):
    """A copy of the registry for one test, and a sys.path entry for its plugin files."""
    methods.available()  # the built-ins and installed plugins first, then the copies
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PLUGINS", set(registry._PLUGINS))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("gfm_test_"):
            del sys.modules[name]


def _plugin(root, module, name, extra=""):
    (root / f"{module}.py").write_text(PLUGIN.format(name=name, extra=extra))


def _dist_info(root, dist, entry_points):
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[gffmerge.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def test_methods_from_a_module_and_an_entry_point(isolated_registry, capsys):
    root = isolated_registry
    _plugin(root, "gfm_test_module_method", "from_module")
    __import__("gfm_test_module_method")  # registering is importing the one file
    _plugin(root, "gfm_test_ep_method", "from_entry_point")
    _dist_info(root, "gfm_test_plugin", {"scaled": "gfm_test_ep_method"})
    assert "gfm_test_ep_method" not in sys.modules  # nothing loaded it yet

    assert {"from_module", "from_entry_point", "gffmerge"} <= set(methods.available())
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "from_module: from_module: scaled element-wise mean" in text
    assert "from_entry_point: from_entry_point: scaled element-wise mean" in text
    assert "scale (float, default 1.0)  factor on every floating tensor" in text
    assert "needs: base if given (--base), data" in text  # the default
    assert "needs: base (--base)" in text  # ties, task arithmetic, emr
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["methods"]}
    assert rows["from_entry_point"]["needs_stats"] is False

    # the plugin works end to end: merge() asks it what it needs (no data)
    models = fine_tunes(TinyMLP(), 2, seed=1)
    merged = gffmerge.merge(models, method="from_entry_point", scale=2.0).model
    mean = (models[0].inp.weight + models[1].inp.weight) / 2
    assert torch.allclose(merged.inp.weight, 2 * mean, atol=1e-6)


def test_entry_point_found_on_first_lookup(isolated_registry):
    root = isolated_registry
    _plugin(root, "gfm_test_lookup", "late_plugin")
    _dist_info(root, "gfm_test_late", {"late": "gfm_test_lookup"})
    assert methods.get("late_plugin").reference == "https://example.org/late_plugin"


def test_broken_plugin_warns_and_is_skipped(isolated_registry):
    root = isolated_registry
    (root / "gfm_test_broken.py").write_text("raise ImportError('missing dependency xyz')\n")
    _dist_info(root, "gfm_test_bad", {"broken": "gfm_test_broken"})
    with pytest.warns(UserWarning, match=r"plugin 'broken' \(gfm_test_broken\) failed to load"
                                         r".*missing dependency xyz"):
        names = methods.available()
    assert "gffmerge" in names
    methods.available()  # tried once: no second warning, no error


def test_needs_are_declared_and_resolved_from_options():
    gff = methods.get("gffmerge")
    assert gff.needs_for() == Needs(stats=True)
    assert gff.needs_for(gff.options(target="cross")) == Needs(stats=True, cross=True)
    assert gff.needs_stats and not methods.get("average").needs_stats
    assert methods.get("average").needs_for() == Needs(stats=False)
    assert Needs(stats=True, cross=True, base_model=True).beyond("stats", "cross") == [
        "base_model"]
    with pytest.raises(ValueError, match="implies statistics"):
        Needs(stats=False, cross=True)


def test_register_keeps_the_needs_stats_spelling(isolated_registry):
    @methods.register("legacy_flag", description="d", reference="r",
                      options=type(methods.get("average").options()), needs_stats=False)
    def legacy(models, stats, options):
        return methods.get("average").fn(models, stats, options)

    assert methods.get("legacy_flag").needs_for() == Needs(stats=False)
    with pytest.raises(TypeError, match="not both"):
        methods.register("x", description="d", reference="r", options=Needs,
                         needs=Needs(), needs_stats=True)


def test_merge_asks_for_the_base_and_passes_it(isolated_registry):
    seen = []

    def record(models, stats, options, *, base):
        seen.append(base)
        return methods.get("average").fn(models, None, methods.get("average").options())

    methods.register("needs_base", description="d", reference="r", options=CrossSwitch,
                     needs=Needs(stats=False, base_model=True))(record)
    base = TinyMLP()
    models = fine_tunes(base, 2, seed=0)
    with pytest.raises(ValueError, match="needs the pre-trained model .* pass base="):
        gffmerge.merge(models, method="needs_base")
    gffmerge.merge(models, method="needs_base", base=base)
    methods.get("needs_base")(models, base=base)
    assert seen == [base, base]


@dataclass(frozen=True)
class CrossSwitch:
    use_cross: bool = False


def test_merge_provides_what_the_options_need(isolated_registry):
    seen = []

    def record(models, stats, options):
        seen.append(stats.has_cross)
        return methods.get("average").fn(models, None, methods.get("average").options())

    methods.register("cross_switch", description="d", reference="r", options=CrossSwitch,
                     needs=lambda o: Needs(stats=True, cross=o.use_cross))(record)
    models = fine_tunes(TinyMLP(), 2, seed=2)
    datas = [random_batches(2, 8, (6,), seed=i) for i in range(2)]
    gffmerge.merge(models, datas, method="cross_switch", progress=False)
    gffmerge.merge(models, datas, method="cross_switch", use_cross=True, progress=False)
    assert seen == [False, True]


def test_option_types_read_as_written():
    """`gffmerge methods` shows an option's type as its annotation reads, unions too (not
    ``Union``), so a user knows ``ridge`` takes a number or ``auto``."""
    infos = {o.name: o for o in methods.get("progressive").option_infos()}
    assert infos["ridge"].type == "float | 'auto'"
    assert infos["frames"].type == "int | None"
    assert infos["ridge_grid"].type == "list of float"
    assert infos["mode"].type == "str" and infos["mode"].choices
    assert {o.name: o.type for o in methods.get("gffmerge").option_infos()}["ridge"] == "float"
