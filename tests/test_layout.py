"""The package's shape: no import circles, the layers import downwards only,
no module over 500 lines.

Imports are read from the source (every ``import`` statement, including
those under ``TYPE_CHECKING`` and inside functions), so a circle cannot hide
behind a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vdsmconsole"
MAX_LINES = 500

# What each part may not import.  Top-level modules that both sides share
# (status, spec, identity, xmlrpcwire, streamend, terminal, transports, pki,
# graphics, backoff) import none
# of the four packages; the entry points (cli, demoguest, demoscreen,
# testing) may.
SHARED = (
    "vdsmconsole.status",
    "vdsmconsole.spec",
    "vdsmconsole.identity",
    "vdsmconsole.xmlrpcwire",
    "vdsmconsole.streamend",
    "vdsmconsole.terminal",
    "vdsmconsole.transports",
    "vdsmconsole.pki",
    "vdsmconsole.graphics",
    "vdsmconsole.backoff",
)
PACKAGES = (
    "vdsmconsole.protocols",
    "vdsmconsole.core",
    "vdsmconsole.sources",
    "vdsmconsole.server",
    "vdsmconsole.client",
)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "vdsmconsole.core": (
        "vdsmconsole.sources",
        "vdsmconsole.server",
        "vdsmconsole.client",
    ),
    "vdsmconsole.sources": ("vdsmconsole.server", "vdsmconsole.client"),
    # Sans-IO wire protocols: bytes in, events out; no reactor, no I/O.
    "vdsmconsole.protocols": (
        "vdsmconsole.core",
        "vdsmconsole.sources",
        "vdsmconsole.server",
        "vdsmconsole.client",
    ),
    "vdsmconsole.client": (
        "vdsmconsole.core",
        "vdsmconsole.sources",
        "vdsmconsole.server",
    ),
    **{shared: PACKAGES for shared in SHARED},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, wherever the statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # ``from a import b``: module a.b if there is one, else module a.
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in known
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in known)
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_part(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def test_circles_finds_a_circle_and_nothing_else():
    """The circle finder itself: a -> b -> a is one circle, c -> a none."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert circles(graph) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    """No module imports, directly or not, a module that imports it."""
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_import_downwards_only():
    """core and sources never import server or client; the client never
    imports the server's side; shared modules import none of the packages."""
    wrong = []
    for module, imported in sorted(import_graph().items()):
        for part, banned in FORBIDDEN.items():
            if not in_part(module, part):
                continue
            for target in sorted(imported):
                if any(in_part(target, b) for b in banned):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_is_in_a_known_place():
    """Each module is one of the shared ones, in a package, or an entry point
    (so that the layer rules above cover every new module)."""
    entry_points = {
        "vdsmconsole",
        "vdsmconsole.__main__",
        "vdsmconsole.cli",
        "vdsmconsole.demoguest",
        "vdsmconsole.demoscreen",
        "vdsmconsole.testing",
    }
    strays = [
        name
        for name in modules()
        if name not in entry_points
        and name not in SHARED
        and not any(in_part(name, p) for p in PACKAGES)
    ]
    assert not strays, f"modules outside the layout: {strays}"


def test_no_module_over_500_lines():
    """Every module of the package is at most 500 lines (names the offenders)."""
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("public", ["ConsoleClient", "ClientCredentials", "Stream"])
def test_client_names_stay_where_users_import_them(public):
    """``from vdsmconsole.client import ConsoleClient`` (and the rest of its
    public names) keeps working."""
    import vdsmconsole.client

    assert public in vdsmconsole.client.__all__
    assert getattr(vdsmconsole.client, public).__module__.startswith(
        "vdsmconsole.client."
    )


TESTS = Path(__file__).resolve().parent


def test_tests_import_helpers_not_other_tests():
    """No test module imports another test module or the conftest, and the
    helper modules are imported by one name (``tests.x``), never as a bare
    ``x`` that would load a second copy of them."""
    helpers = {p.stem for p in TESTS.glob("*.py")} - {"conftest", "__init__"}
    wrong = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
                if node.module == "tests":
                    names = [f"tests.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                leaf = name.removeprefix("tests.")
                if leaf.startswith("test_") or leaf == "conftest":
                    wrong.append(f"{path.name} imports {name}")
                elif name in helpers:
                    wrong.append(f"{path.name} imports {name} (use tests.{name})")
    assert not wrong, "\n".join(wrong)


def test_protocols_do_no_io():
    """The sans-IO protocols (vdsmconsole/protocols) import no reactor, no
    socket, no Twisted: bytes in, events out."""
    io_modules = ("twisted", "socket", "asyncio", "select", "selectors")
    wrong = []
    for path in sorted((PACKAGE / "protocols").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            wrong += [
                f"{path.name} imports {n}"
                for n in names
                if n.split(".")[0] in io_modules
            ]
    assert not wrong, wrong
