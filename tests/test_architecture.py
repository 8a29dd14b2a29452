"""The shape of the house, checked from the code: rooms, levels, cycles, sizes, errors, the docs.

Every ``import`` and ``from ... import`` statement counts, wherever it stands: at module level,
inside functions, and under ``if TYPE_CHECKING:``. A *room* is ``kilowatch.<name>`` (a package or a
top-level module); docs/architecture.md's table must name exactly the rooms each room imports.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"

# Lower rooms never import higher ones; rooms on the same level do not import each other.
LEVELS: dict[str, int] = {
    "kilowatch": 0,  # the package itself: __version__ only
    "kilowatch.errors": 0,
    "kilowatch.model": 1,
    "kilowatch.mqtt": 2,
    "kilowatch.decode": 2,
    "kilowatch.ledger": 2,
    "kilowatch.query": 2,
    "kilowatch.store": 3,
    "kilowatch.accounts": 4,
    "kilowatch.broker": 4,
    "kilowatch.intake": 4,
    "kilowatch.fleet": 5,
    "kilowatch.homeassistant": 5,
    "kilowatch.alerts": 5,
    "kilowatch.service": 6,
    "kilowatch.web": 7,
    "kilowatch.testing": 8,
    "kilowatch.demo": 9,
    "kilowatch.cli": 10,
    "kilowatch.__main__": 11,
}
PURE_ROOMS = {"kilowatch.model", "kilowatch.mqtt", "kilowatch.decode", "kilowatch.ledger",
              "kilowatch.query"}  # fmt: skip
# What a pure room may not import: anything that waits on, opens or serves a socket, a file, a
# process or a thread, and the rooms and packages built on them.
IO_LIBRARIES = {
    "aiohttp", "argon2", "asyncio", "concurrent", "cryptography", "fastapi", "hiredis", "http",
    "httpx", "mini_racer", "multiprocessing", "paho", "py_mini_racer", "redis", "requests", "rich",
    "selectors", "shellysim", "socket", "socketserver", "sqlite3", "ssl", "starlette",
    "subprocess", "threading", "typer", "urllib", "uvicorn",
}  # fmt: skip
SIM_GATE = "kilowatch.demo"  # the one kilowatch module that imports shellysim at module level
SHELLYSIM_MAY_IMPORT = {"kilowatch.model", "kilowatch.mqtt"}
MAX_FILE_LINES = 900
MAX_FOLDER_SHARE = 0.15


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the longest prefix that is a module of ours, else the top-level name
    lazy: bool  # inside a function (runs only when called)
    line: int


def _modules(package: str) -> dict[str, Path]:
    base = SRC / package
    out: dict[str, Path] = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = {**_modules("kilowatch"), **_modules("shellysim")}


def _own(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [f"{base}.{a.name}" for a in child.names]
                names = [n if _own(n) == n else base for n in names]
            for name in names:
                target = _own(name) or name.split(".")[0]
                if target != module:
                    found.append(Import(module, target, inner, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports_of(module, path)]


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "kilowatch":
        return parts[0]
    return ".".join(parts[:2])


def room_deps() -> dict[str, set[str]]:
    deps: dict[str, set[str]] = defaultdict(set)
    for imp in IMPORTS:
        a, b = room_of(imp.importer), room_of(imp.target)
        if a.startswith("kilowatch") and b.startswith("kilowatch") and a != b:
            deps[a].add(b)
    return deps


def test_every_room_has_a_level() -> None:
    rooms = {room_of(m) for m in MODULES if m.startswith("kilowatch")}
    assert rooms == set(LEVELS), "add the new room to LEVELS here and to docs/architecture.md"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles_between_modules() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in IMPORTS:
        if imp.target in MODULES:
            edges[imp.importer].add(imp.target)
    assert _cycles(edges) == []


def test_no_room_imports_a_higher_or_sibling_room() -> None:
    wrong = [
        f"{imp.importer}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if imp.importer.startswith("kilowatch") and imp.target.startswith("kilowatch")
        and room_of(imp.importer) != room_of(imp.target)
        and LEVELS[room_of(imp.target)] >= LEVELS[room_of(imp.importer)]
    ]  # fmt: skip
    assert wrong == []


def test_pure_rooms_import_no_io() -> None:
    wrong = [
        f"{imp.importer}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if room_of(imp.importer) in PURE_ROOMS
        and (imp.target.split(".")[0] in IO_LIBRARIES
             or (imp.target.startswith("kilowatch.") and room_of(imp.target) not in
                 PURE_ROOMS | {"kilowatch.errors"}))
    ]  # fmt: skip
    assert wrong == []


def test_the_core_never_imports_the_simulator() -> None:
    """Only the demo imports shellysim, and the CLI reaches the demo and shellysim only lazily,
    when a command that needs them runs (so a base install's ``--help`` works without them)."""
    wrong = []
    for imp in IMPORTS:
        if not imp.importer.startswith("kilowatch"):
            continue
        needs_sim = imp.target.startswith("shellysim") or imp.target == SIM_GATE
        if not needs_sim or imp.importer == SIM_GATE:
            continue
        if not (imp.lazy and room_of(imp.importer) == "kilowatch.cli"):
            wrong.append(f"{imp.importer}:{imp.line} imports {imp.target}")
    assert wrong == []


def test_the_simulator_stands_on_the_ground_floor_only() -> None:
    wrong = [
        f"{imp.importer}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if imp.importer.startswith("shellysim") and imp.target.startswith("kilowatch")
        and room_of(imp.target) not in SHELLYSIM_MAY_IMPORT
    ]  # fmt: skip
    assert wrong == []


def test_the_rpc_client_stands_alone() -> None:
    """``kilowatch.fleet.rpc`` speaks RPC and knows nothing of the rest of kilowatch (like
    aioshelly): it imports only ``kilowatch.errors`` and libraries."""
    wrong = [
        f"{imp.importer}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if imp.importer.startswith("kilowatch.fleet.rpc") and imp.target.startswith("kilowatch")
        and not imp.target.startswith(("kilowatch.fleet.rpc", "kilowatch.errors"))
    ]  # fmt: skip
    assert wrong == []


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_source_file_is_too_long() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := _lines(p)) > 900}
    assert long == {}


