"""Helpers for testing merges and statistics providers (also for users' own models)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .models.parts import DenseInput


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
                p.add_((scale * noise).to(p.device, p.dtype))
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


# ---------------------------------------------------------------- structured providers
@dataclass
class StructuredGramCheck:
    """Errors found by :func:`check_structured_gram`, each relative to the largest entry."""

    rows: int
    output_error: float  # described rows @ Wᵀ + b vs the module's output
    dense_input_error: float | None  # described rows vs module.dense_input (if defined)
    gram_error: float  # structured Gram vs the float64 Gram of the described rows
    cross_error: float | None  # structured cross sums vs float64 reference (cross=True)


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float | None = None) -> float:
    if a.numel() == 0:
        return 0.0
    ref = float(b.abs().max()) if scale is None else float(scale)
    return float((a - b).abs().max()) / max(ref, torch.finfo(torch.float64).tiny)


def check_structured_gram(module: nn.Module, *args, rtol: float = 1e-10, cross: bool = True,
                          backend: str = "auto", chunk_rows: int | None = None,
                          **kwargs) -> StructuredGramCheck:
    """Check a layer's ``gram_parts`` (structured statistics provider) on one input.

    ``module`` is an ``nn.Linear`` subclass with ``gram_parts(*args, **kwargs)``; it is
    called with ``args``/``kwargs`` as in its forward. Checks, raising ``AssertionError``
    naming the first that fails:

    1. the parts are consistent and as wide as ``in_features`` (``GramInput.check``);
    2. the rows they describe, times the weight, reproduce the module's output (to the
       precision of its dtype): a wrong part order, index or gate fails here;
    3. with ``dense_input``, the described rows equal the module's explicit input (to
       its dtype's precision: a float32 ``dense_input`` rounds gated products);
    4. the structured Gram, and with ``cross`` the cross sums with the output, equal the
       float64 sums over the explicit float64 rows to ``rtol`` (relative to the largest
       entry). Small chunks (``chunk_rows``) exercise the chunked scatter sums.

    Use it in your own tests: ``check_structured_gram(layer, edge_attr, h, edge_index)``.
    """
    from .collect.providers import cross_of, gram_of
    from .models.parts import GramInput

    with torch.no_grad():
        out = module(*args, **kwargs)
        inp = module.gram_parts(*args, **kwargs)
        if not isinstance(inp, GramInput):
            raise AssertionError(f"gram_parts returned {type(inp).__name__}, not a GramInput")
        inp.check(module.in_features)
        y = out.detach().reshape(-1, module.out_features)
        if y.shape[0] != inp.rows:
            raise AssertionError(f"the output has {y.shape[0]} rows but gram_parts "
                                 f"describes {inp.rows}")
        dtype = module.weight.dtype
        eps = torch.finfo(dtype).eps
        tol = max(64, 4 * module.in_features) * eps
        x64 = inp.materialize(torch.float64)
        w64 = module.weight.detach().double()
        b64 = module.bias.detach().double() if module.bias is not None else None
        pred = torch.nn.functional.linear(x64, w64, b64)
        scale = torch.nn.functional.linear(x64.abs(), w64.abs(),
                                           None if b64 is None else b64.abs()).max()
        out_err = _rel(pred, y.double(), scale)
        if out_err > tol:
            raise AssertionError(f"the rows gram_parts describes do not reproduce the layer's "
                                 f"output: relative error {out_err:.3g} > {tol:.3g} (part "
                                 "order, index or gate differs from the forward)")
        dense_err = None
        if isinstance(module, DenseInput):
            x = module.dense_input(*args, **kwargs).detach().reshape(-1, module.in_features)
            if x.shape != x64.shape:
                raise AssertionError(f"dense_input has shape {tuple(x.shape)} but gram_parts "
                                     f"describes {tuple(x64.shape)}")
            dense_err = _rel(x.double(), x64)
            if dense_err > 16 * torch.finfo(x.dtype).eps:
                raise AssertionError(f"gram_parts rows differ from dense_input by "
                                     f"{dense_err:.3g} (relative)")
        xa = torch.cat([x64, torch.ones(x64.shape[0], 1, dtype=torch.float64,
                                        device=x64.device)], dim=1)
        gram_err = _rel(gram_of(inp, backend=backend, chunk_rows=chunk_rows), xa.T @ xa)
        if gram_err > rtol:
            raise AssertionError(f"structured Gram differs from the dense float64 Gram by "
                                 f"{gram_err:.3g} (relative) > {rtol:g}")
        cross_err = None
        if cross:
            ref = xa.T @ y.double()
            cross_err = _rel(cross_of(inp, y, backend=backend, chunk_rows=chunk_rows), ref)
            if cross_err > rtol:
                raise AssertionError(f"structured cross sums differ from the dense float64 "
                                     f"ones by {cross_err:.3g} (relative) > {rtol:g}")
    return StructuredGramCheck(inp.rows, out_err, dense_err, gram_err, cross_err)
