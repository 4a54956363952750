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
