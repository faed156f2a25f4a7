"""The package's import graph has no cycles: no module of streamvlm imports its caller.

Every module of ``streamvlm/`` is parsed with ``ast`` (nothing is imported); every
``import`` at any depth counts, relative ones resolved, except those under
``if TYPE_CHECKING:`` (type hints only, never run). Two graphs are checked: modules, and
subpackages (``streamvlm.memory`` -> ``streamvlm.quant``; a top-level module such as
``config.py`` is its own node).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "streamvlm"
PACKAGE = ROOT.name


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_graph() -> dict[str, set[str]]:
    """``streamvlm.a.b`` -> the modules of streamvlm it imports (packages and modules alike)."""
    paths = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = _resolve(node, module, is_package)
                # ``from . import x`` names a submodule when one exists, else an attribute of base
                names = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                    for alias in node.names
                ]
            for name in names:
                # ``import a.b.c`` names the deepest existing module
                while name and name not in paths:
                    name = name.rpartition(".")[0]
                if name.startswith(PACKAGE) and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _node(module: str) -> str:
    """The subpackage (or top-level module) ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        if module == PACKAGE:
            continue  # streamvlm/__init__.py re-exports the public API: it is the root, not a node
        source = _node(module)
        graph.setdefault(source, set()).update(
            _node(t) for t in targets if t != PACKAGE and _node(t) != source
        )
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first node, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def _describe(cycles: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_relative_and_nested_imports() -> None:
    graph = module_graph()
    assert "streamvlm.errors" in graph["streamvlm.config"]  # from .errors import ...
    assert "streamvlm.registry" in graph["streamvlm.config"]
    assert "streamvlm.quant.base" in graph["streamvlm.quant.vidkv"]
    assert graph["streamvlm.registry"] == {"streamvlm.errors"}


def test_find_cycles_reports_the_path() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_config_and_registry_are_leaves() -> None:
    graph = module_graph()
    assert graph["streamvlm.config"] <= {"streamvlm.errors", "streamvlm.registry"}
    assert graph["streamvlm.registry"] <= {"streamvlm.errors"}


def test_config_imports_nothing_heavy() -> None:
    code = "import sys, streamvlm.config; print('torch' in sys.modules, 'streamvlm.memory' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_named_option_has_one_registry() -> None:
    from streamvlm import registry
    from streamvlm.config import MemoryConfig

    kv = ("fp16", "bf16", "int8", "int4", "kivi2", "vidkv-paper", "vidkv")
    assert registry.KV_CODECS.names() == kv
    assert registry.BLOCK_CODECS.names() == ("identity", *kv)
    assert registry.EVICTION_POLICIES.names() == ("age", "lru")
    assert registry.SELECTION_MODES.names() == ("shared", "per_layer")
    assert registry.QUEUE_POLICIES.names() == ("drop_oldest", "drop_newest")
    assert registry.BACKENDS.names() == ("qwen2_5_vl", "llava_onevision")
    assert registry.BACKENDS.get("qwen2_5_vl").__name__ == "Qwen25VLBackend"
    config = MemoryConfig(selection="per_layer", eviction="lru", queue_policy="drop_newest")
    assert (config.selection, config.eviction, config.queue_policy) == ("per_layer", "lru", "drop_newest")


def test_no_import_cycle_between_subpackages() -> None:
    cycles = find_cycles(package_graph())
    assert not cycles, f"import cycles between subpackages: {_describe(cycles)}"


def test_no_import_cycle_between_modules() -> None:
    cycles = find_cycles(module_graph())
    assert not cycles, f"import cycles between modules: {_describe(cycles)}"


def test_the_package_cites_nothing_outside_the_repository() -> None:
    """Docstrings and comments cite docs/ of this repository, not the design notes beside it."""
    outside = ("DESIGN.md", "../shared", "shared/videos")
    cited = [
        f"{path.relative_to(ROOT.parent)}:{n}"
        for path in sorted(ROOT.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(name in line for name in outside)
    ]
    assert not cited, f"references to files outside the repository: {cited}"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
