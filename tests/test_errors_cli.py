"""Nothing lost, nothing silent (issue 11): every bad input or fault through the command line
is one line naming the thing and the fix (exit 2), a bug is "internal error" (exit 1), and no
existing file changes when a command fails."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import gffmerge
from gffmerge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gffmerge.cli import main
from gffmerge.models import SchNet

TINY = {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "n_rbf": 6, "cutoff": 4.0}


def _molecules(path: Path, n: int, z: list[int], *, seed: int, forces: bool = True) -> str:
    rng = np.random.default_rng(seed)
    pos = rng.normal(scale=1.2, size=(n, len(z), 3))
    data = {"z": np.array(z), "pos": pos, "energy": rng.normal(size=n) - 10.0 * len(z)}
    if forces:
        data["forces"] = rng.normal(scale=0.1, size=(n, len(z), 3))
    np.savez(path, **data)
    return str(path)


def _tuned(seed: int, **config) -> SchNet:
    torch.manual_seed(0)
    model = SchNet(**{**TINY, **config})
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_energy_normalisation(shift=-10.0)
    return model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two tiny fine-tunes, their data, their measured stats (read-only for the tests)."""
    root = tmp_path_factory.mktemp("errors11")
    e = {"root": root}
    for name, seed in (("a", 1), ("b", 2)):
        e[f"{name}.pt"] = str(save_checkpoint(root / f"{name}.pt", _tuned(seed),
                                              {"role": "finetune"}))
        e[f"{name}.npz"] = _molecules(root / f"{name}.npz", 24, [8, 1, 1, 6, 1], seed=seed)
    e["noforces.npz"] = _molecules(root / "noforces.npz", 24, [8, 1, 1], seed=3, forces=False)
    e["sulfur.npz"] = _molecules(root / "sulfur.npz", 24, [16, 1, 1], seed=4)
    e["small.pt"] = str(save_checkpoint(root / "small.pt", _tuned(5, max_z=10)))
    for name in ("a", "b"):
        out = root / f"{name}.safetensors"
        assert main(["measure", "-q", "--model", e[f"{name}.pt"], "--data", e[f"{name}.npz"],
                     "--split", "all", "-o", str(out)]) == 0
        e[f"{name}.st"] = str(out)
    return e


