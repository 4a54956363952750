"""gffmerge::parts_gram_: the compiled CPU kernel against the pure-torch float64 reference (the
explicit rows ``[D, g_1 H_1[i_1], ..., 1]``), and an independent float64 Gram of
``GramInput.materialize``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge.models.parts import Dense, Gathered, GramInput
from gffmerge_ext.reference import parts_gram_reference_

ROW_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ERRORS = (RuntimeError, TypeError, ValueError, IndexError)
BACKENDS = [pytest.param("ext", marks=pytest.mark.needs_ext), "torch"]
RTOL = 1e-12


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def make_case(gen, rows, dense_width, node_specs, dtype, gated, strided=False):
    """Random dense rows and gathered parts; node_specs: (nodes, width, shared_with or None)."""
    dense = None
    if dense_width is not None:
        dense = torch.randn(rows, dense_width, generator=gen).to(dtype)
        if strided:
            dense = torch.randn(dense_width, rows, generator=gen).to(dtype).T
    nodes, indices, gates = [], [], []
    for q, (n, d, shared) in enumerate(node_specs):
        h = nodes[shared] if shared is not None else torch.randn(n, d, generator=gen).to(dtype)
        nodes.append(h)
        ix = torch.randint(0, h.shape[0], (2 * rows,), generator=gen)
        ix = ix[::2] if strided else ix[:rows]
        indices.append(ix.int() if q % 2 else ix)
        g = None
        if gated and q != 1:
            g = torch.rand(rows, generator=gen, dtype=torch.float64 if q % 2 else torch.float32)
        gates.append(g)
    return dense, nodes, indices, gates


def width_of(dense, nodes):
    return (0 if dense is None else dense.shape[1]) + sum(h.shape[1] for h in nodes) + 1


def materialized_gram(dense, nodes, indices, gates):
    """Independent float64 Gram: GramInput.materialize + the ones column, X^T X."""
    parts = ([] if dense is None else [Dense(dense)]) + [
        Gathered(h, i, g) for h, i, g in zip(nodes, indices, gates)]
    x = GramInput(tuple(parts)).materialize(torch.float64)
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    return x.T @ x


@pytest.mark.needs_ext
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 700), dense_width=st.one_of(st.none(), st.integers(1, 9)),
       k=st.integers(1, 3), share=st.booleans(), dtype=st.sampled_from(ROW_DTYPES),
       gated=st.booleans(), strided=st.booleans(), dense_block=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_parts_gram_matches_reference(rows, dense_width, k, share, dtype, gated, strided,
                                      dense_block, seed):
    gen = torch.Generator().manual_seed(seed)
    specs = [(7, 5, None)] + [(11 + q, 3 + q, 0 if share else None) for q in range(1, k)]
    if rows == 0 and dense_width is None:
        rows = 1  # the rows are counted by indices[0]
    dense, nodes, indices, gates = make_case(gen, rows, dense_width, specs, dtype, gated,
                                             strided)
    w = width_of(dense, nodes)
    start = torch.randn(w, w, generator=gen, dtype=torch.float64)
    start = start + start.T  # poisoned: only additions may change it
    acc, ref = start.clone(), start.clone()
    gffmerge_ext.parts_gram_(acc, dense, nodes, indices, gates, dense_block, backend="ext")
    parts_gram_reference_(ref, dense, nodes, indices, gates, dense_block)
    added, ref_added = acc - start, ref - start
    assert torch.equal(added, added.T)
    if rows:
        assert rel(added, ref_added) <= RTOL
    else:
        assert not added.any()
    if dense_block:
        assert rel(ref_added, materialized_gram(dense, nodes, indices, gates)) <= RTOL


@pytest.mark.needs_ext
def test_symmetric_edges_share_the_node_gram_and_match_the_reference():
    # every node sends as often as it receives: the two diagonal blocks are formed once
    gen = torch.Generator().manual_seed(1)
    n, e = 40, 300
    s = torch.randint(0, n, (e,), generator=gen)
    r = torch.randint(0, n, (e,), generator=gen)
    send, recv = torch.cat([s, r]), torch.cat([r, s])
    edge = torch.randn(2 * e, 6, generator=gen)
    h = torch.randn(n, 8, generator=gen)
    acc = torch.zeros(23, 23, dtype=torch.float64)
    gffmerge_ext.parts_gram_(acc, edge, [h, h], [send, recv], [None, None], backend="ext")
    assert torch.equal(acc[6:14, 6:14], acc[14:22, 14:22])
    assert rel(acc, materialized_gram(edge, [h, h], [send, recv], [None, None])) <= RTOL


@pytest.mark.needs_ext
def test_split_calls_add_up_and_the_dense_block_can_come_from_elsewhere():
    gen = torch.Generator().manual_seed(2)
    dense, nodes, indices, gates = make_case(gen, 400, 4, [(9, 3, None), (9, 3, 0)],
                                             torch.float32, True)
    whole = torch.zeros(11, 11, dtype=torch.float64)
    gffmerge_ext.parts_gram_(whole, dense, nodes, indices, gates, backend="ext")
    split = torch.zeros(11, 11, dtype=torch.float64)
    for sl in (slice(0, 150), slice(150, 400)):
        gffmerge_ext.parts_gram_(split, dense[sl], nodes, [i[sl] for i in indices],
                                 [None if g is None else g[sl] for g in gates], backend="ext")
    assert rel(split, whole) <= RTOL
    # dense_block=False plus the Gram of [D, 1] from gram_ gives the whole
    part = torch.zeros(11, 11, dtype=torch.float64)
    gffmerge_ext.parts_gram_(part, dense, nodes, indices, gates, False, backend="ext")
    g = torch.zeros(5, 5, dtype=torch.float64)
    gffmerge_ext.gram_(g, dense, augment=True, backend="ext")
    cols = torch.tensor([0, 1, 2, 3, 10])
    assert not part[cols.unsqueeze(1), cols].any()
    part[cols.unsqueeze(1), cols] = g
    assert torch.equal(part, whole)


@pytest.mark.needs_ext
def test_opcheck_and_fake_tensor_mode():
    gen = torch.Generator().manual_seed(3)
    dense, nodes, indices, gates = make_case(gen, 120, 4, [(9, 3, None), (6, 2, None)],
                                             torch.float32, True)
    z = lambda n: torch.zeros(n, n, dtype=torch.float64)  # noqa: E731
    op = torch.ops.gffmerge.parts_gram_.default
    torch.library.opcheck(op, (z(10), dense, nodes, indices, gates), {})
    torch.library.opcheck(op, (z(10), dense, nodes, indices, gates, False), {})
    torch.library.opcheck(op, (z(6), None, nodes, indices, [None, None]), {})
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        acc = torch.zeros(10, 10, dtype=torch.float64)
        assert gffmerge_ext.parts_gram_(
            acc, torch.randn(5, 4), [torch.randn(3, 3), torch.randn(2, 2)],
            [torch.zeros(5, dtype=torch.long)] * 2, [None, None]) is None


@pytest.mark.needs_ext
def test_cpu_only_kernel():
    assert "cpu" in gffmerge_ext.parts_gram_devices()
    assert "cuda" not in gffmerge_ext.parts_gram_devices()


def _error_cases():
    f64 = dict(dtype=torch.float64)
    d, h = torch.randn(10, 4), torch.randn(6, 3)
    i = torch.arange(10) % 6
    return [
        ((torch.zeros(8, 8, **f64), d, [h], [i, i], [None]),
         "nodes, indices and gates must have one entry per gathered part, got 1, 2 and 1"),
        ((torch.zeros(1, 1, **f64), None, [], [], []),
         "needs dense rows or at least one gathered part, got neither"),
        ((torch.zeros(9, 9, **f64), d, [h], [i], [None]),
         r"acc must have shape \[8, 8\] \(dense and nodes have 7 features in all, plus the "
         r"ones column\), got \[9, 9\]"),
        ((torch.zeros(9, 9), d, [h], [i], [None]), "acc must be float64"),
        ((torch.zeros(8, 8, **f64), d, [h[None]], [i], [None]), r"nodes\[0\] must be 2-D"),
        ((torch.zeros(8, 8, **f64), d, [h], [i[:7]], [None]),
         r"indices\[0\] must have one entry per row: expected 10 \(dense.shape\[0\]\), got 7"),
        ((torch.zeros(8, 8, **f64), d, [h], [i.float()], [None]),
         r"indices\[0\] must be int64 or int32"),
        ((torch.zeros(8, 8, **f64), d, [h], [i], [torch.ones(10, dtype=torch.float16)]),
         r"gates\[0\] must be float32 or float64"),
        ((torch.zeros(8, 8, **f64), d, [h], [i], [torch.ones(9)]),
         r"gates\[0\] must be 1-D with one entry per row: expected \[10\], got shape \[9\]"),
        ((torch.zeros(8, 8, **f64), d, [h], [torch.tensor([0, 1, 2, 6, 0, 0, 0, 0, 0, 0])],
          [None]), r"indices\[0\]\[3\] = 6 is out of range for nodes\[0\] with 6 rows"),
        ((torch.zeros(4, 4, **f64), None, [h], [torch.tensor([0, -1])], [None]),
         r"indices\[0\]\[1\] = -1 is out of range for nodes\[0\] with 6 rows"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_error_cases())))
def test_parts_gram_errors(backend, case):
    args, message = _error_cases()[case]
    before = args[0].clone()
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.parts_gram_(*args, backend=backend)
    assert torch.equal(args[0], before)  # nothing added before the checks passed
