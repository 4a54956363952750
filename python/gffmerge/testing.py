"""Helpers for testing merges and statistics providers (also for users' own models)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class TinyMLP(nn.Module):
    """A small MLP with LayerNorm, a bias-free layer and rank-3 inputs ``[B, T, d_in]``."""

    def __init__(self, d_in: int = 6, hidden: int = 16, d_out: int = 3):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mid = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.inp(x)))
        h = F.silu(self.mid(h))
        return self.out(h)


def fine_tunes(base: nn.Module, k: int, *, scale: float = 0.1, seed: int = 0) -> list[nn.Module]:
    """``k`` copies of ``base`` with every floating parameter perturbed (mock fine-tunes)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.add_((scale * noise).to(p.dtype))
        out.append(m)
    return out


def random_batches(n_batches: int, batch: int, shape: Sequence[int], *, shift: float = 0.0,
                   seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    """``n_batches`` random tensors ``[batch, *shape]`` drawn around ``shift``."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=gen, dtype=torch.float64) + shift).to(dtype)
            for _ in range(n_batches)]


def max_abs_diff(a: nn.Module, b: nn.Module) -> dict[str, float]:
    """Largest absolute difference per state-dict entry of two models."""
    sa, sb = a.state_dict(), b.state_dict()
    return {k: (sa[k].double() - sb[k].double()).abs().max().item() if sa[k].numel() else 0.0
            for k in sa}
