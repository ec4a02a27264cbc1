"""The import rule, checked over the import graph of portal/ and jobs/ (read with ast, nothing imported):

1. no cycles among their modules, counting imports inside functions as well as at the top;
2. a feature's views (a module that makes a Blueprint) never import another feature's views;
3. nothing but views (and the app factory, which registers them) imports views.

Imports under ``if TYPE_CHECKING:`` are left out: they never run, and type hints may name any
module. There is no allow-list.
"""
from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("portal", "jobs")
APP_FACTORY = "portal"  # portal/__init__.py: create_app registers every blueprint


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(name: str, path: pathlib.Path, modules: dict) -> list[tuple[str, int]]:
    """(module, line) for every import of one of `modules` in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    walk_one(other)
                continue
            walk_one(child)

    def walk_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
        else:
            walk(node)

    walk(tree)
    result = []
    for target, line in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            result.append((target, line))
    return result


def _graph():
    modules = _modules()
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for name, path in modules.items():
        for target, line in _imported(name, path, modules):
            edges[name].setdefault(target, line)
    return modules, edges


def _views(modules: dict[str, pathlib.Path]) -> set[str]:
    """Modules that make a Blueprint: the views."""
    views = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Blueprint":
                views.add(name)
                break
    return views


def _feature(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in list(edges):
        if start in index:
            continue
        work = [(start, iter(edges.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
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


def test_the_graph_is_read():
    modules, edges = _graph()
    views = _views(modules)
    # A broken reader would pass every rule below; these edges and views are known to exist.
    assert "portal.cases.lifecycle" in edges["portal.cases.services"]
    assert "portal.cases.routes" in edges[APP_FACTORY]
    assert {"portal.cases.routes", "portal.board.routes", "portal.labapi.routes"} <= views
    assert "portal.cases.services" not in views


def test_no_import_cycles():
    _, edges = _graph()
    cycles = _cycles(edges)
    described = [" <-> ".join(c) + ": " + "; ".join(
        f"{a} imports {b} (line {edges[a][b]})" for a in c for b in c if b in edges[a]) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_views_do_not_import_other_features_views():
    modules, edges = _graph()
    views = _views(modules)
    wrong = [f"{a} imports {b} (line {line})" for a in sorted(views) for b, line in edges[a].items()
             if b in views and _feature(a) != _feature(b)]
    assert not wrong, "a feature's views import another feature's views:\n" + "\n".join(wrong)


def test_only_views_import_views():
    modules, edges = _graph()
    views = _views(modules)
    wrong = [f"{a} imports {b} (line {line})" for a in sorted(set(modules) - views - {APP_FACTORY})
             for b, line in edges[a].items() if b in views]
    assert not wrong, "services (and other non-view modules) import views:\n" + "\n".join(wrong)