def _snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@pytest.fixture
def work(tmp_path, env):
    """A folder with an existing checkpoint and report that failed commands must not touch."""
    (tmp_path / "existing.pt").write_bytes(Path(env["a.pt"]).read_bytes())
    (tmp_path / "existing.md").write_text("an earlier report\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path


def _fails(argv, capsys, folders, *, code=2, message="", json_out=False):
    """Run ``argv``; assert the exit code, a one-line message and that no file changed."""
    before = _snapshot(*folders)
    assert main([str(a) for a in argv]) == code
    out, err = capsys.readouterr()
    assert _snapshot(*folders) == before, "a failed command changed or created files"
    if json_out:
        payload = json.loads(out)
        assert set(payload) >= {"error", "kind"} and message in payload["error"], payload
        return payload
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def _solve(env, *extra):
    return ["solve", "-q", "--model", env["a.pt"], env["b.pt"], "--stats", env["a.st"],
            env["b.st"], *extra]


# ---------------------------------------------------------------- output paths
@pytest.mark.parametrize(("target", "message"), [
    ("adir", "is a directory"),
    ("afile/x.pt", "is a file, not a folder"),
    ("nodir/x.pt", "does not exist; create it first"),
])
def test_bad_output_path_is_refused_before_any_work(env, work, capsys, target, message):
    _fails(_solve(env, "-o", work / target), capsys, [work, env["root"]], message=message)


def test_unwritable_location_is_refused(env, work, capsys):
    # /proc takes no new files, even for root; a read-only folder when not root.
    target = Path("/proc/merged.pt")
    import os
    if os.geteuid() != 0:
        ro = work / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "merged.pt"
    line = _fails(_solve(env, "-o", target), capsys, [work, env["root"]])
    assert str(target) in line and ("not writable" in line or "cannot create" in line)


def test_measure_output_directory_refused_before_measuring(env, work, capsys, monkeypatch):
    import gffmerge.collect as collect

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before checking the output path")
    monkeypatch.setattr(collect, "measure", no_measuring)
    _fails(["measure", "--model", env["a.pt"], "--data", env["a.npz"], "-o", work / "adir"],
           capsys, [work, env["root"]], message="is a directory")


def test_failed_report_leaves_existing_checkpoint(env, work, capsys):
    # the case: the report cannot be written, the checkpoint must not be replaced
    _fails(_solve(env, "-o", work / "existing.pt", "--report", work / "nodir" / "r.md"),
           capsys, [work], message="nodir")


def test_failure_after_the_checkpoint_is_staged_keeps_everything(env, work, capsys,
                                                                 monkeypatch):
    from gffmerge.report import MergeReport

    def broken(self):
        raise RuntimeError("report rendering broke")
    monkeypatch.setattr(MergeReport, "to_markdown", broken)
    line = _fails(_solve(env, "-o", work / "existing.pt", "--report", work / "existing.md"),
                  capsys, [work], code=1, message="internal error, please report")
    assert "report rendering broke" in line and "--debug" in line
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_same_file_for_output_and_report(env, work, capsys):
    _fails(_solve(env, "-o", work / "x.pt", "--report", work / "x.pt"), capsys, [work],
           message="same file")


@pytest.mark.parametrize("target", ["model", "stats"])
def test_output_over_an_input_is_refused(env, work, capsys, target):
    (work / "a.pt").write_bytes(Path(env["a.pt"]).read_bytes())
    (work / "a.st").write_bytes(Path(env["a.st"]).read_bytes())
    out = work / ("a.pt" if target == "model" else "a.st")
    _fails(["solve", "--model", work / "a.pt", env["b.pt"], "--stats", work / "a.st",
            env["b.st"], "-o", out], capsys, [work], message=f"overwrite the input {target}")


def test_interrupted_training_keeps_its_best_model(tmp_path):
    from gffmerge.atomic import all_or_nothing, write_text_atomically

    with pytest.raises(KeyboardInterrupt), all_or_nothing(keep_on_interrupt=True):
        write_text_atomically(tmp_path / "best.txt", "best so far")
        raise KeyboardInterrupt
    assert (tmp_path / "best.txt").read_text() == "best so far"


def test_help_and_usage_errors_return_codes(capsys):
    assert main(["--help"]) == 0
    assert main(["solve"]) == 2
    assert "required" in capsys.readouterr().err


def test_version_names_the_package_torch_and_the_extension_build(capsys):
    import gffmerge_ext
    from gffmerge.provenance import versions_text

    assert main(["--version"]) == 0
    head, built = capsys.readouterr().out.strip().splitlines()
    info = gffmerge_ext.build_info()
    assert head.startswith(f"gffmerge {gffmerge.__version__} (commit ")
    assert f"torch {torch.__version__}" in head
    assert info["compiler"] in built and info["block_products"] in built
    assert main(["--json", "--version"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["gffmerge"] == gffmerge.__version__ and v["extension"] == info
    # an extension that does not load is named with its reason, not hidden
    text = versions_text({**v, "extension": {"error": "undefined symbol: foo"}})
    assert text.splitlines()[1] == "extension not loadable: undefined symbol: foo"


def test_interrupted_measure_writes_nothing(env, work, capsys, monkeypatch):
    import gffmerge.collect as collect

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(collect, "measure", interrupted)
    _fails(["measure", "--model", env["a.pt"], "--data", env["a.npz"], "-o",
            work / "s.safetensors"], capsys, [work], code=130, message="interrupted")


# ---------------------------------------------------------------- numerics and options
@pytest.mark.parametrize(("options", "message"), [
    (["-O", "ridge=inf"], "ridge must be finite"),
    (["-O", "ridge=nan"], "ridge must be finite"),
    (["-O", "ridge=-1"], "ridge must be finite and >= 0"),
    (["-O", "ridge=1e308"], "flattens layer(s)"),
    (["-O", "alpha=nan"], "alpha must lie in [0, 1]"),
    (["-O", "ridge=abc"], "expects a float"),
    (["-O", "rigde=1"], "did you mean 'ridge'"),
    (["-O", "weighting=pool"], "weighting='pool' is not valid"),
    (["-O", "ridge"], "KEY=VALUE"),
])
def test_bad_solve_options(env, work, capsys, options, message):
    _fails(_solve(env, *options, "-o", work / "existing.pt"), capsys, [work, env["root"]],
           message=message)


def _stats_variant(env, work, edit, name="bad.safetensors"):
    with safe_open(env["a.st"], "pt") as f:
        meta = f.metadata()
    tensors = dict(load_file(env["a.st"]))
    meta = edit(tensors, meta) or meta
    save_file(tensors, str(work / name), metadata=meta)
    return work / name


def _first_gram(tensors):
    return next(k for k in tensors if k.endswith("/gram"))


def _nan(t, m):
    k = _first_gram(t)
    t[k] = t[k].clone()
    t[k][0, 0] = float("nan")


def _shape(t, m):
    k = _first_gram(t)
    t[k] = t[k][:-1, :-1].contiguous()


def _asym(t, m):
    k = _first_gram(t)
    t[k] = t[k].clone()
    t[k][0, 1] += 1.0 + t[k].abs().max()


def _rows(t, m):
    meta = json.loads(m["gffmerge"])
    rows = meta["models"][0]["rows"]
    rows[next(iter(rows))] += 3
    return {"gffmerge": json.dumps(meta)}


def _stray(t, m):
    t["0/ghost/gram"] = torch.eye(2, dtype=torch.float64)


def _json(t, m):
    return {"gffmerge": m["gffmerge"][:-7]}


def _cross_shape(t, m):
    k = _first_gram(t)
    t[k.replace("/gram", "/cross")] = torch.zeros(3, 2, dtype=torch.float64)


@pytest.mark.parametrize(("edit", "message"), [
    (_nan, "holds NaN/Inf"),
    (_shape, "expected"),
    (_asym, "is not symmetric"),
    (_rows, "but the metadata says"),
    (_stray, "does not describe"),
    (_json, "corrupt gffmerge metadata"),
    (_cross_shape, "cross sums"),
])
def test_bad_stats_files(env, work, capsys, edit, message):
    bad = _stats_variant(env, work, edit)
    line = _fails(["solve", "--model", env["a.pt"], env["b.pt"], "--stats", bad, env["b.st"],
                   "-O", "condition=false", "-o", work / "existing.pt"], capsys,
                  [work, env["root"]], message=message)
    assert "re-measure" in line and str(bad) in line


def test_junk_stats_file(env, work, capsys):
    (work / "junk.safetensors").write_bytes(b"\x00" * 20)
    _fails(["solve", "--model", env["a.pt"], env["b.pt"], "--stats", work / "junk.safetensors",
            env["b.st"], "-o", work / "m.pt"], capsys, [work],
           message="not a readable safetensors")


def test_usage_errors_under_json_are_json(work, capsys):
    payload = _fails(["--json", "solve", "--model", "x.pt"], capsys, [work],
                     message="required", json_out=True)
    assert payload["kind"] == "UsageError" and payload["exit_code"] == 2


# ---------------------------------------------------------------- checkpoints
def _payload(env):
    return torch.load(env["a.pt"], weights_only=True)


def _ckpt_huge(env, path):
    p = _payload(env)
    p["config"] = {**p["config"], "n_atom_basis": 60000, "n_filters": 60000}
    torch.save(p, path)


def _ckpt_pickle(env, path):
    torch.save({"format": "gffmerge-checkpoint", "obj": Path("x")}, path)


def _ckpt_nan(env, path):
    p = _payload(env)
    key = next(k for k in p["state_dict"] if k.endswith("weight"))
    p["state_dict"][key] = p["state_dict"][key].clone().fill_(float("nan"))
    torch.save(p, path)


def _ckpt_shapes(env, path):
    p = _payload(env)
    key = next(k for k in p["state_dict"] if k.endswith("weight"))
    p["state_dict"][key] = torch.zeros(1, 1)
    torch.save(p, path)


def _ckpt_config(env, path):
    p = _payload(env)
    p["config"] = {**p["config"], "n_interactions": 10**9}
    torch.save(p, path)


@pytest.mark.parametrize(("make", "message"), [
    (_ckpt_huge, "beyond the sane limit"),
    (_ckpt_pickle, "never loads pickled objects"),
    (_ckpt_nan, "hold NaN/Inf"),
    (_ckpt_shapes, "state dict does not match"),
    (_ckpt_config, "n_interactions=1000000000 is beyond the sane limit"),
])
def test_bad_checkpoints(env, work, capsys, make, message):
    make(env, work / "bad.pt")
    line = _fails(["solve", "--model", work / "bad.pt", "--method", "average", "-o",
                   work / "existing.pt"], capsys, [work], message=message)
    assert "weights_only" not in line


def test_checkpoint_path_is_a_directory(env, work, capsys):
    _fails(["solve", "--model", work / "adir", "--method", "average", "-o", work / "m.pt"],
           capsys, [work], message="is a directory")


def test_enormous_model_refused_fast_without_allocating(env, tmp_path):
    import resource

    _ckpt_huge(env, tmp_path / "huge.pt")
    assert (tmp_path / "huge.pt").stat().st_size < 1_000_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"parameters, beyond the sane limit"):
        load_checkpoint(tmp_path / "huge.pt")
    assert time.perf_counter() - t0 < 1.0
    # 2 × 60000² float32 weights alone would be ~29 GB; peak memory grew by < 100 MB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000


# ---------------------------------------------------------------- configs
def _config(work, env, text_or_cfg, name="m.yaml"):
    path = work / name
    path.write_text(text_or_cfg if isinstance(text_or_cfg, str) else yaml.safe_dump(text_or_cfg))
    return path


def _models_cfg(env):
    return [{"model": env["a.pt"], "data": env["a.npz"]},
            {"model": env["b.pt"], "data": env["b.npz"]}]


@pytest.mark.parametrize(("cfg", "message"), [
    ({"merge_metod": "average"}, "unknown key 'merge_metod' (did you mean 'merge_method'?)"),
    ({"paramters": {"ridge": 1.0}}, "unknown key 'paramters' (did you mean 'parameters'?)"),
    ({"limt": 4}, "unknown key 'limt' (did you mean 'limit'?)"),
    ({"limit": "four"}, "'limit' must be a whole number"),
    ({"parameters": {"rigde": 1.0}}, "did you mean 'ridge'"),
])
def test_merge_config_errors(env, work, capsys, cfg, message):
    path = _config(work, env, {"merge_method": "gffmerge", "models": _models_cfg(env), **cfg})
    _fails(["merge", "--config", path, "-o", work / "existing.pt"], capsys, [work],
           message=message)


def test_merge_config_model_entry_typo(env, work, capsys):
    path = _config(work, env, {"models": [{"modle": env["a.pt"], "data": env["a.npz"]}]})
    _fails(["merge", "--config", path, "-o", work / "m.pt"], capsys, [work],
           message="'model: CKPT'")
    path = _config(work, env, {"models": [{"model": env["a.pt"], "dta": env["a.npz"]}]})
    _fails(["merge", "--config", path, "-o", work / "m.pt"], capsys, [work],
           message="unknown key 'dta' (did you mean 'data'?)")


def test_merge_config_yaml_syntax_error(env, work, capsys):
    path = _config(work, env, "merge_method: gffmerge\nmodels: [\n  {model: a.pt\n")
    _fails(["merge", "--config", path, "-o", work / "m.pt"], capsys, [work],
           message="is not valid YAML")


def test_merge_config_paths_are_relative_to_the_file(env, work, capsys, monkeypatch):
    sub = work / "cfg"
    sub.mkdir()
    for name in ("a.pt", "b.pt", "a.npz", "b.npz"):
        (sub / name).write_bytes(Path(env[name]).read_bytes())
    cfg = {"merge_method": "gffmerge", "limit": 8, "output": "merged.pt",
           "models": [{"model": "a.pt", "data": "a.npz"}, {"model": "b.pt", "data": "b.npz"}]}
    path = _config(sub, env, cfg)
    monkeypatch.chdir(work / "adir")  # not the config's folder
    assert main(["merge", "-q", "--config", str(path)]) == 0
    assert (sub / "merged.pt").is_file() and not (work / "adir" / "merged.pt").exists()
    cfg["models"][1]["model"] = "missing.pt"
    path = _config(sub, env, cfg)
    _fails(["merge", "--config", path], capsys, [work],
           message=f"checkpoint not found: {sub / 'missing.pt'}")


# ---------------------------------------------------------------- data and training
def test_element_without_embedding(env, work, capsys):
    line = _fails(["measure", "--model", env["small.pt"], "--data", env["sulfur.npz"], "-o",
                   work / "s.safetensors"], capsys, [work], message="element Z = 16")
    assert "Z = 0..10" in line or "trained on" in line


def test_train_on_data_without_forces(env, work, capsys):
    _fails(["train", "-q", "--role", "finetune", "--init", env["a.pt"], "--systems",
            env["noforces.npz"], "--epochs", "1", "-o", work / "existing.pt"], capsys, [work],
           message="have no forces")


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "gnss"], "unknown model 'gnss' (did you mean 'gns'?)"),
    (["--model", "schnet", "-M", "n_atom_basiss=4"], "did you mean 'n_atom_basis'"),
    (["--model", "schnet", "-M", "n_atom_basis"], "KEY=VALUE"),
    (["--schedule", "plateau", "--min-delta", "1.5"], "min_delta is relative"),
    (["--schedule", "plateau", "--lr-patience", "0"], "lr_patience must be >= 1"),
])
def test_train_model_options(env, work, capsys, argv, message):
    _fails(["train", "--systems", env["a.npz"], *argv, "-o", work / "t.pt"], capsys, [work],
           message=message)