def test_no_folder_holds_too_much_of_the_package() -> None:
    """Each folder counts its own .py files; a sub-folder (``store/redis/``) counts on its own."""
    folders: dict[Path, int] = defaultdict(int)
    total = 0
    for module, path in MODULES.items():
        if module.startswith("kilowatch"):
            n = _lines(path)
            folders[path.parent] += n
            total += n
    shares = {str(f.relative_to(SRC)): round(n / total, 3) for f, n in folders.items()}
    assert {f: s for f, s in shares.items() if s > MAX_FOLDER_SHARE} == {}, shares


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    import kilowatch

    for info in pkgutil.walk_packages(kilowatch.__path__, "kilowatch."):
        if info.name in {"kilowatch.__main__", SIM_GATE}:
            continue  # __main__ runs the CLI; the demo needs the [sim] extra (checked below)
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("kilowatch"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_error_class_is_in_errors_py() -> None:
    outside = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _exception_classes()
        if c.__module__ != "kilowatch.errors"
    ]
    assert outside == []
    # The demo module is left out of the walk above (it needs shellysim): read its source.
    tree = ast.parse(MODULES[SIM_GATE].read_text())
    assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                and any(getattr(b, "id", "").endswith(("Error", "Exception")) for b in n.bases)]


def test_errors_docstring_draws_every_class() -> None:
    from kilowatch import errors

    classes = [name for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    doc = errors.__doc__ or ""
    for name in classes:
        assert re.search(rf"[─└├] {name}\b|^    {name}$", doc, re.M), f"{name} not in the tree"
        parent = getattr(errors, name).__mro__[1].__name__
        if parent != "Exception":
            tree = doc[doc.index(parent) :]
            assert name in tree, f"{name} is not drawn under {parent}"


def _doc_table() -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {}
    text = DOC.read_text()
    table = text[text.index("| room |") :]
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        room = cells[0].strip("`")
        if "planned" in cells[1].split(":", 1)[0].lower():
            continue
        deps = set(re.findall(r"`([\w.]+)`", cells[-1]))
        rows[room] = {d if d.startswith("kilowatch") else f"kilowatch.{d}" for d in deps}
    return rows


def test_architecture_doc_names_the_real_dependencies() -> None:
    documented = _doc_table()
    real = room_deps()
    rooms = set(LEVELS) - {"kilowatch", "kilowatch.__main__"}
    assert set(documented) == rooms, "docs/architecture.md must have one row per room"
    code = {room: real.get(room, set()) - {"kilowatch"} for room in rooms}
    wrong = {
        room: {"doc": sorted(documented[room]), "code": sorted(code[room])}
        for room in rooms
        if documented[room] != code[room]
    }
    assert wrong == {}


@pytest.mark.parametrize("room", sorted(PURE_ROOMS))
def test_pure_rooms_import_without_io_libraries(room: str) -> None:
    """Importing a pure room in a fresh interpreter loads no I/O library at all."""
    import subprocess

    probe = (
        f"import sys, {room}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(IO_LIBRARIES)!r}); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("kilowatch.cli.user", {"fastapi", "starlette", "uvicorn", "paho", "shellysim"}),
        ("kilowatch.cli.token", {"fastapi", "starlette", "uvicorn", "paho", "shellysim"}),
        ("kilowatch.cli.energy", {"fastapi", "starlette", "uvicorn", "paho", "shellysim"}),
        ("kilowatch.accounts", {"fastapi", "starlette", "uvicorn"}),
        ("kilowatch.service.server", {"fastapi", "starlette", "uvicorn", "shellysim"}),
    ],
)
def test_commands_load_only_what_they_use(module: str, forbidden: set[str]) -> None:
    """``kilowatch user`` and ``token`` manage accounts without the web framework; ``serve`` loads
    the web app only through the starter it is given."""
    import subprocess

    probe = (
        f"import sys, {module}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(forbidden)!r}); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.stdout.strip() == ""
