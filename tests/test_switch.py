"""The embedding switch (gffmerge.models.embedding_switch): per-system atom embeddings picked
by the batch's system label, exact reproduction of a source, checkpoint round trips, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from gffmerge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gffmerge.data import load_dataset
from gffmerge.models import MODELS, build_model
from gffmerge.models.embedding_switch import EmbeddingSwitch, SystemEmbedding

TINY = {
    "schnet": dict(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6, cutoff=4.0),
    "painn": dict(n_features=8, n_interactions=2, n_rbf=6, cutoff=4.0),
    "gns": dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0),
}
SYSTEMS = ("rmd17/ethanol", "rmd17/malonaldehyde")


@pytest.fixture(scope="module")
def data():
    return load_dataset(list(SYSTEMS), max_frames=12).split("train")


def _perturbed(model, seed: int, scale: float = 0.3):
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return out


def _sources(name: str, dtype=torch.float64):
    """Two "fine-tunes" of one random model and a merged model equal to source 0 except for
    the embedding, which is the average of the two sources' embeddings."""
    torch.manual_seed(3)
    base = build_model(name, **TINY[name]).to(dtype)
    ref = torch.zeros(119, dtype=torch.float64)
    ref[[1, 6, 8]] = torch.tensor([-13.6, -1029.8, -2041.1], dtype=torch.float64)
    base.set_energy_normalisation(ref, scale=0.4, shift=0.01)
    a, b = _perturbed(base, 1).eval(), _perturbed(base, 2).eval()
    merged = copy.deepcopy(a)
    with torch.no_grad():
        merged.embedding.weight.copy_(0.5 * (a.embedding.weight + b.embedding.weight))
    return a, b, merged


def _with_embedding(model, table):
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.embedding.weight.copy_(table)
    return out


