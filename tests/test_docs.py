"""The docs match the tree: every module docs/architecture.rst names exists
and every module is named there; docs/protocol.rst lists every status code
and method; README and docs point only at files inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vdsmconsole.spec import METHODS
from vdsmconsole.status import Code

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vdsmconsole"
ARCHITECTURE = REPO / "docs" / "architecture.rst"
PROTOCOL = REPO / "docs" / "protocol.rst"
# ``vdsmconsole/x/y.py`` or ``x/y.py`` (relative to the package) in literals.
# A relative path out of the repository to a file: ``../shared/DESIGN.md``.
OUTSIDE = re.compile(r"(?:^|[\s`<(])(\.\./(?:[\w.-]+/)+[\w.-]+\.\w+)", re.MULTILINE)
PY_PATH = re.compile(r"``((?:[a-z0-9_]+/)*[a-z0-9_]+\.py)``")


def named_paths(text: str) -> set[str]:
    return set(PY_PATH.findall(text))


def test_every_module_the_architecture_names_exists():
    """Each ``path.py`` in docs/architecture.rst is a file of the repository
    (paths without ``vdsmconsole/`` are read inside the package)."""
    missing = [
        name
        for name in sorted(named_paths(ARCHITECTURE.read_text(encoding="utf-8")))
        if not (REPO / name).is_file() and not (PACKAGE / name).is_file()
    ]
    assert not missing, f"docs/architecture.rst names what is not there: {missing}"


def test_every_module_is_in_the_architecture():
    """Each module of the package (but package faces and __main__) is named
    in docs/architecture.rst by its path."""
    named = named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    absent = [
        str(path.relative_to(REPO))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and str(path.relative_to(REPO)) not in named
    ]
    assert not absent, f"not in docs/architecture.rst: {absent}"


def test_protocol_lists_every_status_code_and_method():
    """docs/protocol.rst has a table row for every status code and an entry
    for every method of spec.METHODS."""
    text = PROTOCOL.read_text(encoding="utf-8")
    rows = set(re.findall(r"^(\d+)\s{2,}\w", text, re.MULTILINE))
    assert {str(int(code)) for code in Code} <= rows, rows
    for method in METHODS:
        assert f"``{method}(" in text, method


@pytest.mark.parametrize(
    "path",
    [REPO / "README.rst", *sorted((REPO / "docs").glob("*.rst"))],
    ids=lambda p: p.name,
)
def test_docs_point_only_inside_the_repository(path):
    """No file out of the clone (``../x/y.md``): what a reader is sent to ships
    with the repository.  (A ``../escaped`` vmId in a list of bad inputs is
    not a file reference.)"""
    text = path.read_text(encoding="utf-8")
    outside = OUTSIDE.findall(text)
    assert not outside, f"{path.name} points outside the repository: {outside}"
