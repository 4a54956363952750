"""``grid="auto"``: the paper's grids through :func:`gffmerge.merge` and ``gffmerge merge``."""

import json

import pytest
import torch

import gffmerge
from gffmerge.checkpoint import load_checkpoint, save_checkpoint
from gffmerge.cli import main
from gffmerge.data import load_dataset
from gffmerge.methods.grid import PAPER_GRIDS, grid_search, validation_score
from gffmerge.models import build_model

SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]
TINY = {"latent_dim": 8, "hidden_dim": 8, "n_layers": 1, "n_rbf": 6, "cutoff": 4.0}


@pytest.fixture(scope="module")
def family():
    """A base and two sources that differ from it by different task vectors."""
    torch.manual_seed(0)
    base = build_model("gns", **TINY)
    sources = []
    for k in range(2):
        m = build_model("gns", **TINY)
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * (k + 1) * torch.randn_like(p) * p.abs().mean())
        sources.append(m)
    data = load_dataset(SYSTEMS, max_frames=40)
    val = [data.split("val").for_system(s) for s in SYSTEMS]
    return base, sources, val


def test_auto_grid_picks_the_lowest_validation_error_of_the_paper_grid(family):
    base, sources, val = family
    result = gffmerge.merge(sources, method="task_arithmetic", base=base, val_data=val,
                            grid="auto", progress=False)
    # the independent search: every λ of the paper's grid scored on the pooled val frames
    found = grid_search("task_arithmetic", sources, validation_score(val), base=base)
    options = result.report.options
    assert options["chosen"] == found.best
    assert [p["lam"] for p in options["grid_scores"]] == list(PAPER_GRIDS["task_arithmetic"]
                                                              ["lam"])
    scores = [p["val_force_mae_mev_per_a"] for p in options["grid_scores"]]
    assert scores == pytest.approx([v for _, v in found.table])
    assert len(set(scores)) > 1  # the grid points really differ
    for key, value in found.result.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[key], value), key
    assert result.report.times["grid"] > 0


def test_pooled_validation_score_weights_each_set_by_its_atoms(family):
    _, sources, val = family
    from gffmerge.evaluate import evaluate

    parts = [evaluate(sources[0], ds, progress=False)["all"] for ds in val]
    expected = (sum(p["force_mae_mev_per_a"] * p["atoms"] for p in parts)
                / sum(p["atoms"] for p in parts))
    assert validation_score(val)(sources[0]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "progressive", "grid": "auto"}, "no default grid for method 'progressive'"),
    ({"method": "ties", "grid": "auto", "val": False}, "pass val_data"),
    ({"method": "ties", "grid": "auto", "lam": 0.5}, "both fixed and searched"),
    ({"method": "ties", "grid": "best"}, "grid must be 'auto'"),
    ({"method": "ties", "grid": {"lamb": (0.5,)}}, "has no option"),
])
def test_bad_grids_fail_before_any_merge(family, kwargs, message):
    base, sources, val = family
    kwargs = dict(kwargs)
    val_data = val if kwargs.pop("val", True) else None
    with pytest.raises((ValueError, TypeError), match=message):
        gffmerge.merge(sources, base=base, val_data=val_data, progress=False, **kwargs)


def test_cli_merge_grid_auto_records_the_choice(family, tmp_path, capsys):
    base, sources, _ = family
    base_path = save_checkpoint(tmp_path / "base.pt", base)
    paths = [save_checkpoint(tmp_path / f"src{k}.pt", m, {"init": str(base_path)})
             for k, m in enumerate(sources)]
    out = tmp_path / "merged.pt"
    argv = ["merge", "-q", "--method", "ties", "--grid", "auto", "--base", str(base_path),
            "--model", *map(str, paths), "--data", *SYSTEMS, "--max-frames", "40",
            "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    _, meta = load_checkpoint(out)
    chosen = meta["options"]["chosen"]
    assert chosen["density"] in PAPER_GRIDS["ties"]["density"]
    assert chosen["lam"] in PAPER_GRIDS["ties"]["lam"]
    assert len(meta["options"]["grid_scores"]) == 25
    capsys.readouterr()
    assert main([*argv[:1], "--json", *argv[2:]]) == 0  # the summary says what was chosen
    picked = json.loads(capsys.readouterr().out)["picked"]
    assert picked == f"density={chosen['density']}, lam={chosen['lam']}"
    # without --data there is nothing to choose on
    bad = ["merge", "-q", "--method", "ties", "--grid", "auto", "--base", str(base_path),
           "--model", *map(str, paths), "-o", str(tmp_path / "bad.pt")]
    assert main(bad) == 2
    assert "give each model its --data" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()


def test_merge_summary_names_the_pick_in_one_line():
    from gffmerge.cli.merging import _picked
    from gffmerge.report import MergeReport

    def rep(**options):
        return MergeReport(method="m", options=options, num_models=2)

    assert _picked(rep()) == ""
    assert _picked(rep(chosen={"density": 0.2, "lam": 1.0, "candidates": [{"x": 1}]})) == \
        "density=0.2, lam=1.0"
    assert _picked(rep(chosen="progressive")) == ""  # nothing scored on validation
    average = [{"kind": "average", "val_force_mae_mev_per_a": 20.0}]
    text = _picked(rep(chosen="progressive", chosen_ridge=1e-3, chosen_beta=None,
                       chosen_start="ties", val_force_mae_mev_per_a=12.34,
                       val_score="per_system", anchors_tried=average))
    assert text == ("progressive, ridge 0.001, β 0, from TIES: validation force MAE 12.3 "
                    "meV/Å (mean over the systems), the average's 20.0")
    assert _picked(rep(chosen="base", val_force_mae_mev_per_a=5.0,
                       anchors_tried=average)).startswith("the foundation: validation")
    sources = [{"kind": "source", "val_force_mae_mev_per_a": v, "params": {"lams": lams}}
               for v, lams in ((9.0, [1.0, 0.0]), (7.0, [0.0, 1.0]))]
    report = rep(chosen="source", val_force_mae_mev_per_a=7.0, anchors_tried=sources)
    assert report.pick(["Li3P", "P2S5"]) == "source 1 (P2S5) by itself"
    assert report.pick() == "source 1 by itself"
    assert "Picked on validation: source 1 by itself" in report.to_markdown()
