"""No import cycle between the files of the werkbund package (docs/architecture.md, issue 17).

The graph is read from the source, not from an import: every module under the folders that
setup.cfg's ``package_dir`` maps into ``werkbund`` is parsed with :mod:`ast`, and every ``import``
counts, those inside functions (lazy imports) too, since a lazy import hides a cycle without
removing it. ``import a.b`` is an edge to ``a.b``; ``from X import name`` (relative ones resolved)
is an edge to X, whose ``__init__`` it reads, and to ``X.name`` where that is a module. An import of
something outside the package is no edge. A strongly connected component with more than one file
is a cycle, and the test names it with one concrete path through it.
"""
from __future__ import annotations

import ast
import configparser
from collections import deque
from pathlib import Path

from conftest import ROOT


def package_folders(root: Path) -> dict[str, Path]:
    """setup.cfg's package_dir: module prefix (``werkbund.client``) -> folder (``client/``)."""
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    folders = {}
    for line in cfg["options"].get("package_dir", "").splitlines():
        if "=" in line:
            prefix, folder = (part.strip() for part in line.split("=", 1))
            folders[prefix] = root / folder
    return folders


def module_files(folders: dict[str, Path]) -> dict[str, Path]:
    """Every module of the package, by its dotted name (a package by its own name, for its __init__)."""
    files = {}
    for prefix, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            if any(part.startswith(".") or part in ("__pycache__", "tests") for part in rel.parts):
                continue
            parts = [part for part in rel.parts if part != "__init__"]
            files[".".join([prefix, *parts])] = path
    # a folder mapped on its own (werkbund.client -> client/) is not scanned again from its parent's
    return files


def _known(name: str, files: dict) -> str | None:
    """The module that ``name`` lies in (``a.b.C`` -> ``a.b``), or None outside the package."""
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in files]
            for target in targets:
                module = _known(target, files)
                if module is not None and module != name:
                    graph[name].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def one_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete cycle through the component's first module: a -> b -> ... -> a."""
    members, start = set(component), component[0]
    came_from = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return component


def describe(graph, found, files) -> str:
    lines = []
    for component in found:
        lines.append(f"import cycle among {len(component)} files: {', '.join(component)}")
        lines.append("  e.g. " + " -> ".join(one_path(graph, component)))
        lines.extend(f"  {name}: {files[name].relative_to(ROOT) if files[name].is_relative_to(ROOT) else files[name]}"
                     for name in component)
    return "\n".join(lines)


def test_the_package_has_no_import_cycle_between_files():
    files = module_files(package_folders(ROOT))
    graph = import_graph(files)
    # the graph is the package's: its parts are there, and lazy imports and submodule imports count
    assert {"werkbund", "werkbund.client.cli", "werkbund.platform.service", "werkbund.dashboard.app"} <= set(files)
    assert "werkbund.client.cli.common" in graph["werkbund.client.cli"]
    found = cycles(graph)
    assert not found, "\n" + describe(graph, found, files)


def _package(root: Path, modules: dict[str, str]) -> dict[str, Path]:
    (root / "setup.cfg").write_text("[options]\npackage_dir =\n    pkg = src\n")
    for rel, text in modules.items():
        path = root / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(package_folders(root))


def test_the_check_finds_lazy_relative_and_submodule_cycles(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from . import b  # lazy, relative, a submodule\n",
        "b.py": "from pkg.sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "import os\nimport pkg.a\n",
        "d.py": "from pkg.a import f\n",  # into the cycle, not part of it
    })
    graph = import_graph(files)
    assert graph["pkg.a"] == {"pkg", "pkg.b"} and graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    found = cycles(graph)
    assert found == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a" in describe(graph, found, files)


def test_the_check_passes_a_graph_without_cycles(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "from pkg.a import f\n",
        "a.py": "from .b import g\n\ndef f():\n    return g()\n",
        "b.py": "def g():\n    return 1\n",
    })
    assert cycles(import_graph(files)) == []


def test_no_test_file_imports_another():
    """What several test files share lives in tests/support/ (imported as ``support.*``) or in
    conftest.py, not in one of them: a test file imported by another runs its module code twice and
    hides its helpers among tests."""
    tests = ROOT / "tests"
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(tests)} imports {name}" for name in names
                      if name.rpartition(".")[2].startswith("test_")]
    assert found == []
