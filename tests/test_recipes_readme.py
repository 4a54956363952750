"""checkpoints/README.md regeneration keeps the hand-written sections."""

from __future__ import annotations

import torch

from gffmerge.checkpoint import save_checkpoint
from gffmerge.models import build_model
from gffmerge.recipes import write_readme

TINY = {"latent_dim": 8, "hidden_dim": 8, "n_layers": 1, "n_rbf": 4, "cutoff": 4.0}


def test_regenerated_readme_keeps_hand_written_sections(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "toy").mkdir()
    save_checkpoint(tmp_path / "toy" / "gns_foundation.pt", build_model("gns", **TINY),
                    {"role": "foundation", "train_frames": 12, "command": "made by a test"})
    readme = tmp_path / "README.md"
    readme.write_text("# Shipped checkpoints\n\n| stale table |\n\n## By hand\n\nKeep me.\n\n"
                      "## Another\n\nAnd me.\n")
    write_readme(tmp_path)
    text = readme.read_text()
    assert "`toy/gns_foundation.pt` | foundation |" in text and "made by a test" in text
    assert "stale table" not in text
    assert text.index("Seeds:") < text.index("## By hand\n\nKeep me.") < text.index(
        "## Another\n\nAnd me.")
    write_readme(tmp_path)  # idempotent: the sections are not doubled
    assert readme.read_text() == text


def test_an_annealed_checkpoint_says_what_stopped_its_plateau_phases(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "toy").mkdir()
    phases = [{"stopped_by": "wall budget", "epochs_run": 30},
              {"stopped_by": "wall budget", "epochs_run": 12, "config": {"schedule": "plateau"}},
              {"stopped_by": "epochs", "epochs_run": 20, "config": {"schedule": "cosine"}}]
    meta = {"role": "finetune", "train_frames": 12, "command": "c", "phases": phases,
            "metrics": {"epochs_run": 62, "best_epoch": 61, "stopped_by": "epochs"}}
    save_checkpoint(tmp_path / "toy" / "gns_a.pt", build_model("gns", **TINY), meta)
    save_checkpoint(tmp_path / "toy" / "gns_b.pt", build_model("gns", **TINY),
                    {**meta, "phases": phases[:2]})
    text = write_readme(tmp_path).read_text()
    a, b = (next(line for line in text.splitlines() if f"gns_{x}.pt" in line) for x in "ab")
    assert "| 62 (61) | wall budget, then a 20-epoch anneal |" in a
    assert "| 62 (61) | epochs |" in b and "anneal" not in b


def test_every_shipped_fine_tune_finds_the_foundation_it_records():
    """The shipped checkpoints name their start in ``init``; it must resolve in the
    repository (not a scratch folder they were trained in), so that ``gffmerge merge`` can
    use it as the base and the task-vector methods can check it."""
    from pathlib import Path

    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.lineage import recorded_base
    from gffmerge.recipes import checkpoints_dir

    shipped = sorted(Path(checkpoints_dir()).glob("*/*.pt"))
    assert shipped, "no shipped checkpoints"
    for path in shipped:
        meta = load_checkpoint(path)[1]
        if meta.get("role") == "foundation" or not meta.get("init"):
            continue
        found = recorded_base([(path, meta)])
        assert found is not None, f"{path}: init {meta['init']} not found"
        assert found.samefile(path.parent / Path(meta["init"]).name), (path, found)
