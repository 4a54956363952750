"""Physics and layer tests for gffmerge.models (SchNet, PaiNN, GNS, EdgeConcatLinear)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from gffmerge.data.batch import AtomsBatch
from gffmerge.models import (
    GNS,
    MODELS,
    EdgeConcatLinear,
    ForceField,
    PaiNN,
    SchNet,
    build_model,
)

CUTOFF = 3.0
# Small configs for speed. The tests run over every registered model: one not listed here
# is built from its defaults at the test cutoff.
TINY = {
    "schnet": dict(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6, cutoff=CUTOFF),
    "painn": dict(n_features=8, n_interactions=2, n_rbf=6, cutoff=CUTOFF),
    "gns": dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=CUTOFF),
}


def tiny_config(name: str) -> dict:
    return TINY.get(name, {"cutoff": CUTOFF})


TRICLINIC = torch.tensor([[4.0, 0.0, 0.0], [1.2, 3.8, 0.0], [0.7, 0.9, 4.1]],
                         dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These graphs are tiny: intra-op threads only add overhead, and stall badly on a
    busy machine (29 s instead of 5 s for this file on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- structures and a brute-force neighbour list ---------------------------------------

def neighbours(pos: torch.Tensor, cell: torch.Tensor | None, cutoff: float):
    """O(N^2 * images) neighbour list: (edge_index [2, E] (sender, receiver), shifts [E, 3])."""
    n = pos.shape[0]
    if cell is None:
        shifts = torch.zeros(1, 3, dtype=pos.dtype)
    else:
        # Enough images for the cutoff plus the spread of (possibly unwrapped) positions.
        frac = pos @ torch.linalg.inv(cell)
        spread = (frac.max(0).values - frac.min(0).values).ceil()
        reps = [math.ceil(cutoff * float(b.norm())) + int(w)
                for b, w in zip(torch.linalg.inv(cell).T, spread, strict=True)]
        ranges = [torch.arange(-r, r + 1, dtype=pos.dtype) for r in reps]
        shifts = torch.cartesian_prod(*ranges)
    offsets = shifts @ cell if cell is not None else shifts
    # vec[s, i, j] = pos[j] - pos[i] + offset[s]  (receiver i -> sender j)
    vec = pos[None, None, :, :] - pos[None, :, None, :] + offsets[:, None, None, :]
    dist = vec.norm(dim=-1)
    self_image = (torch.eye(n, dtype=torch.bool)[None]
                  & (shifts.abs().sum(-1) == 0)[:, None, None])
    s, i, j = torch.nonzero((dist < cutoff) & ~self_image, as_tuple=True)
    return torch.stack([j, i]), shifts[s]


def make_batch(structures, cutoff: float = CUTOFF, dtype=torch.float64) -> AtomsBatch:
    """structures: list of (z [n], pos [n, 3], cell [3, 3] or None)."""
    zs, poss, batch, edges, shifts, cells, pbcs, natoms = [], [], [], [], [], [], [], []
    offset = 0
    for g, (z, pos, cell) in enumerate(structures):
        ei, sh = neighbours(pos.to(torch.float64),
                            None if cell is None else cell.to(torch.float64), cutoff)
        zs.append(z)
        poss.append(pos)
        batch.append(torch.full((len(z),), g, dtype=torch.int64))
        edges.append(ei + offset)
        shifts.append(sh)
        cells.append(torch.zeros(3, 3, dtype=torch.float64) if cell is None else cell)
        pbcs.append(torch.full((3,), cell is not None))
        natoms.append(len(z))
        offset += len(z)
    return AtomsBatch(
        z=torch.cat(zs), pos=torch.cat(poss).to(dtype), batch=torch.cat(batch),
        edge_index=torch.cat(edges, 1), cell_shift=torch.cat(shifts).to(dtype),
        cell=torch.stack(cells).to(dtype), pbc=torch.stack(pbcs),
        natoms=torch.tensor(natoms, dtype=torch.int64),
    )


def random_positions(n: int, cell: torch.Tensor | None, seed: int, min_dist: float = 1.1):
    gen = torch.Generator().manual_seed(seed)
    while True:
        if cell is None:
            pos = 3.0 * torch.rand(n, 3, generator=gen, dtype=torch.float64)
        else:
            pos = torch.rand(n, 3, generator=gen, dtype=torch.float64) @ cell
        ei, sh = neighbours(pos, cell, min_dist)
        if ei.shape[1] == 0:
            return pos


def molecule():
    z = torch.tensor([6, 6, 8, 1, 1, 1])
    return z, random_positions(6, None, seed=1), None


def crystal():
    z = torch.tensor([3, 3, 3, 15, 16, 16, 16])
    return z, random_positions(7, TRICLINIC, seed=2), TRICLINIC


def small_cell():
    """A cell shorter than the cutoff: atoms interact with their own periodic images."""
    cell = torch.tensor([[2.6, 0.0, 0.0], [0.5, 2.5, 0.0], [-0.3, 0.4, 2.7]],
                        dtype=torch.float64)
    return torch.tensor([3, 16]), random_positions(2, cell, seed=4), cell


def tiny_model(name: str, seed: int = 0) -> ForceField:
    torch.manual_seed(seed)
    model = build_model(name, **tiny_config(name)).double().eval()
    # Non-trivial normalisation so the energy assembly is exercised too.
    ref = torch.zeros(model.max_z + 1, dtype=torch.float64)
    ref[[1, 3, 6, 8, 15, 16]] = torch.tensor([-13.6, -190.0, -1030.0, -2040.0, -180.0, -280.0],
                                            dtype=torch.float64)
    model.set_energy_normalisation(ref, scale=1.7, shift=-0.3)
    return model


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q = -q
    return q


def predict(model, structures):
    out = model(make_batch(structures))
    return out["energy"].detach(), out["forces"].detach()


# -- symmetry ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_translation(name, reflect):
    model = tiny_model(name)
    structures = [molecule(), crystal(), small_cell()]
    energy, forces = predict(model, structures)
    rot = random_orthogonal(3, reflect)
    shift = torch.tensor([0.3, -1.7, 2.2], dtype=torch.float64)
    moved = [(z, pos @ rot.T + shift, None if cell is None else cell @ rot.T)
             for z, pos, cell in structures]
    energy2, forces2 = predict(model, moved)
    assert energy.dtype == torch.float64
    torch.testing.assert_close(energy2, energy, rtol=0, atol=1e-9)
    torch.testing.assert_close(forces2, forces @ rot.T, rtol=0, atol=1e-10)
    assert forces.abs().max() > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("name", sorted(MODELS))
def test_permutation(name):
    model = tiny_model(name)
    structures = [molecule(), crystal(), small_cell()]
    energy, forces = predict(model, structures)
    perms = [torch.randperm(len(z), generator=torch.Generator().manual_seed(7 + k))
             for k, (z, _, _) in enumerate(structures)]
    permuted = [(z[p], pos[p], cell) for (z, pos, cell), p in zip(structures, perms, strict=True)]
    energy2, forces2 = predict(model, permuted)
    torch.testing.assert_close(energy2, energy, rtol=0, atol=1e-9)
    parts = forces.split([len(z) for z, _, _ in structures])
    expected = torch.cat([f[p] for f, p in zip(parts, perms, strict=True)])
    torch.testing.assert_close(forces2, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lattice_translation_of_one_atom(name):
    model = tiny_model(name)
    (z, pos, cell), (z2, pos2, cell2) = crystal(), small_cell()
    energy, forces = predict(model, [(z, pos, cell), (z2, pos2, cell2)])
    moved, moved2 = pos.clone(), pos2.clone()
    moved[2] += cell[0] - 2 * cell[2]
    moved[5] -= cell[1]
    moved2[1] += cell2[2]
    energy2, forces2 = predict(model, [(z, moved, cell), (z2, moved2, cell2)])
    torch.testing.assert_close(energy2, energy, rtol=0, atol=1e-9)
    torch.testing.assert_close(forces2, forces, rtol=0, atol=1e-10)


# -- forces ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n, cls in MODELS.items() if cls.conservative])
def test_conservative_forces_match_finite_differences(name):
    model = tiny_model(name)
    batch = make_batch([molecule(), crystal(), small_cell()])
    assert (batch.edge_index[0] == batch.edge_index[1]).any()  # self-image edges present
    forces = model(batch)["forces"].detach()
    h = 1e-5
    for atom in (0, 4, 8, 12, 13, 14):
        for k in range(3):
            plus, minus = batch.pos.clone(), batch.pos.clone()
            plus[atom, k] += h
            minus[atom, k] -= h
            with torch.no_grad():
                e_plus = model(replace(batch, pos=plus), compute_forces=False)["energy"].sum()
                e_minus = model(replace(batch, pos=minus), compute_forces=False)["energy"].sum()
            fd = -(e_plus - e_minus) / (2 * h)
            assert abs(float(fd) - float(forces[atom, k])) < 1e-6, (atom, k)


def test_gns_direct_forces_sum_to_zero_per_graph():
    model = tiny_model("gns")
    batch = make_batch([molecule(), crystal(), small_cell()])
    forces = model(batch)["forces"]
    total = torch.zeros(3, 3, dtype=forces.dtype).index_add_(0, batch.batch, forces)
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-12)
    assert forces.abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_step_reaches_every_parameter(name):
    model = build_model(name, **tiny_config(name)).train()
    batch = make_batch([molecule(), crystal()], dtype=torch.float32)
    out = model(batch)
    assert out["energy"].dtype == torch.float64 and out["forces"].dtype == torch.float32
    loss = out["energy"].square().mean() + out["forces"].square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grad_modes(name):
    model = tiny_model(name)
    batch = make_batch([molecule(), crystal()])
    reference = model(batch)
    with torch.no_grad():
        energy_only = model(batch, compute_forces=False)
        with_forces = model(batch)
    assert set(energy_only) == {"energy"}
    torch.testing.assert_close(energy_only["energy"], reference["energy"])
    torch.testing.assert_close(with_forces["forces"], reference["forces"])
    with torch.inference_mode():
        measured = model.measure_forward(batch)
    assert not measured["energy"].requires_grad
    torch.testing.assert_close(measured["energy"], reference["energy"])
    if model.conservative:
        assert set(measured) == {"energy"}
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
            model(batch)
    else:
        torch.testing.assert_close(measured["forces"], reference["forces"])
    assert not batch.pos.requires_grad  # the caller's batch is left alone


# -- energy assembly, dtypes, structure --------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_energy_is_scaled_sum_plus_references(name):
    model = tiny_model(name)
    batch = make_batch([molecule(), crystal()])
    e_atom, _ = model.atomwise(batch, direct_forces=False)
    per_atom = 1.7 * e_atom - 0.3 + model.atomic_energies[batch.z]
    expected = torch.zeros(2, dtype=torch.float64).index_add_(0, batch.batch, per_atom)
    torch.testing.assert_close(model(batch, compute_forces=False)["energy"], expected)


def test_energy_buffers_stay_float64():
    model = tiny_model("schnet")
    model.atomic_energies[3] = -190.123456789012
    model.float()
    assert next(model.parameters()).dtype == torch.float32
    assert model.atomic_energies.dtype == torch.float64
    assert model.atomic_energies[3].item() == -190.123456789012
    assert model.scale.dtype == model.shift.dtype == torch.float64
    model.to(torch.float64)
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_learnable_map_is_visible_to_the_merge(name):
    """Parameters live only in nn.Linear (merged in closed form) or in Embedding /
    LayerNorm (averaged); nothing else hides a learnable linear map."""
    model = build_model(name, **tiny_config(name))
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            assert isinstance(module, nn.Linear | nn.Embedding | nn.LayerNorm), module
    state = model.state_dict()
    assert {"atomic_energies", "scale", "shift"} <= set(state)
    assert all(v.is_floating_point() for v in state.values())  # averageable


def test_rank3_inputs_reach_painn_update_linears():
    model = tiny_model("painn")
    ranks = {}

    def record(name):
        def hook(module, args, out):
            ranks[name] = args[0].dim()
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(record(name))
    with torch.inference_mode():
        model.measure_forward(make_batch([crystal()]))
    assert {n for n, r in ranks.items() if r == 3} == {
        f"updates.{i}.{uv}" for i in range(2) for uv in "UV"}
    assert len(ranks) == sum(isinstance(m, nn.Linear) for m in model.modules())


def test_registry():
    assert {"schnet", "painn", "gns"} <= set(MODELS)
    assert (MODELS["schnet"], MODELS["painn"], MODELS["gns"]) == (SchNet, PaiNN, GNS)
    for name, cls in MODELS.items():
        model = build_model(name)
        assert isinstance(model, cls) and model.cutoff == 5.0
        assert json.loads(json.dumps(model.config)) == model.config
        assert build_model(name, **model.config).config == model.config
    with pytest.raises(KeyError, match="known models"):
        build_model("mace")


# -- EdgeConcatLinear ---------------------------------------------------------------

def _edge_inputs(seed: int, n: int = 7, e: int = 19, d_e: int = 5, d_n: int = 4):
    gen = torch.Generator().manual_seed(seed)
    edge_attr = torch.randn(e, d_e, generator=gen, dtype=torch.float64)
    node = torch.randn(n, d_n, generator=gen, dtype=torch.float64)
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    g_s = torch.rand(e, generator=gen, dtype=torch.float64)
    g_r = torch.rand(e, 1, generator=gen, dtype=torch.float64)
    return edge_attr, node, edge_index, g_s, g_r


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gated", [False, True])
def test_edge_concat_linear_equals_linear_on_concatenation(bias, gated):
    edge_attr, node, edge_index, g_s, g_r = _edge_inputs(11)
    layer = EdgeConcatLinear(5, 4, 6, bias=bias, dtype=torch.float64)
    assert isinstance(layer, nn.Linear) and layer.in_features == 5 + 2 * 4
    gates = dict(sender_gate=g_s, receiver_gate=g_r) if gated else {}
    sender, receiver = edge_index
    h_s, h_r = node[sender], node[receiver]
    if gated:
        h_s, h_r = g_s[:, None] * h_s, g_r * h_r
    dense = torch.cat([edge_attr, h_s, h_r], dim=-1)
    plain = nn.Linear(13, 6, bias=bias, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(edge_attr, node, edge_index, **gates), plain(dense),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.dense_input(edge_attr, node, edge_index, **gates), dense,
                               rtol=0, atol=0)
    parts = layer.input_parts(edge_attr, node, edge_index, **gates)
    assert torch.equal(parts.sender, sender) and torch.equal(parts.receiver, receiver)
    assert (parts.sender_gate is None) == (not gated)
    if gated:
        assert parts.sender_gate.shape == parts.receiver_gate.shape == (19, 1)


def test_edge_concat_linear_gradients_and_hook():
    edge_attr, node, edge_index, g_s, g_r = _edge_inputs(12)
    layer = EdgeConcatLinear(5, 4, 3, dtype=torch.float64)
    node.requires_grad_(True)
    seen = []
    layer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(m.dense_input(*args, **kwargs)),
        with_kwargs=True)
    out = layer(edge_attr, node, edge_index, receiver_gate=g_r)
    (grad,) = torch.autograd.grad(out.sum(), node)
    node2 = node.detach().clone().requires_grad_(True)
    dense = torch.cat([edge_attr, node2[edge_index[0]], g_r * node2[edge_index[1]]], -1)
    (grad2,) = torch.autograd.grad(nn.functional.linear(dense, layer.weight, layer.bias).sum(),
                                   node2)
    torch.testing.assert_close(grad, grad2)
    torch.testing.assert_close(seen[0], dense.detach())


def test_edge_concat_linear_rejects_bad_shapes():
    edge_attr, node, edge_index, g_s, _ = _edge_inputs(13)
    layer = EdgeConcatLinear(5, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="sender_gate"):
        layer(edge_attr, node, edge_index, sender_gate=g_s[:-1])
    with pytest.raises(ValueError, match="node_feats"):
        layer(edge_attr, node[:, :3], edge_index)
    assert "edge_dim=5, node_dim=4" in repr(layer)
