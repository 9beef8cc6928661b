"""The layout's promises (CONVENTIONS.md, docs/DESIGN.md), read from the source itself: dependencies
between headprune's modules point one way (no import cycle, imports inside functions included), and
no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import headprune

SRC = Path(headprune.__file__).parent
ROOT = "headprune"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, level: int, target: str | None) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    if level == 0:
        return target or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement of `module`, wherever it
    sits (module level or inside a function), except those under `if TYPE_CHECKING:`."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node.level, node.module)
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            found.append((target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno))
            found += [(sub, [], node.lineno) for sub in submodules]
    return found


def dependency_graph() -> dict[str, set[str]]:
    """Module -> the headprune modules its execution imports: each imported module and the packages
    above it (whose `__init__` runs first), except packages above the importer itself."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module in MODULES:
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for target, _names, _line in imports_of(module):
            if not (target == ROOT or target.startswith(ROOT + ".")):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in MODULES and name not in own and name != module:
                    graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_lazy_imports_and_the_packages_above_a_module() -> None:
    """The walk itself: an import inside a function counts, and importing `a.b.c` runs `a.b` first."""
    graph = dependency_graph()
    assert f"{ROOT}.engine" in graph[f"{ROOT}.executors"]  # imported inside `make_executor`
    assert f"{ROOT}.executors" in graph[f"{ROOT}.scorer"]  # above `executors.local`
    assert f"{ROOT}.checkpoint" in graph[f"{ROOT}.engine.stages"]
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(dependency_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for module in MODULES:
        for target, names, line in imports_of(module):
            if not target.startswith(ROOT) or target == module:
                continue
            offenders += [f"{module}:{line} imports {target}.{n}" for n in names if n.startswith("_")
                          and not n.startswith("__")]
    assert not offenders, "\n".join(offenders)


def test_every_module_imports_on_its_own() -> None:
    """Each module can be the first one imported (a cycle hidden by import order would fail here);
    `__main__` modules are left out, since importing them runs the CLI."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def first_import(module: str) -> str | None:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                              timeout=300)
        return None if done.returncode == 0 else f"{module}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"

    modules = sorted(m for m in MODULES if not m.endswith("__main__"))
    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(first_import, modules) if f]
    assert not failures, "\n".join(failures)
