"""Neighbour lists against an explicit enumeration of periodic images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gffmerge.data import neighbor_list


def brute_force(pos, cell, pbc, cutoff):
    """{(sender, receiver, shift): distance} by enumerating every image the cutoff can reach."""
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    reach = [0, 0, 0]
    if pbc.any():
        # lattice-plane spacing along k is 1 / |column k of inv(cell)|
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
        span = np.ptp(pos @ np.linalg.inv(cell), axis=0)  # unwrapped positions spread out
        reach = [int(np.ceil(cutoff / h + s)) + 1 if p else 0
                 for h, s, p in zip(spacing, span, pbc, strict=True)]
    out = {}
    for shift in itertools.product(*[range(-r, r + 1) for r in reach]):
        s = np.array(shift, dtype=np.float64)
        offset = s @ cell if pbc.any() else np.zeros(3)
        vec = pos[None, :, :] - pos[:, None, :] + offset  # [receiver i, sender j]
        dist = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero(dist < cutoff), strict=True):
            if i == j and not any(shift):
                continue
            out[(int(j), int(i), shift)] = float(dist[i, j])
    return out


def as_dict(pos, cell, edge_index, shift):
    cell = np.zeros((3, 3)) if cell is None else cell
    vec = pos[edge_index[0]] - pos[edge_index[1]] + shift @ cell
    dist = np.linalg.norm(vec, axis=1)
    keys = [(int(j), int(i), tuple(int(x) for x in s))
            for j, i, s in zip(edge_index[0], edge_index[1], shift, strict=True)]
    assert len(set(keys)) == len(keys), "duplicate edges"
    return dict(zip(keys, dist.tolist(), strict=True))


def assert_same(got, want):
    assert set(got) == set(want)
    for key, d in want.items():
        assert abs(got[key] - d) < 1e-9


def random_cell(rng):
    lengths = rng.uniform(3.0, 7.0, size=3)
    cell = np.diag(lengths) + np.triu(rng.uniform(-1.5, 1.5, size=(3, 3)), 1)
    return cell[rng.permutation(3)] if rng.random() < 0.3 else cell


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(1, 12),
       cutoff_scale=st.floats(0.2, 1.3))
def test_periodic_triclinic_matches_brute_force(seed, n_atoms, cutoff_scale):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng)
    # some atoms outside the cell: shifts must refer to the positions as given
    pos = rng.uniform(-0.2, 1.2, size=(n_atoms, 3)) @ cell
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    cutoff = cutoff_scale * spacing.min()  # up to beyond half of the thinnest direction
    edge_index, shift = neighbor_list(pos, cell, True, cutoff)
    assert edge_index.dtype == np.int64 and shift.dtype == np.int64
    assert edge_index.shape[0] == 2 and shift.shape == (edge_index.shape[1], 3)
    assert_same(as_dict(pos, cell, edge_index, shift), brute_force(pos, cell, True, cutoff))


def test_cutoff_larger_than_the_cell_gives_self_images():
    cell = np.diag([2.0, 2.5, 3.0])
    pos = np.array([[0.1, 0.2, 0.3], [1.0, 1.1, 1.2]])
    edge_index, shift = neighbor_list(pos, cell, [True, True, True], 4.0)
    got = as_dict(pos, cell, edge_index, shift)
    assert (0, 0, (1, 0, 0)) in got and (0, 0, (0, 0, 0)) not in got
    assert_same(got, brute_force(pos, cell, True, 4.0))


def test_molecule_without_cell():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 5, size=(20, 3)) + 100.0  # far from the origin, no box
    for cell in (None, np.zeros((3, 3)), np.eye(3) * 1.0):  # a dummy box is ignored
        edge_index, shift = neighbor_list(pos, cell, False, 2.5)
        assert not shift.any()
        assert_same(as_dict(pos, None, edge_index, shift), brute_force(pos, None, False, 2.5))
    # both directions of every pair
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert all((i, j) in pairs for j, i in pairs)


def test_mixed_pbc_slab():
    rng = np.random.default_rng(1)
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.0, 0.0, 20.0]])
    pos = rng.uniform(0, 1, size=(10, 3)) @ np.diag([4.0, 4.5, 3.0])
    pbc = [True, True, False]
    edge_index, shift = neighbor_list(pos, cell, pbc, 3.5)
    assert not shift[:, 2].any()
    assert_same(as_dict(pos, cell, edge_index, shift), brute_force(pos, cell, pbc, 3.5))


def test_bad_arguments():
    pos = np.zeros((2, 3))
    with pytest.raises(ValueError, match="cutoff must be positive"):
        neighbor_list(pos, None, False, 0.0)
    with pytest.raises(ValueError, match="needs a cell"):
        neighbor_list(pos, None, True, 1.0)
    with pytest.raises(ValueError, match="singular"):
        neighbor_list(pos, np.diag([1.0, 1.0, 0.0]), [True, True, False], 1.0)
    with pytest.raises(ValueError, match=r"pos has shape \(2, 2\)"):
        neighbor_list(np.zeros((2, 2)), None, False, 1.0)
    empty, shift = neighbor_list(np.zeros((0, 3)), None, False, 1.0)
    assert empty.shape == (2, 0) and shift.shape == (0, 3)
