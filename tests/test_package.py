"""The installed package's structure: imports flow one way, and nothing changes the process."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "megathread_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import"
            names = (f"{node.module}.{alias.name}" for alias in node.names)
            found |= {name if name in modules else node.module for name in names}
    return {m for m in found if m in modules and m != _module_name(path)}


def _graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle found by a depth-first walk, as a path that ends where it starts."""
    done: set[str] = set()

    def visit(trail: list[str]) -> list[str] | None:
        for nxt in sorted(graph[trail[-1]]):
            if nxt in trail:
                return trail[trail.index(nxt) :] + [nxt]
            if nxt not in done and (found := visit(trail + [nxt])):
                return found
        done.add(trail[-1])
        return None

    for start in sorted(graph):
        if start not in done and (found := visit([start])):
            return found
    return None


def test_the_package_has_no_import_cycles():
    graph = _graph()
    assert graph["megathread_jax.tasks"], "the import graph was not read"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found_where_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_never_imports_the_benchmarks_or_changes_the_process():
    """Benchmarks live beside the package; the package never re-executes a process, tunes malloc or
    compiles with options that JAX's persistent compilation cache cannot store."""
    forbidden_calls = {"execv", "execve", "execvp", "mallopt"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] == "benchmarks" for n in names), path
            if isinstance(node, ast.Attribute):
                assert node.attr not in forbidden_calls, f"{path}:{node.lineno} uses {node.attr}"
            if isinstance(node, ast.keyword):
                assert node.arg != "compiler_options", f"{path}:{node.lineno} compiles with compiler_options"
        assert "GLIBC_TUNABLES" not in path.read_text(), path
