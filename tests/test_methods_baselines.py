"""Task arithmetic, TIES, EMR and Fisher merging against independent float64 references and
exact identities; the base model is required and must be the sources' own."""

from __future__ import annotations

import argparse
import copy
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gffmerge
from gffmerge import methods
from gffmerge.checkpoint import save_checkpoint
from gffmerge.cli import main
from gffmerge.collect.fisher import diagonal_fisher, force_field_loss
from gffmerge.errors import ArchitectureMismatchError
from gffmerge.lineage import BaseMismatchError, check_shared_base
from gffmerge.models import build_model
from gffmerge.testing import TinyMLP, fine_tunes


class WithBuffer(TinyMLP):
    """TinyMLP plus a floating buffer (like a force field's energy references)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("reference", torch.zeros(4, dtype=torch.float64))


def _family(k: int, seed: int = 0, scale: float = 0.1):
    """A float64 base and ``k`` fine-tunes of it whose buffers differ."""
    torch.manual_seed(seed)
    base = WithBuffer().double()
    models = fine_tunes(base, k, scale=scale, seed=seed + 1)
    for i, m in enumerate(models):
        m.reference.fill_(float(i + 1))
    return base, models


def _params(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def _close(merged: nn.Module, expected: dict[str, np.ndarray], tol: float = 1e-12) -> None:
    got = _params(merged)
    assert got.keys() == expected.keys()
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=tol, err_msg=name)


# ---------------------------------------------------------------- task arithmetic
@pytest.mark.parametrize("k", [2, 3])
def test_task_arithmetic_with_one_over_k_is_the_average(k):
    base, models = _family(k, seed=k)
    ta = gffmerge.merge(models, method="task_arithmetic", lam=1 / k, base=base).model
    avg = gffmerge.merge(models, method="average").model
    _close(ta, _params(avg))
    assert torch.equal(ta.reference, avg.reference)  # buffers: the sources' mean
    assert float(ta.reference[0]) == pytest.approx(sum(range(1, k + 1)) / k)


def test_task_arithmetic_identities():
    base, models = _family(3, seed=5)
    p0, ps = _params(base), [_params(m) for m in models]
    # λ = 0: the base; λ = 1: θ₀ + Σ τ_k; λ = 0.3: θ₀ + 0.3 Σ τ_k, each in float64
    for lam in (0.0, 1.0, 0.3):
        merged = methods.get("task_arithmetic")(models, base=base, lam=lam).model
        _close(merged, {n: p0[n] + lam * sum(p[n] - p0[n] for p in ps) for n in p0})
    # one source and λ = 1 gives the source back
    one = methods.get("task_arithmetic")(models[:1], base=base, lam=1.0).model
    _close(one, ps[0])


# ---------------------------------------------------------------- TIES
def _ties_reference(p0, ps, density, lam):
    """TIES written out entry by entry in float64 (no torch)."""
    out = {}
    for name, theta0 in p0.items():
        taus = [(p[name] - theta0).ravel() for p in ps]
        n = theta0.size
        keep = math.ceil(Fraction(density).limit_denominator(1000) * n)
        trimmed = []
        for tau in taus:
            order = sorted(range(n), key=lambda i, t=tau: -abs(t[i]))
            kept = np.zeros(n)
            for i in order[:keep]:
                kept[i] = tau[i]
            trimmed.append(kept)
        merged = np.zeros(n)
        for i in range(n):
            total = sum(t[i] for t in trimmed)
            sign = 1.0 if total >= 0 else -1.0
            agreeing = [t[i] for t in trimmed if t[i] != 0 and np.sign(t[i]) == sign]
            merged[i] = sum(agreeing) / len(agreeing) if agreeing else 0.0
        out[name] = theta0 + lam * merged.reshape(theta0.shape)
    return out


@pytest.mark.parametrize(("k", "density", "lam"), [(2, 0.2, 1.0), (3, 0.5, 0.8),
                                                   (4, 0.05, 1.2), (3, 1.0, 0.5)])
def test_ties_equals_an_entrywise_float64_reference(k, density, lam):
    base, models = _family(k, seed=10 + k)
    merged = methods.get("ties")(models, base=base, density=density, lam=lam).model
    _close(merged, _ties_reference(_params(base), [_params(m) for m in models], density, lam))
    assert float(merged.reference[0]) == pytest.approx(sum(range(1, k + 1)) / k)


@pytest.mark.parametrize(("k", "density", "lam"), [(2, 0.1, 1.0), (3, 0.2, 0.7), (4, 0.3, 1.0),
                                                   (5, 0.5, 1.2), (2, 0.05, 1.0)])
def test_ties_equals_peft(k, density, lam):
    from peft.utils.merge_utils import ties as peft_ties

    from gffmerge.methods.ties import elect_and_merge, trim

    gen = torch.Generator().manual_seed(50 + k)
    tau = torch.randn(k, 10, 10, generator=gen, dtype=torch.float64)  # d·n is whole here
    expected = peft_ties(list(tau), torch.full((k,), lam, dtype=torch.float64), density)
    torch.testing.assert_close(lam * elect_and_merge(trim(tau, density)), expected,
                               rtol=1e-15, atol=1e-15)


def test_ties_trims_per_tensor_and_elects_by_mass():
    base = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        base.weight.zero_()
    a, b, c = (copy.deepcopy(base) for _ in range(3))
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[3.0, -1.0, 0.5, 0.0, 2.0]]))
        b.weight.copy_(torch.tensor([[-1.0, -2.0, 0.4, 0.0, -0.1]]))
        c.weight.copy_(torch.tensor([[-1.0, 1.0, 0.3, 0.0, 0.2]]))
    # density 1 keeps all: entry 0 has mass +1 (one 3 against two -1) -> mean of {3} = 3;
    # entry 1 mass -2 -> mean{-1,-2}; entry 2 all agree; entry 3 nobody -> 0
    full = methods.get("ties")([a, b, c], base=base, density=1.0, lam=1.0).model
    np.testing.assert_allclose(full.weight.detach().numpy(),
                               [[3.0, -1.5, 0.4, 0.0, 1.1]], atol=1e-15)
    # density 0.4 keeps ceil(2) entries per source: a {3, 2}, b {-1(idx0)?, -2}, c {-1, 1}
    trimmed = methods.get("ties")([a, b, c], base=base, density=0.4, lam=2.0).model
    np.testing.assert_allclose(trimmed.weight.detach().numpy(),
                               2 * np.array([[3.0, -2.0, 0.0, 0.0, 2.0]]), atol=1e-15)


# ---------------------------------------------------------------- EMR
def test_emr_recovers_each_task_vector_where_signs_agree():
    base, (a,) = _family(1, seed=20, scale=0.2)
    p0, pa = _params(base), _params(a)
    tau = {n: pa[n] - p0[n] for n in p0}
    # three sources whose task vectors agree in sign everywhere: τ, 2τ, 0.5τ
    models = []
    for c in (1.0, 2.0, 0.5):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(torch.from_numpy(p0[n] + c * tau[n]))
        models.append(m)
    result = methods.get("emr")(models, base=base)
    # unified = the largest agreeing vector (2τ); each task model is its own source again
    _close(result.model, {n: p0[n] + 2.0 * tau[n] for n in p0})
    assert result.rescalers == pytest.approx([0.5, 1.0, 0.25], rel=1e-12)
    for k, m in enumerate(models):
        _close(result.task_model(k), _params(m), tol=1e-12)
    with pytest.raises(IndexError, match="out of range"):
        result.task_model(3)


def test_emr_unified_masks_and_rescalers_on_random_task_vectors():
    base, models = _family(3, seed=21)
    p0, ps = _params(base), [_params(m) for m in models]
    result = gffmerge.merge(models, method="emr", base=base)
    expected, recon = {}, [{} for _ in ps]
    for n, t0 in p0.items():
        taus = np.stack([p[n] - t0 for p in ps])
        sign = np.where(taus.sum(0) >= 0, 1.0, -1.0)
        agree = taus * sign > 0
        expected[n] = t0 + sign * np.where(agree, np.abs(taus), 0).max(0)
        for k in range(len(ps)):
            recon[k][n] = agree[k] * (expected[n] - t0)
    _close(result.model, expected)
    for k, p in enumerate(ps):
        mass = sum(np.abs(p[n] - p0[n]).sum() for n in p0)
        kept = sum(np.abs(recon[k][n]).sum() for n in p0)
        assert result.rescalers[k] == pytest.approx(mass / kept, rel=1e-12)
        _close(result.task_model(k), {n: p0[n] + mass / kept * recon[k][n] for n in p0})
    assert "result.task_model(k)" in result.report.to_markdown()
    assert result.report.to_dict()["rescalers"] == result.rescalers
    # the sign of the summed signs instead (the GFFMerge authors' code)
    count = methods.get("emr")(models, base=base, election="count").model
    sign = np.sign(sum(np.sign(p["out.bias"] - p0["out.bias"]) for p in ps))
    assert np.all(np.sign(count.out.bias.detach().numpy() - p0["out.bias"]) * sign >= 0)


# ---------------------------------------------------------------- Fisher
def _fishers(models, fn):
    return [{n: fn(k, n, p) for n, p in m.named_parameters()} for k, m in enumerate(models)]


@pytest.mark.parametrize("floor", [0.0, 1e-6, 10.0])
def test_fisher_with_equal_fishers_is_the_average(floor):
    _, models = _family(3, seed=30)
    gen = torch.Generator().manual_seed(0)
    shared = {n: torch.rand(p.shape, generator=gen, dtype=torch.float64)
              for n, p in models[0].named_parameters()}
    # proportional Fishers are equal after the per-model normalisation
    grads = _fishers(models, lambda k, n, p: (k + 1.0) * shared[n])
    merged = methods.get("fisher")(models, gradients=grads, floor=floor).model
    _close(merged, _params(gffmerge.merge(models, method="average").model))


def test_fisher_weights_entries_by_information_and_falls_back_to_the_mean():
    _, (a, b) = _family(2, seed=31)
    pa, pb = _params(a), _params(b)
    # a is informed on the first half of out.weight, b on the rest; nobody on out.bias
    def fisher(k, name, p):
        f = torch.zeros(p.shape, dtype=torch.float64)
        if name == "out.weight":
            half = p.shape[1] // 2
            f[:, :half] = 1.0 if k == 0 else 0.0
            f[:, half:] = 0.0 if k == 0 else 1.0
        elif name != "out.bias":
            f += 1.0
        return f
    result = methods.get("fisher")([a, b], gradients=_fishers([a, b], fisher), floor=0.0)
    w = result.model.out.weight.detach().numpy()
    half = w.shape[1] // 2
    np.testing.assert_allclose(w[:, :half], pa["out.weight"][:, :half], atol=1e-15)
    np.testing.assert_allclose(w[:, half:], pb["out.weight"][:, half:], atol=1e-15)
    np.testing.assert_allclose(result.model.out.bias.detach().numpy(),
                               (pa["out.bias"] + pb["out.bias"]) / 2, atol=1e-15)
    assert result.report.fallback == {"out.bias": 3}
    total = sum(p.numel() for p in a.parameters())
    assert result.report.fallback_fraction == pytest.approx(3 / total)
    assert "out.bias (3)" in result.report.to_markdown()
    # a floor pulls toward the mean: huge floor = the average
    huge = methods.get("fisher")([a, b], gradients=_fishers([a, b], fisher), floor=1e9)
    _close(huge.model, {n: (pa[n] + pb[n]) / 2 for n in pa}, tol=1e-8)


def test_fisher_refuses_bad_gradients():
    _, models = _family(2, seed=32)
    spec = methods.get("fisher")
    with pytest.raises(ValueError, match="needs gradients: pass gradients="):
        spec(models)
    with pytest.raises(ValueError, match="one Fisher per model"):
        spec(models, gradients=[{}])
    bad = _fishers(models, lambda k, n, p: -torch.ones(p.shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=">= 0"):
        spec(models, gradients=bad)
    with pytest.raises(ValueError, match="floor must be"):
        spec.options(floor=-1.0)


def test_diagonal_fisher_sums_squared_per_sample_gradients():
    torch.manual_seed(33)
    layer = nn.Linear(4, 3, bias=False).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    got = diagonal_fisher(layer, [x[:6], x[6:]],
                          loss=lambda m, b: m(b).square().sum(1))["weight"]
    w = layer.weight.detach()
    # ∂|W x|²/∂W = 2 (W x) xᵀ for each sample
    expected = sum((2 * torch.outer(w @ xi, xi)).square() for xi in x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    limited = diagonal_fisher(layer, [x[:6], x[6:]], limit=5,
                              loss=lambda m, b: m(b).square().sum(1))["weight"]
    torch.testing.assert_close(limited, sum((2 * torch.outer(w @ xi, xi)).square()
                                            for xi in x[:6]), rtol=1e-12, atol=0)


TINY_GNS = dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0)


@pytest.fixture(scope="module")
def rmd17():
    from gffmerge.data import load_dataset

    return load_dataset(["rmd17/ethanol"], max_frames=20)


def test_force_field_fisher_is_per_frame_and_leaves_the_model(rmd17):
    torch.manual_seed(34)
    model = build_model("gns", **TINY_GNS).double().eval()
    before = copy.deepcopy(model.state_dict())
    batch = rmd17.collate([0, 1, 2], 4.0).to(dtype=torch.float64)
    got = diagonal_fisher(model, [batch])
    # independently: one single-frame batch at a time, backward on the training loss
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    work = copy.deepcopy(model).train()
    for i in range(3):
        work.zero_grad()
        force_field_loss(work, rmd17.collate([i], 4.0).to(dtype=torch.float64)).sum().backward()
        for n, p in work.named_parameters():
            if p.grad is not None:
                ref[n] += p.grad.square()
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-300, msg=n)
    assert sum(float(f.sum()) for f in got.values()) > 0
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    unlabelled = rmd17.collate([0], 4.0)
    unlabelled.energy = None
    with pytest.raises(ValueError, match="needs labelled data"):
        diagonal_fisher(model, [unlabelled])


def test_merge_computes_fishers_from_labelled_data(rmd17):
    torch.manual_seed(35)
    base = build_model("gns", **TINY_GNS)
    models = fine_tunes(base, 2, scale=0.05, seed=3)
    loaders = [rmd17.split("train").batches_for(m, 4) for m in models]
    result = gffmerge.merge(models, loaders, method="fisher", limit=6, progress=False)
    assert result.report.method == "fisher" and result.report.times["measure"] > 0
    # a weighted mean: every entry lies between the sources'
    lo = {n: torch.minimum(*(dict(m.named_parameters())[n] for m in models))
          for n, _ in base.named_parameters()}
    hi = {n: torch.maximum(*(dict(m.named_parameters())[n] for m in models))
          for n, _ in base.named_parameters()}
    for n, p in result.model.named_parameters():
        assert (p >= lo[n] - 1e-6).all() and (p <= hi[n] + 1e-6).all(), n
    with pytest.raises(ValueError, match="one data iterable per model"):
        gffmerge.merge(models, method="fisher")


# ---------------------------------------------------------------- the base
def test_methods_need_the_base_and_its_architecture():
    base, models = _family(2, seed=40)
    for name in ("task_arithmetic", "ties", "emr"):
        assert methods.get(name).needs_for().base_model
        with pytest.raises(ValueError, match=r"needs the pre-trained model .* pass base="):
            gffmerge.merge(models, method=name)
        with pytest.raises(ValueError, match="needs base_model: pass base="):
            methods.get(name)(models)
        with pytest.raises(ArchitectureMismatchError) as err:
            methods.get(name)(models, base=TinyMLP(hidden=8).double())
        assert "\n" not in str(err.value)
        assert ("first difference: 'inp.bias' is [8] float64 in the base, [16] float64 in "
                "the sources); pass the foundation") in str(err.value)
        with pytest.raises(ArchitectureMismatchError, match="'reference' is only in the "
                                                            "sources"):
            methods.get(name)(models, base=TinyMLP().double())
        with pytest.raises(ArchitectureMismatchError, match="float32 in the base"):
            methods.get(name)(models, base=WithBuffer())


def _ckpts(tmp_path):
    """Two foundations of one architecture and two fine-tunes of the first, as files."""
    torch.manual_seed(41)
    found_a, found_b = build_model("gns", **TINY_GNS), build_model("gns", **TINY_GNS)
    (tmp_path / "repo" / "ckpt").mkdir(parents=True)
    fa = save_checkpoint(tmp_path / "repo" / "ckpt" / "found_a.pt", found_a, {"role": "f"})
    fb = save_checkpoint(tmp_path / "found_b.pt", found_b, {"role": "f"})
    sources = []
    for k, m in enumerate(fine_tunes(found_a, 2, scale=0.05, seed=4)):
        # recorded relative to the repository root, as `make checkpoints` does
        sources.append(save_checkpoint(tmp_path / "repo" / "ckpt" / f"ft{k}.pt", m,
                                       {"role": "finetune", "init": "ckpt/found_a.pt"}))
    return fa, fb, sources


def test_sources_must_share_the_base_from_their_metadata(tmp_path):
    fa, fb, sources = _ckpts(tmp_path)
    metas = [{"init": "ckpt/found_a.pt"}] * 2
    check_shared_base(fa, list(zip(sources, metas)))
    copy_a = tmp_path / "copy_of_a.pt"
    copy_a.write_bytes(fa.read_bytes())
    check_shared_base(copy_a, list(zip(sources, metas)))  # a byte-identical copy is fine
    check_shared_base(fb, [(sources[0], {"role": "merged"})])  # nothing recorded
    with pytest.raises(BaseMismatchError, match="was fine-tuned from .*found_a.pt, not from "
                                                ".*found_b.pt: pass --base"):
        check_shared_base(fb, list(zip(sources, metas)))
    lost = [(sources[0], {"init": "elsewhere/other.pt"})]
    with pytest.raises(BaseMismatchError, match=r"other.pt \(not found here\)"):
        check_shared_base(fb, lost)
    check_shared_base(tmp_path / "other.pt", lost)  # same name, file not found: trusted


def test_cli_merge_with_base_and_mismatch_errors(tmp_path, capsys):
    fa, fb, sources = _ckpts(tmp_path)
    out = tmp_path / "merged.pt"
    argv = ["merge", "--model", *map(str, sources), "--method", "ties", "-O", "density=0.3",
            "-o", str(out), "--quiet"]
    assert main([*argv, "--base", str(fa)]) == 0
    merged, meta = gffmerge.checkpoint.load_checkpoint(out)
    assert meta["method"] == "ties" and meta["base"] == str(fa)
    assert meta["options"] == {"density": 0.3, "lam": 1.0}
    capsys.readouterr()
    assert main([*argv, "--base", str(fb)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not from" in err and "found_b.pt" in err
    # without --base: the foundation the sources record (found here), said on stderr
    assert main([*argv[:-1]]) == 0
    err = capsys.readouterr().err
    assert "note: using --base" in err and "found_a.pt" in err and "--no-base" in err
    meta = gffmerge.checkpoint.load_checkpoint(out)[1]
    assert meta["base_from"] == "metadata" and Path(meta["base"]).name == "found_a.pt"
    with_base = gffmerge.checkpoint.load_checkpoint(out)[0].state_dict()
    assert main([*argv, "--base", str(fa)]) == 0
    given = gffmerge.checkpoint.load_checkpoint(out)[0].state_dict()
    assert all(torch.equal(v, given[k]) for k, v in with_base.items())
    assert gffmerge.checkpoint.load_checkpoint(out)[1]["base_from"] == "--base"
    capsys.readouterr()
    kept = out.read_bytes()
    assert main([*argv, "--no-base"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs --base CKPT" in err
    assert main([*argv, "--no-base", "--base", str(fa)]) == 2
    assert "contradict" in capsys.readouterr().err
    assert out.read_bytes() == kept
    # a recorded foundation that is not here: named in the error
    lost = tmp_path / "lost"
    lost.mkdir()
    moved = []
    for k, src in enumerate(sources):
        m, meta = gffmerge.checkpoint.load_checkpoint(src)
        moved.append(str(gffmerge.checkpoint.save_checkpoint(
            lost / f"ft{k}.pt", m, {**meta, "init": "gone/found_x.pt"})))
    assert main(["merge", "--model", *moved, "--method", "ties", "-o",
                 str(tmp_path / "x.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs --base CKPT" in err and "gone/found_x.pt, not found here" in err
    # the default uses a base only optionally: it merges without one, and says why
    from gffmerge.cli.merging import _base_model, _note_base

    needs = gffmerge.methods.get("progressive").needs_for()
    metas = [gffmerge.checkpoint.load_checkpoint(m)[1] for m in moved]
    got = _base_model("progressive", needs, None, moved, metas)
    assert got == (None, None, "not found: gone/found_x.pt")
    _note_base(argparse.Namespace(quiet=False, json=False, command="merge"), *got[1:])
    assert "no one foundation of all of them is found here" in capsys.readouterr().err
    # a recorded foundation of another architecture: said, with both ways out
    wide = save_checkpoint(lost / "wide.pt", build_model("gns", **{**TINY_GNS, "latent_dim": 24}),
                           {"role": "f"})
    for k in range(2):
        m, meta = gffmerge.checkpoint.load_checkpoint(moved[k])
        gffmerge.checkpoint.save_checkpoint(moved[k], m, {**meta, "init": str(wide)})
    assert main(["merge", "--model", *moved, "--method", "ties", "-o",
                 str(tmp_path / "x.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not have their architecture" in err and "--no-base" in err
    # solve takes --base too; fisher needs data, so solve refuses it in one line
    solved = tmp_path / "solved.pt"
    assert main(["solve", "--model", *map(str, sources), "--method", "task_arithmetic",
                 "--base", str(fa), "-O", "lam=0.5", "-o", str(solved), "--quiet"]) == 0
    avg = gffmerge.merge([gffmerge.checkpoint.load_checkpoint(s)[0] for s in sources],
                         method="average").model
    solved_model = gffmerge.checkpoint.load_checkpoint(solved)[0]
    for (n, p), q in zip(solved_model.named_parameters(), avg.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)
    capsys.readouterr()
    assert main(["solve", "--model", *map(str, sources), "--method", "fisher",
                 "-o", str(solved), "--quiet"]) == 2
    assert "use gffmerge merge --data" in capsys.readouterr().err
    # a --base the method would not use is an error, not silently ignored
    kept = out.read_bytes()
    assert main(["merge", "--model", *map(str, sources), "--method", "average", "--base",
                 str(fa), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not use a base model" in err
    assert out.read_bytes() == kept
    # the default uses a base when given (checked like any other), none when not
    from gffmerge.cli.common import CliError
    from gffmerge.cli.merging import _base_model

    needs = gffmerge.methods.get("progressive").needs_for()
    metas = [{"init": "ckpt/found_a.pt"}] * 2
    assert _base_model("progressive", needs, None, sources, [{}, {}]) == (None, None, None)
    got, path, origin = _base_model("progressive", needs, str(fa), sources, metas)
    want = gffmerge.checkpoint.load_checkpoint(fa)[0].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in got.state_dict().items())
    assert (path, origin) == (str(fa), "--base")
    _, path, origin = _base_model("progressive", needs, None, sources, metas)
    assert Path(path).samefile(fa) and origin == "metadata"
    with pytest.raises((CliError, BaseMismatchError), match="not from"):
        _base_model("progressive", needs, str(fb), sources, metas)


def test_recorded_base_only_when_every_source_agrees(tmp_path):
    from gffmerge.lineage import recorded_base

    fa, fb, sources = _ckpts(tmp_path)
    a = {"init": "ckpt/found_a.pt"}
    assert recorded_base(list(zip(sources, [a, a]))).samefile(fa)
    copy_a = tmp_path / "repo" / "ckpt" / "copy_a.pt"
    copy_a.write_bytes(fa.read_bytes())
    assert recorded_base(list(zip(sources, [a, {"init": str(copy_a)}]))).samefile(fa)
    assert recorded_base(list(zip(sources, [a, {"init": str(fb)}]))) is None  # disagree
    assert recorded_base(list(zip(sources, [a, {}]))) is None  # one records nothing
    assert recorded_base(list(zip(sources, [a, {"init": "nowhere/x.pt"}]))) is None
    assert recorded_base([]) is None


# ---------------------------------------------------------------- grids
def test_grid_search_keeps_the_lowest_score():
    from gffmerge.methods.grid import PAPER_GRIDS, grid_search

    base, models = _family(2, seed=60)
    avg = _params(gffmerge.merge(models, method="average").model)

    def distance_to_average(model):
        return sum(float(np.abs(p - avg[n]).max()) for n, p in _params(model).items())

    found = grid_search("task_arithmetic", models, distance_to_average, base=base,
                        grid={"lam": (0.2, 0.5, 1.0)})
    assert found.best == {"lam": 0.5} and found.score < 1e-12
    assert [point for point, _ in found.table] == [{"lam": 0.2}, {"lam": 0.5}, {"lam": 1.0}]
    _close(found.result.model, avg)
    # the paper's TIES grid: 5 × 5 points, fixed options kept, NaN scores never win
    calls = []

    def score(model):
        calls.append(1)
        return math.nan if len(calls) == 1 else float(len(calls))

    ties = grid_search("ties", models, score, base=base)
    assert len(ties.table) == 25 and ties.best == {"density": 0.05, "lam": 0.5}
    assert set(PAPER_GRIDS) == {"ties", "task_arithmetic", "fisher"}
    with pytest.raises(ValueError, match="no default grid for method 'emr'"):
        grid_search("emr", models, score, base=base)
    with pytest.raises(TypeError, match="has no option"):
        grid_search("ties", models, score, base=base, grid={"d": (0.1,)})


def test_validation_score_is_the_combined_force_mae(rmd17):
    from gffmerge.evaluate import evaluate
    from gffmerge.methods.grid import validation_score

    torch.manual_seed(61)
    model = build_model("gns", **TINY_GNS)
    val = rmd17.split("val")
    assert validation_score(val)(model) == evaluate(model, val, progress=False)["all"][
        "force_mae_mev_per_a"]
