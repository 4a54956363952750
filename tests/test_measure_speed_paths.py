"""The fast paths of measuring (issue 15) give the statistics of the paths they replace.

* the register-tile block products of ``gram_``/``cross_`` (csrc/kernels/block_products.h)
  against the float64 reference and against the dgemm path (``GFFMERGE_BLAS=dgemm``), and
  the AVX-512 tiles against the AVX2 ones (``GFFMERGE_BLAS=avx2``) to the bit;
* the cross sums of a layer on its own inputs formed as ``A Θᵀ`` against the measured ones;
* early-stopped progressive passes against full forwards.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gffmerge_ext
from gffmerge.architecture import linear_layers
from gffmerge.collect import DenseHook, StructuredHook, default_forward, measure, provider_of
from gffmerge.collect.budget import frames_per_batch
from gffmerge.collect.hooks import is_affine, theta
from gffmerge.collect.order import layer_order
from gffmerge.collect.recording import run_recording
from gffmerge.collect.tangents import directions
from gffmerge.data import load_dataset
from gffmerge.models import build_model
from gffmerge.models.parts import GramInput
from gffmerge.stats import Stats
from gffmerge_ext.reference import cross_reference_, gram_reference_

F64 = torch.float64


def _close(a, b, scale, rtol=1e-12):
    """``a == b`` up to float64 summation-order error relative to the sum of |terms|."""
    err = (a - b).abs()
    tol = rtol * scale + 1e-300
    assert bool((err <= tol).all()), f"worst |err|/tol {float((err / tol).max()):.3g}"


def _rows(gen, n, d, dtype, layout):
    if layout == "contiguous":
        return torch.randn(n, d, generator=gen).to(dtype)
    if layout == "transposed":
        return torch.randn(d, n, generator=gen).to(dtype).T
    return torch.randn(2 * n + 1, 3 * d + 2, generator=gen).to(dtype)[1::2, 2::3]


@st.composite
def _cases(draw):
    # column counts on both sides of the 8 x 4 and 16 x 8 tile edges and the padded leading
    # dimension
    d = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 24, 31, 33, 63, 64,
                              65, 72, 100]))
    n = draw(st.sampled_from([0, 1, 2, 3, 17, 64, 65, 300, 1500]))
    dtype = draw(st.sampled_from([torch.float32, F64, torch.bfloat16]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    weighted = draw(st.booleans())
    indexed = draw(st.booleans())
    augment = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return d, n, dtype, layout, weighted, indexed, augment, seed


def _case_tensors(case, y_widths: int):
    """Rows, targets (``1 + seed % y_widths`` columns), index and weights of a drawn case."""
    d, n, dtype, layout, weighted, indexed, augment, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = _rows(gen, max(n, 1) if indexed else n, d, dtype, layout)
    y = _rows(gen, x.shape[0], 1 + seed % y_widths, dtype, "contiguous")
    m = n if not indexed else n + 5
    index = torch.randint(0, max(x.shape[0], 1), (m,), generator=gen) if indexed else None
    if indexed and n == 0:
        index = index[:0]
    count = index.numel() if indexed else n
    w = torch.randn(count, generator=gen, dtype=F64) if weighted else None
    return x, y, index, w, augment


def _gram_and_cross(x, y, index, w, augment):
    """``gram_`` and ``cross_`` of one case by the compiled ops, into fresh accumulators."""
    D = x.shape[1] + augment
    g = torch.zeros(D, D, dtype=F64)
    c = torch.zeros(D, y.shape[1], dtype=F64)
    gffmerge_ext.gram_(g, x, index=index, weight=w, augment=augment, backend="ext")
    gffmerge_ext.cross_(c, x, y, index_x=index, index_y=index, weight=w,
                        augment_x=augment, backend="ext")
    return g, c


@contextmanager
def _blas_env(value: str | None):
    """``GFFMERGE_BLAS`` set to ``value`` (unset for None), the caller's value restored."""
    saved = os.environ.pop("GFFMERGE_BLAS", None)
    try:
        if value is not None:
            os.environ["GFFMERGE_BLAS"] = value
        yield
    finally:
        os.environ.pop("GFFMERGE_BLAS", None)
        if saved is not None:
            os.environ["GFFMERGE_BLAS"] = saved


