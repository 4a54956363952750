"""Which foundation a checkpoint descends from, and merges of fine-tunes of different ones."""

from __future__ import annotations

import pytest
import torch

from gffmerge.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from gffmerge.cli import main
from gffmerge.lineage import (
    FoundationMismatchError,
    check_same_foundation,
    foundation_sha256,
)
from gffmerge.models import build_model
from gffmerge.provenance import file_sha256
from gffmerge.train import TrainConfig, train

TINY_PAINN = dict(n_features=8, n_interactions=1, n_rbf=4, cutoff=4.0)


def _foundations(tmp_path):
    torch.manual_seed(3)
    paths = []
    for name in ("found_a", "found_b"):
        paths.append(save_checkpoint(tmp_path / f"{name}.pt", build_model("painn", **TINY_PAINN),
                                     {"role": "foundation"}))
    return paths


def _finetune(path, start, **meta):
    """A checkpoint that records ``start`` as its init (weights: a copy of the start's)."""
    model = load_checkpoint(start)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return save_checkpoint(path, model, {"role": "finetune", "init": str(start), **meta})


def test_training_records_the_init_and_the_foundation_at_the_root_of_its_chain(tmp_path):
    found_a, _ = _foundations(tmp_path)
    cfg = dict(systems=["rmd17/ethanol"], batch_size=8, seed=0, max_frames=40, epochs=1)
    first = tmp_path / "first.pt"
    train(TrainConfig(role="finetune", init=str(found_a), **cfg), output=first,
          progress=False)
    meta = read_metadata(first)
    assert meta["init_sha256"] == meta["foundation_sha256"] == file_sha256(found_a)
    second = tmp_path / "second.pt"  # a fine-tune of the fine-tune: the same foundation
    train(TrainConfig(role="finetune", init=str(first), **cfg), output=second,
          progress=False)
    meta2 = read_metadata(second)
    assert meta2["init_sha256"] == file_sha256(first)
    assert meta2["foundation_sha256"] == file_sha256(found_a)
    # the record holds when the foundation's file is gone
    found_a.unlink()
    assert foundation_sha256(second, meta2) == meta["foundation_sha256"]


def test_foundation_is_followed_through_init_chains_and_unknown_when_nothing_says(tmp_path):
    found_a, found_b = _foundations(tmp_path)
    sha_a, sha_b = file_sha256(found_a), file_sha256(found_b)
    ft_a = _finetune(tmp_path / "ft_a.pt", found_a)
    ft_aa = _finetune(tmp_path / "ft_aa.pt", ft_a)  # older records: no hashes, a chain
    ft_b = _finetune(tmp_path / "ft_b.pt", found_b)
    assert foundation_sha256(ft_a, read_metadata(ft_a)) == sha_a
    assert foundation_sha256(ft_aa, read_metadata(ft_aa)) == sha_a
    assert foundation_sha256(ft_b, read_metadata(ft_b)) == sha_b
    assert foundation_sha256(found_a, read_metadata(found_a)) is None  # from scratch
    assert foundation_sha256(ft_a, {"init": "gone/found_x.pt"}) is None  # not found here
    merged = save_checkpoint(tmp_path / "merged.pt", load_checkpoint(ft_a)[0],
                             {"role": "merged"})
    ft_m = _finetune(tmp_path / "ft_m.pt", merged)  # started from a merge without a record
    assert foundation_sha256(ft_m, read_metadata(ft_m)) is None
    recorded = save_checkpoint(tmp_path / "merged2.pt", load_checkpoint(ft_a)[0],
                               {"role": "merged", "foundation_sha256": sha_a})
    ft_r = _finetune(tmp_path / "ft_r.pt", recorded)
    assert foundation_sha256(ft_r, read_metadata(ft_r)) == sha_a
    cycle = tmp_path / "cycle.pt"  # a chain that loops ends, unknown
    _finetune(cycle, ft_a)
    save_checkpoint(cycle, load_checkpoint(cycle)[0], {"init": str(cycle)})
    assert foundation_sha256(cycle, read_metadata(cycle)) is None

    sources = [(p, read_metadata(p)) for p in (ft_a, ft_aa)]
    assert check_same_foundation(sources) == sha_a
    # unknown: not checked, and no foundation shared by all
    assert check_same_foundation([*sources, (ft_m, read_metadata(ft_m))]) is None
    with pytest.raises(FoundationMismatchError) as err:
        check_same_foundation([*sources, (ft_b, read_metadata(ft_b))])
    text = str(err.value)
    assert "2 different foundations" in text and sha_a[:12] in text and sha_b[:12] in text
    assert "ft_b.pt" in text and "--allow-different-foundations" in text


