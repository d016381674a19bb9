"""The project's import graph: no cycles among its modules, and every part imports only its own layer or lower ones.

Read with ``ast``, so an import counts wherever it is written: at the top, inside a function, under ``if``, or as
``importlib.import_module("literal")``. ``from package import name`` counts as an import of ``package.name`` when
that is a module of the project (``from pipelines import kurakin``), else of ``package``.

Layers, bottom up (a part may import its own layer and the ones below it; peers on one layer may import each
other as long as no module cycle results)::

    testbed  <-  worlds  <-  physical, printouts, camera  <-  pipelines  <-  bench
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"testbed"}), frozenset({"worlds"}), frozenset({"physical", "printouts", "camera"}),
    frozenset({"pipelines"}), frozenset({"bench"}),
)
PACKAGES = frozenset().union(*LAYERS)


def project_modules(root: Path = ROOT, packages: frozenset[str] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under the project's top-level packages."""
    out = {}
    for package in sorted(packages):
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _innermost(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module (``pkg.mod.func`` -> ``pkg.mod``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``module`` (at ``path``) imports, at any depth of its code."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names += [f"{source}.{alias.name}" for alias in node.names]  # a submodule, or a name in ``source``
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__"):
                names.append(node.args[0].value)
    found = {_innermost(n, modules) for n in names}
    return {m for m in found if m is not None and m != module}


def import_graph(root: Path = ROOT, packages: frozenset[str] = PACKAGES) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def _describe(groups: list[list[str]], graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{m} -> {', '.join(sorted(graph[m] & set(g)))}" for g in groups for m in g)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a imports b`` for every import of a part on a higher layer than the importer's."""
    level = {package: i for i, layer in enumerate(LAYERS) for package in layer}
    return sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                  if level[b.split(".")[0]] > level[a.split(".")[0]])


# ------------------------------------------------------------------------------------------------ the tree
def test_no_import_cycles_among_project_modules():
    graph = import_graph()
    assert len(graph) > 80 and sum(map(len, graph.values())) > 300  # the reader sees the whole tree
    groups = import_cycles(graph)
    assert groups == [], "import cycles (imports inside functions included):\n" + _describe(groups, graph)


def test_every_part_imports_only_its_layer_or_lower():
    assert layer_violations(import_graph()) == []


def test_the_experiment_runner_imports_no_kind():
    """The kinds register themselves; the runner dispatches through the registry (pipelines.kinds imports them)."""
    graph = import_graph()
    assert not graph["pipelines.experiment"] & {"pipelines.kurakin", "pipelines.transfer", "pipelines.kinds"}
    assert not graph["pipelines.report"] & {"pipelines.experiment", "pipelines.kurakin", "pipelines.transfer"}
    assert {"pipelines.kurakin", "pipelines.transfer"} <= graph["pipelines.kinds"]


# ------------------------------------------------------------------------------------------------ the checker
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return import_graph(tmp_path, frozenset({"pkg"}))


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    graph = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "def thing():\n    from pkg import a\n    return a\n",
        "pkg/c.py": "import importlib\n\ndef later():\n    return importlib.import_module('pkg.a')\n",
        "pkg/d.py": "from . import c\nfrom .a import nothing\n",
    })
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a", "pkg.c"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_the_checker_passes_a_tree_without_cycles(tmp_path):
    graph = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import os\nfrom pkg import b\n",
                             "pkg/b.py": "def f():\n    from pkg.c import g\n", "pkg/c.py": "g = 1\n"})
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert import_cycles(graph) == []


def test_the_checker_reports_an_upward_import():
    graph = {"testbed.x": {"pipelines.y"}, "pipelines.y": {"testbed.x"}, "physical.z": {"camera.w"},
             "camera.w": set()}
    assert layer_violations(graph) == ["testbed.x imports pipelines.y"]  # peers (physical, camera) are allowed
    assert import_cycles(graph) == [["pipelines.y", "testbed.x"]]


# ------------------------------------------------------------------------------------------------ testbed, the leaf
def test_testbed_is_a_leaf_and_holds_no_command_or_world():
    """``testbed/`` imports only itself; the root command (imports every part) and the domain worlds live above it."""
    graph = import_graph()
    assert sorted(f"{a} imports {b}" for a, targets in graph.items() if a.split(".")[0] == "testbed"
                  for b in targets if b.split(".")[0] != "testbed") == []
    assert not (ROOT / "testbed" / "cli.py").exists() and not (ROOT / "testbed" / "signs").exists()
    assert not (ROOT / "testbed" / "faces.py").exists()
    assert {"pipelines.main", "worlds.signs.render", "worlds.signs.train", "worlds.faces"} <= set(graph)
    assert not any("pipelines.main" in targets for targets in graph.values())  # the top: nothing imports it


def test_the_console_script_is_the_top_module():
    """pyproject's ``[project.scripts]``, and the installed script (``pip install -e .`` after changing it)."""
    from importlib.metadata import entry_points

    assert 'testbed = "pipelines.main:main"' in (ROOT / "pyproject.toml").read_text()
    (script,) = entry_points(group="console_scripts", name="testbed")
    assert script.value == "pipelines.main:main"
