"""The package's imports point one way: config is a leaf, nothing imports the command
line, no package imports one of a layer above it, and no modules import each other in
a circle (read from the source, not run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "stream"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    # Compiled modules (their types in a .pyi beside them) are leaves of their own.
    for p in PACKAGE.rglob("*.pyi"):
        out.setdefault(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts), p)
    return out


def _imports(tree: ast.AST, top_level_only: bool) -> Iterator[str]:
    """Modules of this package an AST imports (``from pkg import sub`` as ``pkg.sub``),
    skipping ``if TYPE_CHECKING:`` blocks; with ``top_level_only``, only what runs at
    import time (not the imports inside functions)."""
    nodes: list[ast.AST] = [tree]
    while nodes:
        node = nodes.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                nodes.extend(child.orelse)
                continue
            if top_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef |
                                             ast.Lambda):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module and \
                    child.module.split(".")[0] == "stream":
                yield child.module
                yield from (f"{child.module}.{a.name}" for a in child.names)
            elif isinstance(child, ast.Import):
                yield from (a.name for a in child.names if a.name.split(".")[0] == "stream")
            nodes.append(child)


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if path.suffix != ".py":
            graph[name] = set()
            continue
        found = set(_imports(ast.parse(path.read_text()), top_level_only))
        # ``from stream.features import windows`` names the submodule, not the package.
        subs = {m for m in found if m in mods}
        parents = {m.rsplit(".", 1)[0] for m in subs if m.rsplit(".", 1)[0] in found}
        graph[name] = {m for m in subs - parents if m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_config_is_a_leaf() -> None:
    tree = ast.parse((PACKAGE / "config.py").read_text())
    assert set(_imports(tree, top_level_only=False)) == set()


def test_nothing_imports_the_command_line() -> None:
    graph = _graph(top_level_only=False)
    assert [m for m, deps in graph.items() if not _in(m, "cli")
            and any(_in(d, "cli") for d in deps)] == []


#: The packages from the bottom up (README, "Layout"). A package imports only its own
#: layer and those below it; the stages of a batch share one layer, where the module
#: circle check still holds. A module that imports nothing of the package is a leaf, and
#: any layer may use it (``outcomes.reasons``, ``scoring.baseline``).
LAYERS: list[set[str]] = [
    {"config", "errors", "generate"},
    {"ops"},
    {"kafka"},
    {"delivery"},
    {"ingest", "features", "state", "scoring", "outcomes"},
    {"registry", "models"},
    {"consumer"},
    {"tools", "console"},
    {"cli"},
    {""},  # the package itself: the design note's API, imported lazily from tools
]


def _in(module: str, package: str) -> bool:
    return module == f"stream.{package}" or module.startswith(f"stream.{package}.")


def _layer(module: str) -> int:
    package = module.split(".")[1] if "." in module else ""
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_no_package_imports_a_layer_above_its_own() -> None:
    graph = _graph(top_level_only=False)
    leaves = {m for m, deps in graph.items() if not deps}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if d not in leaves and _layer(d) > _layer(m))
    assert upward == []
    # Every package has a layer.
    assert {m.split(".")[1] for m in graph if "." in m} <= set().union(*LAYERS)


def test_no_import_circles() -> None:
    assert _cycles(_graph(top_level_only=True)) == []


def test_the_check_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("import stream.x\nfrom stream.y import z\ndef f():\n    import stream.w\n"
                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import stream.v\n")
    assert set(_imports(tree, top_level_only=True)) == {"stream.x", "stream.y", "stream.y.z"}
    assert "stream.w" in set(_imports(tree, top_level_only=False))


def test_every_exception_of_the_tool_is_a_stream_error() -> None:
    import importlib
    import inspect

    from stream.errors import StreamError

    found = []
    for name, path in _modules().items():
        if path.suffix != ".py" or name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found.append(cls)
    assert len(found) >= 15
    assert [c.__qualname__ for c in found if not issubclass(c, StreamError)] == []
    # Each keeps the built-in kind it always had.
    from stream.features.expr import SpecError
    from stream.kafka.embedded import PortInUse

    assert isinstance(PortInUse(98, "in use"), OSError) and issubclass(SpecError, ValueError)
