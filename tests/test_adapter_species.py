"""Species-conditioned linears (NequIP-style self-connection): e3nn's tensor product with a
one-hot species operand as one IrrepsLinear per species, solved per species.

Needs e3nn (installed by the ``sevenn`` extra); skipped with that reason without it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch import nn

o3 = pytest.importorskip("e3nn.o3", reason="e3nn is not installed (pip install "
                                           "'gffmerge[sevenn]')")

import gffmerge  # noqa: E402
from gffmerge.adapters.species import SpeciesLinear, convert_species  # noqa: E402

IN, OUT, SPECIES = "3x0e+2x1o", "2x0e+3x1o", 4


def _tp(seed: int = 0):
    torch.manual_seed(seed)
    tp = o3.FullyConnectedTensorProduct(IN, f"{SPECIES}x0e", OUT).double()
    with torch.no_grad():
        tp.weight.normal_()
    return tp


def _inputs(n: int, species: list[int], seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, o3.Irreps(IN).dim, generator=gen, dtype=torch.float64)
    idx = torch.tensor(species, dtype=torch.int64)[torch.randint(len(species), (n,),
                                                                 generator=gen)]
    return x, torch.nn.functional.one_hot(idx, SPECIES).double()


class Wrap(nn.Module):
    def __init__(self, tp):
        super().__init__()
        self.sc = tp

    def forward(self, x, onehot):
        return self.sc(x, onehot)


def test_species_linear_equals_the_tensor_product_values_and_tangents():
    tp = _tp()
    sl = SpeciesLinear.from_e3nn(tp)
    x, onehot = _inputs(40, [0, 1, 2, 3], seed=1)
    torch.testing.assert_close(sl(x, onehot), tp(x, onehot), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sl(x, 2.5 * onehot), tp(x, 2.5 * onehot), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(sl.e3nn_weight(tp), tp.weight, rtol=1e-12, atol=1e-12)
    u = torch.randn_like(x)
    with fwad.dual_level():
        a = fwad.unpack_dual(sl(fwad.make_dual(x, u), onehot)).tangent
        b = fwad.unpack_dual(tp(fwad.make_dual(x, u), onehot)).tangent
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one-hot"):
        sl(x, torch.ones_like(onehot))
    wrapped = Wrap(copy.deepcopy(tp))
    assert convert_species(wrapped) == {"sc": "species"}
    torch.testing.assert_close(wrapped(x, onehot), tp(x, onehot), rtol=1e-12, atol=1e-12)


def _block_rows(x: torch.Tensor, block: int) -> torch.Tensor:
    """Rows an output block's map sees, written out by hand for IN = 3x0e + 2x1o."""
    if block == 0:  # scalars: 3 channels
        return x[:, 0:3]
    return x[:, 3:9].reshape(-1, 2, 3).transpose(1, 2).reshape(-1, 2)  # [n·3, 2]


def test_merge_solves_one_system_per_species_against_dense_lstsq():
    """Sources see different species (species 3 in neither); the gffmerge closed form on
    the converted layer equals, per species and output irrep, a dense float64 solve of
    (Σ_k X_kᵀX_k + λI) Θ = Σ_k X_kᵀX_k Θ_k on the rows of that species; species 3 keeps
    the mean."""
    tp = _tp()
    sources = []
    for _ in range(2):
        m = Wrap(SpeciesLinear.from_e3nn(tp))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * torch.randn_like(p))
        sources.append(m)
    data = [[_inputs(30, [0, 1], seed=10 + i) for i in range(2)],
            [_inputs(30, [1, 2], seed=20 + i) for i in range(2)]]
    lam = 1e-6
    res = gffmerge.merge(sources, data, method="gffmerge", ridge=lam, ridge_mode="absolute",
                         prior="zero", progress=False)
    merged = res.model.sc
    for v in range(SPECIES):
        for k in (0, 1):
            thetas = [s.sc.species[v].blocks[str(k)].weight.detach().T for s in sources]
            grams = []
            for batches in data:
                rows = [_block_rows(x[oh[:, v] == 1], k) for x, oh in batches]
                X = torch.cat(rows)
                grams.append(X.T @ X)
            got = merged.species[v].blocks[str(k)].weight.detach().T
            if v == 3:  # no rows: the sources' mean
                torch.testing.assert_close(got, sum(thetas) / 2, rtol=0, atol=1e-14)
                continue
            G = sum(grams)
            want = torch.linalg.solve(G + lam * torch.eye(G.shape[0], dtype=torch.float64),
                                      sum(g @ t for g, t in zip(grams, thetas)))
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    solved = {lr.name for lr in res.report.layers if lr.solved}
    assert "sc.species.0.blocks.0" in solved and "sc.species.3.blocks.0" not in solved


def test_a_nequip_style_sevenn_self_connection_is_converted():
    """SevenNet built with ``self_connection_type: nequip`` (its package default for new
    models; the shipped checkpoints use ``linear``): the converter finds the tensor product
    of its self-connection and computes the same map."""
    pytest.importorskip("sevenn", reason="sevenn is not installed (pip install "
                                         "'gffmerge[sevenn]')")
    import warnings

    from sevenn import _keys as KEY
    from sevenn.model_build import build_E3_equivariant_model
    from sevenn.util import load_checkpoint

    from gffmerge.adapters import quiet
    from gffmerge.adapters.species import write_species

    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = dict(load_checkpoint("7net-0").config)
        cfg.update({KEY.SELF_CONNECTION_TYPE: "nequip", KEY.NUM_CONVOLUTION: 1,
                    KEY.NODE_FEATURE_MULTIPLICITY: 8, KEY.IRREPS_MANUAL: False})
        with torch.device("cpu"):
            net = build_E3_equivariant_model(cfg)
    converted = copy.deepcopy(net)
    assert convert_species(converted) == {"0_self_connection_intro.fc_tensor_product":
                                          "species"}
    tp = net.get_submodule("0_self_connection_intro.fc_tensor_product")
    sl = converted.get_submodule("0_self_connection_intro.fc_tensor_product")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, tp.irreps_in1.dim, generator=gen)
    onehot = torch.nn.functional.one_hot(torch.randint(tp.irreps_in2.dim, (12,), generator=gen),
                                         tp.irreps_in2.dim).float()
    torch.testing.assert_close(sl(x, onehot), tp(x, onehot), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in sl.parameters():
            p.mul_(1.5)
    write_species(converted, net)  # the export path: back into e3nn's raw layout
    torch.testing.assert_close(tp(x, onehot), sl(x, onehot), rtol=1e-5, atol=1e-6)