def _batch(dataset, system: str | None = None, n: int = 3, dtype=torch.float64):
    ds = dataset.for_system(system) if system else dataset
    positions = range(n) if system else [*range(n), len(ds) - 1, len(ds) - 2]
    return ds.collate(list(positions), cutoff=4.0, dtype=dtype)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_source_table_on_its_system_reproduces_the_source_exactly(data, name):
    a, b, merged = _sources(name)
    switched = EmbeddingSwitch.from_sources(merged, [a, b], list(SYSTEMS)).eval()
    batch = _batch(data, SYSTEMS[0])
    want, got = a(batch), switched(batch)
    assert torch.equal(got["energy"], want["energy"])
    assert torch.equal(got["forces"], want["forces"])
    # The merged model (average embedding) really differs, so the switch did something.
    assert (merged(batch)["energy"] - want["energy"]).abs().max() > 1e-4
    # On the other system the table is b's; every other weight is still a's (= merged's).
    batch_b = _batch(data, SYSTEMS[1])
    want_b = _with_embedding(a, b.embedding.weight)(batch_b)
    got_b = switched(batch_b)
    assert torch.equal(got_b["energy"], want_b["energy"])
    assert torch.equal(got_b["forces"], want_b["forces"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mixed_batch_selects_tables_per_atom(data, name):
    a, b, merged = _sources(name)
    switched = EmbeddingSwitch.from_sources(merged, [a, b], list(SYSTEMS)).eval()
    batch = _batch(data)  # 3 ethanol and 2 malonaldehyde frames
    assert set(batch.system.tolist()) == {0, 1}
    got = switched(batch)
    ref_a, ref_b = a, _with_embedding(a, b.embedding.weight)
    for g in range(batch.num_graphs):
        one = data.collate([_positions_of(data, batch.frame_keys[g])], 4.0, torch.float64)
        want = (ref_a if batch.system[g] == 0 else ref_b)(one)
        atoms = batch.batch == g
        torch.testing.assert_close(got["energy"][g], want["energy"][0], rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(got["forces"][atoms], want["forces"], rtol=1e-10,
                                   atol=1e-10)


def _positions_of(dataset, key: str) -> int:
    return dataset.frame_keys.index(key)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, data, name, dtype):
    a, b, merged = _sources(name, dtype)
    switched = EmbeddingSwitch.from_sources(merged, [a, b], list(SYSTEMS)).eval()
    path = save_checkpoint(tmp_path / "switched.pt", switched, {"role": "merged"})
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, EmbeddingSwitch) and meta == {"role": "merged"}
    assert loaded.systems == SYSTEMS and not loaded.training
    assert next(loaded.parameters()).dtype == dtype
    batch = _batch(data, dtype=dtype)
    want, got = switched(batch), loaded(batch)
    assert torch.equal(got["energy"], want["energy"])
    assert torch.equal(got["forces"], want["forces"])
    # The same file is the plain merged model for code that ignores the switch section.
    payload = torch.load(path, weights_only=True)
    plain = build_model(payload["model_name"], **payload["config"]).to(dtype)
    plain.load_state_dict(payload["state_dict"])
    assert torch.equal(plain.eval()(batch)["energy"], merged(batch)["energy"])


def test_unlabelled_and_unknown_systems_are_clear_errors(data):
    a, b, merged = _sources("gns")
    switched = EmbeddingSwitch.from_sources(merged, [a, b], list(SYSTEMS))
    batch = _batch(data, SYSTEMS[0])
    from dataclasses import replace

    with pytest.raises(ValueError, match="carries no system label.*system="):
        switched(replace(batch, system=None, system_names=()))
    only_ethanol = EmbeddingSwitch.from_sources(merged, [a], ["rmd17/ethanol"])
    with pytest.raises(ValueError, match=r"no embedding table for system\(s\) "
                                         r"\['rmd17/malonaldehyde'\]"):
        only_ethanol(_batch(data))
    # A dataset naming an unknown system is fine as long as this batch has none of it.
    only_ethanol(batch)
    # The inner model cannot be called on its own by mistake.
    with pytest.raises(RuntimeError, match="through its EmbeddingSwitch"):
        switched.base(batch)


def test_unknown_merged_uses_the_merged_table_for_unknown_atoms(data):
    a, b, merged = _sources("painn")
    switched = EmbeddingSwitch.from_sources(merged, [a], ["rmd17/ethanol"], unknown="merged")
    batch = _batch(data)
    got = switched(batch)
    for g in range(batch.num_graphs):
        one = data.collate([_positions_of(data, batch.frame_keys[g])], 4.0, torch.float64)
        want = (a if batch.system[g] == 0 else merged)(one)
        torch.testing.assert_close(got["energy"][g], want["energy"][0], rtol=1e-12, atol=1e-9)


def test_short_names_indices_and_bad_tables():
    a, b, merged = _sources("schnet")
    switched = EmbeddingSwitch.from_sources(merged, [a, b], list(SYSTEMS))
    assert switched.system_index("malonaldehyde") == 1
    assert switched.system_index("rmd17/ethanol") == 0 and switched.system_index(1) == 1
    with pytest.raises(ValueError, match="out of range"):
        switched.system_index(2)
    with pytest.raises(ValueError, match="no embedding table for system 'benzene'"):
        switched.system_index("benzene")
    ambiguous = EmbeddingSwitch(merged, {"x/ethanol": a.embedding.weight,
                                         "y/ethanol": b.embedding.weight})
    with pytest.raises(ValueError, match="several tables"):
        ambiguous.system_index("ethanol")
    with pytest.raises(ValueError, match="has shape"):
        EmbeddingSwitch(merged, {"s": torch.zeros(5, 3)})
    with pytest.raises(ValueError, match="one system name per source"):
        EmbeddingSwitch.from_sources(merged, [a, b], ["only-one"])
    with pytest.raises(TypeError, match="wraps a plain"):
        EmbeddingSwitch(switched, {"s": a.embedding.weight})
    # The wrapped model is a copy: the caller's merged model keeps its nn.Embedding.
    assert isinstance(switched.embedding, SystemEmbedding)
    assert type(merged.embedding) is torch.nn.Embedding


def test_switch_tables_train_and_bad_section_is_a_checkpoint_error(tmp_path, data):
    a, b, merged = _sources("gns")
    switched = EmbeddingSwitch.from_sources(merged, [a, b], list(SYSTEMS))
    out = switched(_batch(data, SYSTEMS[1]))
    out["energy"].sum().backward()
    grad = switched.embedding.tables.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0
    path = save_checkpoint(tmp_path / "s.pt", switched)
    payload = torch.load(path, weights_only=True)
    payload["switch"]["tables"] = payload["switch"]["tables"][:1]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="bad embedding-switch section"):
        load_checkpoint(path)