@pytest.mark.needs_ext
@settings(max_examples=80, deadline=None)
@given(case=_cases())
def test_tiled_gram_and_cross_match_reference_and_dgemm(case):
    """Symmetric Gram (one triangle of tiles, mirrored once) and cross sums from the
    register tiles equal the float64 reference and the dgemm path."""
    x, y, index, w, augment = _case_tensors(case, y_widths=11)
    D = x.shape[1] + augment
    with _blas_env(None):
        tiled_g, tiled_c = _gram_and_cross(x, y, index, w, augment)
    with _blas_env("dgemm"):
        assert gffmerge_ext.build_info()["block_products"].startswith("dgemm")
        blas_g, blas_c = _gram_and_cross(x, y, index, w, augment)

    ref_g = torch.zeros(D, D, dtype=F64)
    ref_c = torch.zeros(D, y.shape[1], dtype=F64)
    gram_reference_(ref_g, x, index, w, augment)
    cross_reference_(ref_c, x, y, index, index, w, augment)
    scale_g = torch.zeros(D, D, dtype=F64)
    gram_reference_(scale_g, x.abs(), index, None if w is None else w.abs(), augment)
    scale_c = torch.zeros(D, y.shape[1], dtype=F64)
    cross_reference_(scale_c, x.abs(), y.abs(), index, index,
                     None if w is None else w.abs(), augment)
    assert torch.equal(tiled_g, tiled_g.T)
    _close(tiled_g, ref_g, scale_g)
    _close(tiled_g, blas_g, scale_g)
    _close(tiled_c, ref_c, scale_c)
    _close(tiled_c, blas_c, scale_c)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.mark.needs_ext
def test_tiles_are_used_where_the_cpu_has_them(monkeypatch):
    monkeypatch.delenv("GFFMERGE_BLAS", raising=False)
    info = gffmerge_ext.build_info()["block_products"]
    assert info.startswith("register tiles") or info.startswith("dgemm (no avx2")
    flags = _cpu_flags()
    if "avx512f" in flags:
        assert info == "register tiles (avx512f)"
        monkeypatch.setenv("GFFMERGE_BLAS", "avx2")
        assert gffmerge_ext.build_info()["block_products"] == "register tiles (avx2, fma)"
    elif {"avx2", "fma"} <= flags:
        assert info == "register tiles (avx2, fma)"


@pytest.mark.needs_ext
@settings(max_examples=60, deadline=None)
@given(case=_cases())
def test_wide_tiles_equal_avx2_tiles_to_the_bit(case):
    """The AVX-512 tiles run the same fused multiply-add chain per entry as the AVX2 ones:
    Grams and cross sums equal to the bit (on a CPU without AVX-512 both runs take the AVX2
    tiles and the test compares a path with itself)."""
    x, y, index, w, augment = _case_tensors(case, y_widths=29)
    with _blas_env(None):
        wide_g, wide_c = _gram_and_cross(x, y, index, w, augment)
    with _blas_env("avx2"):
        narrow_g, narrow_c = _gram_and_cross(x, y, index, w, augment)
    assert torch.equal(wide_g, narrow_g)
    assert torch.equal(wide_c, narrow_c)


@pytest.mark.needs_ext
def test_tiled_gram_adds_to_what_is_there():
    """The increment is added to ``acc`` (not written over it), both triangles alike."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(700, 13, generator=gen)
    before = torch.randn(14, 14, generator=gen, dtype=F64)
    before = before + before.T
    acc = before.clone()
    gffmerge_ext.gram_(acc, x, augment=True, backend="ext")
    ref = torch.zeros(14, 14, dtype=F64)
    gram_reference_(ref, x, None, None, True)
    scale = torch.zeros(14, 14, dtype=F64)
    gram_reference_(scale, x.abs(), None, None, True)
    _close(acc - before, ref, scale + before.abs() * 1e4)
    assert torch.equal(acc, acc.T)


# ---------------------------------------------------------------- cross sums as A Θᵀ
def _tiny_gns(seed=0, **config):
    torch.manual_seed(seed)
    cfg = dict(latent_dim=16, hidden_dim=24, n_layers=2, n_rbf=8, **config)
    return build_model("gns", **cfg).to(F64).eval()


def _batches(system, model, frames=4, batch_size=2):
    ds = load_dataset([system], max_frames=frames, seed=0)
    return list(ds.batches(batch_size, model.cutoff, dtype=F64))


def _measured_cross(model, data, dense):
    """Cross sums measured from the layers' outputs (the path the shortcut replaces)."""
    infos = linear_layers(model)
    stats = Stats.empty(model, infos, cross=True)
    sums = stats.models[0].layers
    modules = dict(model.named_modules())
    hooks = []
    for name, s in sums.items():
        kind = StructuredHook if not dense and provider_of(modules[name]) else DenseHook
        hooks.append(kind(modules[name], s, measured_cross=True))
    with torch.no_grad():
        for b in data:
            default_forward(model, b)
    for h in hooks:
        h.remove()
    return sums