def test_cli_merge_refuses_fine_tunes_of_different_foundations(tmp_path, capsys):
    found_a, found_b = _foundations(tmp_path)
    ft_a = _finetune(tmp_path / "ft_a.pt", found_a)
    ft_a2 = _finetune(tmp_path / "ft_a2.pt", found_a)
    ft_b = _finetune(tmp_path / "ft_b.pt", found_b)
    out = tmp_path / "merged.pt"
    out.write_bytes(b"kept")
    argv = ["merge", "--method", "average", "-o", str(out), "--model", str(ft_a), str(ft_b)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different foundations" in err
    assert out.read_bytes() == b"kept"
    solve = ["solve", "--method", "average", "-o", str(out), "--model", str(ft_a), str(ft_b)]
    assert main(solve) == 2 and "different foundations" in capsys.readouterr().err
    assert out.read_bytes() == b"kept"
    assert main([*argv, "--allow-different-foundations"]) == 0
    assert "warning: the sources were fine-tuned from 2 different" in capsys.readouterr().err
    meta = read_metadata(out)
    assert meta["foundations_differ"] is True and "foundation_sha256" not in meta
    assert main(["merge", "--method", "average", "-o", str(out), "--quiet", "--model",
                 str(ft_a), str(ft_a2)]) == 0
    assert read_metadata(out)["foundation_sha256"] == file_sha256(found_a)
    # a merge's record reaches what is merged from it next
    again = tmp_path / "again.pt"
    assert main(["merge", "--method", "average", "-o", str(again), "--quiet", "--model",
                 str(out), str(ft_b)]) == 2
    assert "different foundations" in capsys.readouterr().err
    assert main(["merge", "--method", "average", "-o", str(again), "--quiet", "--model",
                 str(out), str(ft_a)]) == 0


def test_info_describes_checkpoints_from_their_record(tmp_path, capsys):
    import json

    from gffmerge.checkpoint_info import describe

    found_a, _ = _foundations(tmp_path)
    cfg = dict(systems=["rmd17/ethanol"], batch_size=8, seed=0, max_frames=40, epochs=2)
    ft = tmp_path / "ft.pt"
    train(TrainConfig(role="finetune", init=str(found_a), **cfg), output=ft, progress=False)
    info = describe(ft)
    model, meta = load_checkpoint(ft)
    assert info["model"] == "painn" and info["role"] == "finetune"
    assert info["state_values"] == sum(v.numel() for v in model.state_dict().values())
    assert info["systems"] == ["rmd17/ethanol"] and info["init"] == str(found_a)
    assert info["foundation_sha256"] == file_sha256(found_a)
    assert info["sha256"] == file_sha256(ft) and info["epochs"] == 2
    assert info["test"]["combined"]["force_mae_mev_per_a"] == pytest.approx(
        meta["metrics"]["test"]["all"]["force_mae_mev_per_a"])
    assert "method" not in info and "interrupted" not in info
    assert describe(found_a)["role"] == "foundation"
    assert "foundation_sha256" not in describe(found_a)

    merged = tmp_path / "merged.pt"
    ft2 = _finetune(tmp_path / "ft2.pt", found_a)
    assert main(["merge", "--method", "average", "-o", str(merged), "--quiet", "--model",
                 str(ft), str(ft2)]) == 0
    assert main(["info", str(merged), str(found_a), str(ft)]) == 0
    text = capsys.readouterr().out
    assert f"merged with average from: {ft}, {ft2}" in text
    assert "foundation: itself (trained from scratch)" in text
    assert f"foundation: {file_sha256(found_a)[:12]}" in text
    assert "training: 2 epochs" in text and "test: force MAE" in text
    assert main(["info", str(merged), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)["checkpoints"][0]
    assert payload["method"] == "average" and payload["sources"] == [str(ft), str(ft2)]
    assert payload["foundation_sha256"] == file_sha256(found_a)
    # a stats file: its models, layers and rows, as Stats.load reads them
    from gffmerge.stats import Stats

    sums = tmp_path / "ft.safetensors"
    assert main(["measure", "--model", str(ft), "--data", "rmd17/ethanol", "--limit", "8",
                 "--max-frames", "40", "-o", str(sums), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(sums), str(ft), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in payload["checkpoints"]] == [str(ft)]
    (summary,) = payload["stats"]
    stats = Stats.load(sums)
    assert summary["layers"] == len(stats.layers) and summary["cross"] is False
    (m,) = summary["models"]
    rows = [ls.rows for ls in stats.models[0].layers.values()]
    assert m["graphs"] == stats.models[0].graphs >= 8
    assert (m["rows_min"], m["rows_max"]) == (min(rows), max(rows))
    assert main(["info", str(sums)]) == 0
    text = capsys.readouterr().out
    assert f"statistics of 1 model(s) over {len(stats.layers)} linear layers" in text
    assert "rmd17/ethanol" in text
    # a missing or broken file: one line, exit 2
    assert main(["info", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["info", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a gffmerge checkpoint" in err
