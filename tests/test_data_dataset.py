"""AtomsDataset views, neighbour-list caching and AtomsBatch construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gffmerge.data import AtomsBatch, FrameSet, load_dataset, neighbor_list
from gffmerge.data.dataset import AtomsDataset

CUTOFF = 4.0


@pytest.fixture(scope="module")
def mixed():
    """Periodic LiPS20 frames and rMD17 molecules in one dataset (a few frames each)."""
    ds = load_dataset(["lips20/beta-Li3PS4", "rmd17/ethanol", "lips20/P2S5"])
    keep = np.concatenate([np.flatnonzero(ds.system_ids == s)[:4] for s in range(3)])
    return ds.take(keep)


def test_load_dataset_metadata():
    ds = load_dataset(["lips20/beta-Li3PS4", "rmd17/ethanol"])
    assert ds.system_names == ("lips20/beta-Li3PS4", "rmd17/ethanol")
    assert len(ds) == 1000 + 1250
    assert ds.frame_keys[0] == "lips20/beta-Li3PS4:0"
    assert ds.has_energy and ds.has_forces
    counts = ds.atom_counts()
    assert (counts[ds.system_ids == 0] == 64).all() and (counts[ds.system_ids == 1] == 9).all()
    text = ds.describe()
    assert "2250 frames from 2 system(s)" in text
    assert "lips20/beta-Li3PS4: 1000 of 1000 frames, 64 atoms, periodic" in text
    assert "rmd17/ethanol: 1250 of 2000 frames, 9 atoms, molecule" in text
    assert "train" in text and "test" in text
    z, energy, forces = next(ds.structures())
    assert z.shape == (64,) and isinstance(energy, float) and forces.shape == (64, 3)
    assert len(list(ds.structures())) == len(ds)
    test = ds.split("test")
    assert test.split_counts() == {"train": 0, "val": 0, "test": len(test)}
    assert test.system_names == ds.system_names


def test_views():
    ds = load_dataset(["rmd17/benzene", "rmd17/ethanol"], max_frames=50)
    assert len(ds) == 100
    assert ds.subset(7).frame_keys == ds.frame_keys[:7]
    sub = ds.subset(10, seed=3)
    assert len(sub) == 10 and set(sub.frame_keys) <= set(ds.frame_keys)
    assert ds.take([5, 2]).frame_keys == (ds.frame_keys[5], ds.frame_keys[2])
    eth = ds.for_system("rmd17/ethanol")
    assert len(eth) == 50 and (eth.system_ids == 1).all()
    assert ds.for_system(0).frame_keys == ds.frame_keys[:50]
    with pytest.raises(IndexError):
        ds.take([100])


def test_batch_offsets_and_edge_lengths(mixed):
    loader = mixed.batches(5, CUTOFF, dtype=torch.float64)
    assert len(loader) == 3
    seen = []
    for batch in loader:
        assert isinstance(batch, AtomsBatch)
        ptr = np.concatenate([[0], np.cumsum(batch.natoms.numpy())])
        assert batch.num_atoms == ptr[-1]
        assert (batch.batch.numpy() == np.repeat(np.arange(batch.num_graphs),
                                                 batch.natoms.numpy())).all()
        sender, receiver = batch.edge_index.numpy()
        # no edge crosses graphs
        assert (batch.batch[sender] == batch.batch[receiver]).all()
        lengths = batch.edge_vectors().norm(dim=1).numpy()
        for g, key in enumerate(batch.frame_keys):
            system, k = key.rsplit(":", 1)
            fs = mixed.systems[mixed.system_names.index(system)]
            k = int(k)
            pos = fs.pos[k].astype(np.float64)
            np.testing.assert_array_equal(batch.pos[ptr[g]:ptr[g + 1]].numpy(), pos)
            np.testing.assert_array_equal(batch.z[ptr[g]:ptr[g + 1]].numpy(), fs.z_of(k))
            np.testing.assert_array_equal(batch.forces[ptr[g]:ptr[g + 1]].numpy(), fs.forces[k])
            assert batch.energy[g].item() == fs.energy[k]
            assert batch.system_names[int(batch.system[g])] == system
            edge_index, shift = neighbor_list(pos, fs.cell_of(k), fs.pbc, CUTOFF)
            cell = np.zeros((3, 3)) if fs.cell is None else fs.cell[k].astype(np.float64)
            want = np.linalg.norm(pos[edge_index[0]] - pos[edge_index[1]] + shift @ cell, axis=1)
            mine = (receiver >= ptr[g]) & (receiver < ptr[g + 1])
            np.testing.assert_array_equal(sender[mine] - ptr[g], edge_index[0])
            np.testing.assert_array_equal(receiver[mine] - ptr[g], edge_index[1])
            np.testing.assert_allclose(lengths[mine], want, rtol=1e-12)
            assert (lengths[mine] < CUTOFF).all() and (lengths[mine] > 0.5).all()
            if fs.periodic:
                assert batch.pbc[g].all()
                np.testing.assert_array_equal(batch.cell[g].numpy(), fs.cell[k])
            else:
                assert not batch.pbc[g].any() and not batch.cell[g].any()
                assert not batch.cell_shift[mine].any()
            seen.append(key)
    assert seen == list(mixed.frame_keys)


def test_batch_dtypes_and_mixed_graph(mixed):
    batch = next(iter(mixed.take([0, 4, 8]).batches(3, CUTOFF)))
    assert batch.pos.dtype == torch.float32 and batch.forces.dtype == torch.float32
    assert batch.cell.dtype == torch.float32 and batch.cell_shift.dtype == torch.float32
    assert batch.energy.dtype == torch.float64
    assert batch.z.dtype == batch.edge_index.dtype == batch.batch.dtype == torch.int64
    assert batch.pbc.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    assert batch.cell.shape == (3, 3, 3) and batch.system.tolist() == [0, 1, 2]
    assert batch.num_edges > 0


def test_loader_length_shuffle_and_drop_last(mixed):
    assert len(mixed.batches(5, CUTOFF, drop_last=True)) == 2
    assert sum(b.num_graphs for b in mixed.batches(5, CUTOFF, drop_last=True)) == 10
    first = [k for b in mixed.batches(4, CUTOFF, shuffle=True, seed=1) for k in b.frame_keys]
    again = [k for b in mixed.batches(4, CUTOFF, shuffle=True, seed=1) for k in b.frame_keys]
    other = [k for b in mixed.batches(4, CUTOFF, shuffle=True, seed=2) for k in b.frame_keys]
    assert first == again and sorted(first) == sorted(mixed.frame_keys) and first != other
    with pytest.raises(ValueError, match="batch_size"):
        mixed.batches(0, CUTOFF)


def test_neighbor_lists_are_cached_and_shared_with_views():
    ds = load_dataset(["lips20/S"], max_frames=None).subset(6)
    before = ds.neighbor_cache_bytes
    list(ds.batches(3, CUTOFF))
    filled = ds.neighbor_cache_bytes
    assert filled > before
    first = ds.neighbors(0, CUTOFF)
    assert ds.take([0]).neighbors(0, CUTOFF)[0] is first[0]  # same cached arrays
    assert first[0].dtype == np.int32 and first[1].dtype == np.int8
    list(ds.batches(3, CUTOFF))
    assert ds.neighbor_cache_bytes == filled
    ds.neighbors(0, CUTOFF + 1.0)  # another cutoff is another entry
    assert ds.neighbor_cache_bytes > filled
    ds.clear_neighbor_cache()
    assert ds.neighbor_cache_bytes == 0


def test_unlabelled_and_variable_size_frames():
    rng = np.random.default_rng(0)
    fs = FrameSet("var", z=[np.array([1, 1]), np.array([8, 1, 1])],
                  pos=[rng.normal(size=(2, 3)), rng.normal(size=(3, 3))])
    ds = AtomsDataset([fs])
    batch = next(iter(ds.batches(2, 3.0)))
    assert batch.energy is None and batch.forces is None
    assert batch.natoms.tolist() == [2, 3] and batch.z.tolist() == [1, 1, 8, 1, 1]
    counts = ds.split_counts()
    assert sum(counts.values()) == 2 and counts["test"] == 1  # repair fills test first


def test_load_dataset_from_paths_and_framesets(tmp_path):
    path = tmp_path / "water.npz"
    np.savez(path, z=np.array([8, 1, 1]), pos=np.zeros((3, 3, 3)) + np.arange(3)[None, :, None],
             energy=np.zeros(3), forces=np.zeros((3, 3, 3)))
    fs = FrameSet("other", z=np.array([1]), pos=np.zeros((2, 1, 3)))
    ds = load_dataset([path, fs, "rmd17/benzene"], max_frames=10)
    assert ds.system_names == ("water", "other", "rmd17/benzene")
    assert len(ds) == 3 + 2 + 10
    ds2 = load_dataset(str(path))
    assert ds2.system_names == ("water",)
    with pytest.raises(FileNotFoundError, match="no shipped system 'lips20/none'"):
        load_dataset(["lips20/none"])
