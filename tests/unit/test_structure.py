"""The shape of harness/: data flows one way (no import cycle between modules, nor between
packages at any depth), functions stay short, and pure modules stay pure.

Every module below harness/ is read, whatever its depth, and every relative import is
resolved whatever its level, so a module moved into a subpackage is still checked.  Each
rule is tried on a planted tree too, so a reader that stops seeing modules fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "harness"
MAX_FUNCTION_LINES = 60
# harness/ holds ~75 modules; far fewer means the walk stopped seeing folders.
MIN_MODULES = 60

# Modules that decide without touching the world: the verdicts, the agent's wire
# protocol, the host truth, the plan and the configuration (with the types they
# read: versions, an export's shape, the machine's options, how QEMU ended).  They import only each
# other and the standard library's pure parts, so every rule is unit-testable from
# hand-made inputs and no judge can mount, spawn or talk to a guest.
PURE = ("harness.config", "harness.version", "harness.errors", "harness.plan",
        "harness.machine_options", "harness.host.truth", "harness.host.layout",
        "harness.host.mounts", "harness.guest.end", "harness.host.scripted_spec",
        "harness.agent", "harness.verdicts")
IMPURE_STDLIB = frozenset({"subprocess", "socket", "ctypes", "paramiko", "threading",
                           "libvirt", "tempfile", "shutil", "fcntl", "select"})


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module at ``path`` in the package rooted at ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The absolute names an ``ImportFrom`` refers to (relative at any level)."""
    if node.level == 0:
        return [f"{node.module}.{alias.name}" for alias in node.names] if node.module else []
    base = module.split(".")
    # A package's __init__ is its own anchor; a module's anchor is its package.
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    if node.module:
        # "from .host import mount" may name a submodule: the owner lookup later keeps
        # the deepest name that is a module ("pkg.host.mount", else "pkg.host").
        return [".".join([*base, node.module, alias.name]) for alias in node.names]
    return [".".join([*base, alias.name]) for alias in node.names]


def read_tree(root: Path) -> dict[str, list[str]]:
    """Module name -> every name it imports (absolute, as written or resolved)."""
    graph: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        imported: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported += _resolve(name, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
        graph[name] = imported
    return graph


def _owner(name: str, modules: set[str]) -> str | None:
    """The package module ``name`` is or lies in ("a.b.C" -> "a.b" when a.b is one)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def internal_graph(graph: dict[str, list[str]], depth: int) -> dict[str, set[str]]:
    """Import arrows between the package's modules, collapsed to ``depth`` name parts
    (depth 2: harness.qemu.* is one node, and so is each top-level module)."""
    modules = set(graph)
    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        src = ".".join(module.split(".")[:depth])
        for name in imported:
            target = _owner(name, modules)
            if target is None or target == module:
                continue
            dst = ".".join(target.split(".")[:depth])
            # A package's __init__ importing its own submodule is not an arrow between nodes.
            if dst != src and not module.startswith(dst + "."):
                out.setdefault(src, set()).add(dst)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per depth that has one: between modules, and between packages."""
    deepest = max(len(name.split(".")) for name in graph)
    found = []
    for depth in range(2, deepest + 1):
        if cycle := find_cycle(internal_graph(graph, depth)):
            found.append(cycle)
    return found


def long_functions(root: Path) -> list[str]:
    """Every function over MAX_FUNCTION_LINES lines below ``root``."""
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    return long


def impure_imports(graph: dict[str, list[str]], pure: tuple[str, ...]) -> list[str]:
    """Imports by a pure module of an impure harness module or an impure library."""
    modules = set(graph)

    def is_pure(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in pure)

    bad = []
    for module, imported in graph.items():
        if not is_pure(module):
            continue
        for name in imported:
            owner = _owner(name, modules)
            if owner is not None and not is_pure(owner) and owner != module.split(".")[0]:
                bad.append(f"{module} imports {owner}")
            elif owner is None and name.split(".")[0] in IMPURE_STDLIB:
                bad.append(f"{module} imports {name}")
    return bad


def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_cycle_planted_in_a_subpackage_is_found(tmp_path: Path) -> None:
    # Two levels of relative import: pkg.wing.deep.a -> pkg.top -> pkg.wing.deep.a.
    root = _plant(tmp_path, {
        "__init__.py": "", "top.py": "from .wing.deep import a\n",
        "wing/__init__.py": "", "wing/deep/__init__.py": "",
        "wing/deep/a.py": "from ...top import x\n",
    })
    found = cycles(read_tree(root))
    assert ["pkg.top", "pkg.wing", "pkg.top"] in found  # between packages
    assert ["pkg.top", "pkg.wing.deep.a", "pkg.top"] in found  # between modules


def test_a_cycle_between_packages_is_found(tmp_path: Path) -> None:
    # No module-level cycle (a -> top.b, top.c -> w.d), but the packages pkg.w and
    # pkg.top... are tied both ways: a wing that imports the spine that imports it.
    root = _plant(tmp_path, {
        "__init__.py": "", "spine.py": "from .w import d\n", "w/__init__.py": "",
        "w/a.py": "from .. import spine\n", "w/d.py": "X = 1\n",
    })
    assert cycles(read_tree(root)) == [["pkg.spine", "pkg.w", "pkg.spine"]]


def test_a_long_function_planted_in_a_subpackage_is_found(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    root = _plant(tmp_path, {"__init__.py": "", "w/__init__.py": "",
                             "w/long.py": f"def f():\n{body}",
                             "w/short.py": "def g():\n    pass\n"})
    assert long_functions(root) == ["w/long.py:1 f (61 lines)"]


def test_an_impure_import_by_a_pure_module_is_found(tmp_path: Path) -> None:
    root = _plant(tmp_path, {"__init__.py": "", "judge/__init__.py": "",
                             "judge/rule.py": "import subprocess\nfrom ..host import mount\n",
                             "host/__init__.py": "", "host/mount.py": "",
                             "judge/ok.py": "import os\nfrom . import rule\n"})
    assert impure_imports(read_tree(root), ("pkg.judge",)) == [
        "pkg.judge.rule imports subprocess", "pkg.judge.rule imports pkg.host.mount"]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[str]]:
    found = read_tree(PACKAGE)
    assert len(found) >= MIN_MODULES, f"only {len(found)} modules read below {PACKAGE}"
    assert any(name.count(".") >= 2 for name in found), "no subpackage module was read"
    return found


def test_no_import_cycle_in_harness(graph: dict[str, list[str]]) -> None:
    assert cycles(graph) == []


def test_no_function_over_60_lines() -> None:
    assert long_functions(PACKAGE) == []


def test_pure_modules_import_nothing_that_acts(graph: dict[str, list[str]]) -> None:
    assert impure_imports(graph, PURE) == []


# The command line's edges: argparse's Namespace is read there once into a typed value.
# host.scripted_server is a subprocess of its own, with a command line of its own.
ARGPARSE_EDGES = ("harness.cli", "harness.bench.options", "harness.host.scripted_server")


def test_only_the_command_line_edges_see_argparse(graph: dict[str, list[str]]) -> None:
    seen = sorted(module for module, imports in graph.items() if "argparse" in imports
                  and not any(module == e or module.startswith(e + ".")
                              for e in ARGPARSE_EDGES))
    assert seen == []