def _rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


@pytest.mark.parametrize("system", ["lips20/beta-Li3PS4", "rmd17/ethanol"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_from_gram_and_weights_equals_measured_cross(system, seed):
    """``Σ x̃ yᵀ = G Θᵀ`` for every layer of a random float64 GNS (edge layers, concat
    layers, plain linears; gates and dedup included), structured and dense."""
    model = _tiny_gns(seed)
    data = _batches(system, model)
    for dense in (False, True):
        fast = measure(model, data, cross=True, dense=dense, progress=False).models[0].layers
        slow = _measured_cross(model, data, dense)
        assert set(fast) == set(slow)
        for name, s in fast.items():
            assert torch.equal(s.gram, s.gram.T) or _rel(s.gram, s.gram.T) < 1e-14
            assert _rel(s.cross, slow[name].cross) <= 1e-10, (name, dense)
            assert _rel(s.gram, slow[name].gram) <= 1e-10, name


def test_cross_shortcut_adds_to_existing_sums_and_skips_non_affine_layers():
    """Only the rows measured while the hook was attached enter ``(G - G₀) Θᵀ``; a Linear
    subclass with its own forward keeps the measured cross sums."""

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), Scaled(7, 3)).double()
    x = torch.randn(40, 5, dtype=F64)
    first = measure(net, [x[:20]], cross=True, progress=False)
    assert not is_affine(net[2]) and is_affine(net[0])
    sums = first.models[0].layers
    hooks = [DenseHook(net[0], sums["0"]), DenseHook(net[2], sums["2"])]
    with torch.no_grad():
        net(x[20:30])
        for h in hooks:  # a partial checkpoint while attached, then more rows
            h.flush()
        net(x[30:])
    for h in hooks:
        h.remove()
    for name, layer in (("0", net[0]), ("2", net[2])):
        inp = x if name == "0" else torch.tanh(net[0](x)).detach()
        xa = torch.cat([inp, torch.ones(40, 1, dtype=F64)], 1)
        y = layer(inp).detach()
        assert _rel(sums[name].cross, xa.T @ y) <= 1e-12, name
        assert _rel(sums[name].gram, xa.T @ xa) <= 1e-12, name


def test_float32_model_cross_is_the_exact_product_of_its_weights():
    """For a float32 model the derived cross sums are ``G Θᵀ`` in float64; the measured
    ones differ from them only by the float32 rounding of the layer outputs."""
    torch.manual_seed(0)
    model = build_model("gns", latent_dim=16, hidden_dim=24, n_layers=2, n_rbf=8).eval()
    ds = load_dataset(["rmd17/ethanol"], max_frames=4, seed=0)
    data = list(ds.batches(2, model.cutoff, dtype=torch.float32))
    fast = measure(model, data, cross=True, progress=False).models[0].layers
    slow = _measured_cross(model, data, dense=False)
    modules = dict(model.named_modules())
    for name, s in fast.items():
        assert _rel(s.cross, s.gram @ theta(modules[name]).T) <= 1e-14, name
        assert _rel(s.cross, slow[name].cross) <= 1e-5, name


# ---------------------------------------------------------------- progressive passes
def test_early_stopped_recording_equals_full_forward_and_stops():
    """A stage's pass stops once its layers have fired: the recorded inputs and outputs
    equal those of a full forward, and the layers after the stage are never called."""
    model = _tiny_gns(3)
    batch = _batches("lips20/beta-Li3PS4", model, frames=2, batch_size=2)[0]
    order = layer_order(model, batch)
    first_stage = list(order.stages[0])
    later = order.order[-1]
    assert later not in first_stage
    fired = []
    handle = dict(model.named_modules())[later].register_forward_hook(
        lambda *a: fired.append(1))
    try:
        calls = {n: order.calls[n] for n in first_stage}
        for what, structured in (("input", False), ("input", True), ("output", False)):
            for u in (None, directions(batch, "random", seed=1)):
                fired.clear()
                early = run_recording(model, batch, first_stage, what, u=u, calls=calls,
                                      structured=structured)
                assert not fired
                full = run_recording(model, batch, first_stage, what, u=u,
                                     structured=structured)
                assert fired
                for n in first_stage:
                    assert len(early[n]) == len(full[n]) == order.calls[n]
                    for (a, da), (b, db) in zip(early[n], full[n]):
                        if isinstance(a, GramInput):
                            a, b = a.materialize(F64), b.materialize(F64)
                        assert torch.equal(a, b)
                        assert (da is None) == (db is None)
                        if da is not None:
                            assert torch.equal(da, db)
    finally:
        handle.remove()


