"""The import graph of ``gffmerge``, read from the source with ``ast``: one direction, no cycles.

Every import counts: absolute and relative, at module level or inside a function (a
function-local import is still a dependency, only a later one), under ``TYPE_CHECKING`` too.
Importing a module implicitly runs its parent packages' ``__init__``; that is not counted,
but importing a name *from* a package (``from gffmerge import merge``) depends on the
package's ``__init__``.

The layers, lowest first. A module may import modules of its own layer and of lower
layers, never of a higher one; within a layer, the cycle check keeps the order honest.

====  =========  =====================================================================
rank  layer      modules (a package name covers everything under it)
====  =========  =====================================================================
0     base       ``errors``, ``atomic``, ``architecture``, ``provenance``: exceptions, atomic file
                 writes, the inventory and fingerprint of a model's linear layers; used
                 by every layer, import nothing of gffmerge but each other
1     data       ``data/``
2     models     ``models/``, and what builds, stores, runs or trains *one* model, with no
                 merging: ``checkpoint``, ``calculator`` (ASE), ``evaluate``, ``train`` and
                 ``plateau`` (its early-stopping rule), ``continuation`` (a second phase),
                 ``recipes``, ``lineage`` (which checkpoint a model was fine-tuned from),
                 ``checkpoint_info`` (what a checkpoint file is, from its record),
                 ``adapters`` (third-party foundation models wrapped as force fields)
3     stats      ``stats``: the sums-and-counts container and its file format
4     collect    ``collect/``: hooks, providers and the runner that fill a ``Stats``
5     solver     ``solver/``, ``report`` (the report and result types a solve returns)
6     methods    ``methods/``
7     pipeline   ``pipeline``; ``distributed`` (torchrun launch helpers over
                 ``collect``); ``testing`` (helpers for users' own adapters);
                 ``experiment`` (the runner of ``gffmerge experiment``)
8     api        ``gffmerge`` itself: the package ``__init__`` is the public API
9     cli        ``cli/``, ``__main__``, ``demo`` (the demo is a CLI subcommand)
====  =========  =====================================================================

``stats`` sits *below* ``collect`` although statistics flow out of collecting: the flow
data → models → collect → stats → solver → methods → pipeline → cli is the order in which
data moves, and ``Stats`` is the type the collector fills and returns
(``gffmerge.collect.measure(...) -> Stats``), so the producer imports it; nothing in
``stats`` knows how it was measured. Every other flow step imports only the steps before it.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "python"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "atomic", "architecture", "discover", "provenance")),
    ("data", ("data",)),
    ("models", ("models", "checkpoint", "checkpoint_info", "calculator", "evaluate",
                "plateau", "train", "continuation", "recipes", "repair", "lineage",
                "adapters")),
    ("stats", ("stats",)),
    ("collect", ("collect",)),
    ("solver", ("solver", "report")),
    ("methods", ("methods",)),
    ("pipeline", ("pipeline", "distributed", "testing", "experiment", "experiment_config",
                  "experiment_report", "gnn_experiment", "gnn_experiment_report",
                  "gnn_one_pass", "gnn_rows", "gnn_select", "gnn_tasks")),
    ("api", ("",)),
    ("cli", ("cli", "__main__", "demo")),
]


# ---------------------------------------------------------------- the graph
def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``root/package``."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            choices = [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            # `from pkg import name`: the submodule pkg.name if there is one, else pkg
            choices = [[f"{source}.{a.name}", source] for a in node.names]
        else:
            continue
        for options in choices:
            target = next((c for c in options if c in known), None)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = module_files(root, package)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_of(module: str, package: str = "gffmerge",
             layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> tuple[int, str] | None:
    """(rank, layer name) of the longest layer prefix naming ``module``, or None."""
    best = None
    for rank, (name, prefixes) in enumerate(layers):
        for p in prefixes:
            full = f"{package}.{p}" if p else package
            if module == full or (p and module.startswith(full + ".")):
                if best is None or len(full) > best[0]:
                    best = (len(full), rank, name)
    return None if best is None else best[1:]


def against_the_flow(graph: dict[str, set[str]], package: str = "gffmerge",
                     layers=LAYERS) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        rank, name = layer_of(module, package, layers)
        for t in sorted(targets):
            t_rank, t_name = layer_of(t, package, layers)
            if t_rank > rank:
                bad.append(f"{module} ({name}) imports {t} ({t_name})")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC, "gffmerge")


# ---------------------------------------------------------------- the package
def test_every_module_has_a_layer(graph):
    assert len(graph) > 40  # the whole package was read, not an empty folder
    unplaced = [m for m in graph if layer_of(m) is None]
    assert not unplaced, (f"place these modules in a layer of {__name__}.LAYERS (and "
                          f"document why): {unplaced}")


def test_no_import_against_the_flow(graph):
    bad = against_the_flow(graph)
    assert not bad, "imports against data → models → stats → collect → solver → methods → " \
                    "pipeline → cli:\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_holds_the_edges_that_define_the_flow(graph):
    # guards against a parser that silently finds nothing (and so passes the checks above)
    assert "gffmerge.models.parts" in graph["gffmerge.collect.providers"]
    assert "gffmerge.stats" in graph["gffmerge.solver.api"]
    assert "gffmerge.collect" in graph["gffmerge.pipeline"]          # from .collect import
    assert "gffmerge.methods" in graph["gffmerge.pipeline"]          # from . import methods
    assert "gffmerge.checkpoint" in graph["gffmerge.cli"]            # function-local import


def test_the_kernel_wrappers_know_nothing_of_gffmerge():
    ext = import_graph(ROOT, "gffmerge_ext")
    files = module_files(ROOT, "gffmerge_ext")
    assert ext, "gffmerge_ext has no Python sources"
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                    else [])
            assert not any(m == "gffmerge" or m.startswith("gffmerge.") for m in mods), name


# ---------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))


def test_graph_sees_relative_absolute_and_local_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .low import thing\n",
        "pkg/low.py": "import os\nthing = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": "from ..low import thing\nfrom . import b\n",
        "pkg/sub/b.py": "def f():\n    import pkg.high\n    from pkg import thing\n",
        "pkg/high.py": "from .sub.a import b\nfrom typing import TYPE_CHECKING\n"
                       "if TYPE_CHECKING:\n    from . import low\n",
    })
    g = import_graph(tmp_path, "pkg")
    assert g["pkg"] == {"pkg.low"}
    assert g["pkg.low"] == set()
    assert g["pkg.sub.a"] == {"pkg.low", "pkg.sub.b"}
    assert g["pkg.sub.b"] == {"pkg.high", "pkg"}           # local imports; a name from pkg
    assert g["pkg.high"] == {"pkg.sub.a", "pkg.low"}
    assert find_cycle(g) == ["pkg.high", "pkg.sub.a", "pkg.sub.b", "pkg.high"]
    layers = [("low", ("low",)), ("sub", ("sub",)), ("high", ("high",)), ("api", ("",))]
    assert against_the_flow(g, "pkg", layers) == [
        "pkg.sub.b (sub) imports pkg (api)", "pkg.sub.b (sub) imports pkg.high (high)"]
    del g["pkg.sub.b"]
    assert find_cycle(g) is None