def test_train_config_file_errors(env, work, capsys):
    path = _config(work, env, {"systems": [env["a.npz"]], "epochz": 2}, "t.yaml")
    _fails(["train", "--config", path, "-o", work / "t.pt"], capsys, [work],
           message="unknown key 'epochz' (did you mean 'epochs'?)")
    path = _config(work, env, "systems: [a\nepochs: 2\n", "t.yaml")
    _fails(["train", "--config", path, "-o", work / "t.pt"], capsys, [work],
           message="is not valid YAML")
    _fails(["train", "--config", work / "none.yaml", "-o", work / "t.pt"], capsys, [work],
           message="does not exist")


def test_train_refuses_to_overwrite_its_init(env, work, capsys):
    _fails(["train", "--role", "finetune", "--init", work / "existing.pt", "--systems",
            env["a.npz"], "-o", work / "existing.pt"], capsys, [work],
           message="would overwrite the input init")


# ---------------------------------------------------------------- CLI conventions
@pytest.mark.parametrize("where", ["before", "after"])
def test_json_errors_are_json_wherever_the_flag_is(env, work, capsys, where):
    argv = _solve(env, "-O", "ridge=inf", "-o", work / "existing.pt")
    argv = ["--json", *argv] if where == "before" else [*argv, "--json"]
    payload = _fails(argv, capsys, [work], message="ridge must be finite", json_out=True)
    assert payload["kind"] == "CliError" and payload["exit_code"] == 2


