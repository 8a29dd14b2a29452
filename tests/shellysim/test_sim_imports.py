"""shellysim's modules form a layered graph: no module imports the package ``shellysim`` itself
(whose ``__init__`` imports them), and no import cycle, counting every import statement: those
inside functions and ``if TYPE_CHECKING:`` blocks too."""

from __future__ import annotations

import ast
from pathlib import Path

import shellysim

PACKAGE = Path(shellysim.__file__).parent


def submodule_imports(path: Path) -> set[str]:
    """The shellysim modules ``path`` imports (``__init__`` for the package itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # "from shellysim import x" reads x off the package: it imports the package
            assert node.level == 0, f"{path.name}: relative import"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "shellysim":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def import_graph() -> dict[str, set[str]]:
    return {path.stem: submodule_imports(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_no_module_imports_the_package_itself() -> None:
    offenders = sorted(m for m, deps in import_graph().items() if "__init__" in deps)
    assert offenders == [], "import submodules (from shellysim.x import ...), not the package"


def test_no_import_cycles() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import shellysim.a as a\n"
        "from shellysim.b import x\n"
        "if TYPE_CHECKING:\n    from shellysim.c import y\n"
        "def f():\n    import shellysim.d\n"
        "from shellysim import e\n"
    )
    assert submodule_imports(source) == {"a", "b", "c", "d", "__init__"}