# ---------------------------------------------------------------- automatic batch size
def test_frames_per_batch_reaches_the_atom_budget_for_small_molecules():
    molecules = load_dataset(["rmd17/ethanol"], max_frames=20, seed=0)  # 9 atoms a frame
    cells = load_dataset(["lips20/beta-Li3PS4"], max_frames=5, seed=0)
    assert frames_per_batch(molecules, 8) == 1024 // 9
    assert frames_per_batch(molecules, 8, atoms=90) == 10
    assert frames_per_batch(molecules, 200) == 200  # never lowered
    assert frames_per_batch(molecules, 8, max_frames=32) == 32
    per_cell = float(cells.atom_counts().mean())
    assert frames_per_batch(cells, 8) == max(8, int(1024 // per_cell))
    with pytest.raises(ValueError, match="positive number of frames"):
        frames_per_batch(molecules, 0)


def test_stats_batches_measure_the_frames_a_limit_would_in_fewer_batches():
    """The frames batches of 8 measure up to a limit (checked after each batch), in dataset
    order, rebatched by the atom budget: the same statistics (float64 summation order)."""
    from gffmerge.collect.budget import stats_batches

    model = _tiny_gns(0)
    ds = load_dataset(["rmd17/ethanol"], max_frames=40, seed=0)
    for limit, frames in ((None, len(ds)), (10, 16), (16, 16), (1, 8), (500, len(ds))):
        fast = stats_batches(ds, model, 8, limit)
        assert len(fast) == 1 and fast.batch_size >= 24  # 9-atom frames: one batch here
        slow = ds.batches_for(model, 8)
        a = measure(model, fast, progress=False).models[0]
        b = measure(model, slow, limit=limit, progress=False).models[0]
        assert a.graphs == b.graphs == frames
        for name, s in a.layers.items():
            assert s.rows == b.layers[name].rows > 0, name
            assert _rel(s.gram, b.layers[name].gram) <= 1e-10, name
    with pytest.raises(ValueError, match="positive number of frames"):
        stats_batches(ds, model, 8, 0)
    with pytest.raises(ValueError, match="positive number of frames"):
        stats_batches(ds, model, 0)


def test_cli_merge_batches_statistics_by_atom_budget(tmp_path, monkeypatch):
    """`gffmerge merge` with a statistics method and no --batch-size hands the method fewer,
    larger batches of the same frames; the merged model is the one of batches of 8."""
    import gffmerge
    from gffmerge.checkpoint import load_checkpoint, save_checkpoint
    from gffmerge.cli import main

    paths = []
    for k in range(2):
        p = tmp_path / f"m{k}.pt"
        save_checkpoint(p, build_model("gns", latent_dim=16, hidden_dim=24, n_layers=1,
                                       n_rbf=8).eval(), {"role": "finetune"})
        paths.append(str(p))
    seen = []
    real = gffmerge.merge

    def spy(models, data, **kw):
        seen.append(([len(loader) for loader in data], kw.get("limit")))
        return real(models, data, **kw)

    monkeypatch.setattr(gffmerge, "merge", spy)
    common = ["merge", "-q", "--method", "gffmerge", "--model", *paths, "--data",
              "rmd17/ethanol", "rmd17/malonaldehyde", "--max-frames", "60", "--limit", "20",
              "-O", "prior=mean", "-O", "ridge_mode=relative", "-O", "ridge=1e-3"]
    assert main([*common, "-o", str(tmp_path / "auto.pt")]) == 0
    assert main([*common, "--batch-size", "8", "-o", str(tmp_path / "eight.pt")]) == 0
    (auto_batches, auto_limit), (eight_batches, eight_limit) = seen
    assert auto_batches == [1, 1] and auto_limit is None  # 24 frames each, in one batch
    # as before: every batch of 8 offered, the limit stopping measure after the third
    assert eight_limit == 20 and min(eight_batches) > 3
    # the same statistics up to float64 summation order; a relative ridge keeps the solve
    # from amplifying that order (the paper's absolute 1e-6 on random layers: ~1e-5)
    a, _ = load_checkpoint(tmp_path / "auto.pt")
    b, _ = load_checkpoint(tmp_path / "eight.pt")
    for name, v in a.state_dict().items():
        assert _rel(v.double(), b.state_dict()[name].double()) <= 1e-6, name