def test_global_flags_before_the_subcommand(capsys):
    assert main(["--json", "methods"]) == 0
    assert "gffmerge" in [m["name"] for m in json.loads(capsys.readouterr().out)["methods"]]
    assert main(["-q", "methods"]) == 0
    assert capsys.readouterr().out == ""


def test_quiet_silences_warnings_which_stay_in_the_report(env, work, capsys):
    argv = ["solve", "--model", env["a.pt"], env["b.pt"], "--stats", env["a.st"], env["b.st"],
            "-O", "ridge_mode=relative", "-O", "ridge=1e4"]
    assert main([*argv, "-o", str(work / "m.pt")]) == 0
    err = capsys.readouterr().err
    assert "gffmerge solve: warning: layer" in err and "shrinks it to" in err
    for flags in (["-q"], ["--quiet"]):
        for at_front in (True, False):
            full = [*flags, *argv] if at_front else [*argv, *flags]
            assert main([*full, "-o", str(work / "q.pt"), "--report", str(work / "q.md")]) == 0
            out, err = capsys.readouterr()
            assert out == "" and err == "", (full, out, err)
            assert "shrinks it to" in (work / "q.md").read_text()


def test_internal_error_exit_1_traceback_only_with_debug(work, capsys, monkeypatch):
    import gffmerge.methods as methods

    def broken():
        raise KeyError("a bug")
    monkeypatch.setattr(methods, "available", broken)
    line = _fails(["methods"], capsys, [work], code=1, message="internal error, please report")
    assert "KeyError" in line and "--debug" in line
    assert main(["methods", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["--json", "methods"]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "InternalError"


def test_error_classification_at_the_boundary():
    from gffmerge.cli.common import classify

    assert classify(torch.linalg.LinAlgError("failed to converge"))[:2] == (2, "NumericalError")
    assert classify(yaml.YAMLError("bad"))[0] == 2
    code, _, msg = classify(PermissionError(13, "Permission denied", "/x/y.pt"))
    assert code == 2 and "'/x/y.pt'" in msg and "permissions" in msg
    assert classify(TypeError("unsupported operand"))[0] == 1
    assert classify(KeyboardInterrupt())[0] == 130


# ---------------------------------------------------------------- the library under the CLI
def test_all_or_nothing_keeps_existing_files(tmp_path):
    from gffmerge.atomic import all_or_nothing, write_text_atomically

    (tmp_path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), all_or_nothing():
        write_text_atomically(tmp_path / "old.txt", "new")
        write_text_atomically(tmp_path / "other.txt", "other")
        assert (tmp_path / "old.txt").read_text() == "old"  # not yet renamed
        raise RuntimeError("later failure")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]
    assert (tmp_path / "old.txt").read_text() == "old"
    with all_or_nothing():
        write_text_atomically(tmp_path / "old.txt", "new")
    assert (tmp_path / "old.txt").read_text() == "new"


def test_solve_api_refuses_nan_statistics_and_flattening(env):
    models = [load_checkpoint(env[f"{n}.pt"])[0] for n in "ab"]
    stats = gffmerge.Stats.concat(gffmerge.Stats.load(env[f"{n}.st"]) for n in "ab")
    from gffmerge.errors import DegenerateSolutionError

    gram = next(iter(stats.models[0].layers.values())).gram
    gram[0, 0] = float("nan")
    with pytest.raises(DegenerateSolutionError, match="NaN/Inf"):
        gffmerge.solve(models, stats, condition=False)
    with pytest.raises(DegenerateSolutionError, match="NaN/Inf"):
        gffmerge.methods.get("regmean")(models, stats, condition=False)
    stats = gffmerge.Stats.concat(gffmerge.Stats.load(env[f"{n}.st"]) for n in "ab")
    with pytest.raises(DegenerateSolutionError, match="flattens"):
        gffmerge.solve(models, stats, ridge=1e300)
    result = gffmerge.solve(models, stats, ridge=1e300, prior="mean")  # shrinks to the mean
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())
