"""State files in JSON, rewritten whole and atomically, cheaply.

``write_atomically``: a temporary file, fsync, rename over the old one; a
crash leaves the old or the new file, never half of one.

The token file is rewritten on every change, and the registry's snapshot at
each compaction (``registryfile``): ``TextCache`` keeps each entry's JSON
text, one entry a line, and makes it again only for a new or changed entry.
Encoding the whole registry every time (with ``indent``, which switches
``json`` to its pure-Python encoder) was most of a create's cost at 1000
consoles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

__all__ = ["TextCache", "json_object", "write_atomically"]

T = TypeVar("T")


def json_object(members: Mapping[str, str]) -> str:
    """The file's top level: key -> its value's JSON text, keys sorted."""
    inner = ",\n".join(f"  {json.dumps(k)}: {members[k]}" for k in sorted(members))
    return "{\n" + inner + "\n}\n"


class TextCache:
    """A JSON object's members, one a line, each line made once per value
    (compared by identity: values are immutable, or ``forget`` is called
    when one changes)."""

    def __init__(self) -> None:
        self._lines: dict[str, tuple[object, str]] = {}

    def json_map(self, items: Mapping[str, T], make: Callable[[T], object]) -> str:
        """A JSON object of ``items``, each value shown as ``make(value)``."""
        lines = self._lines
        if len(lines) > len(items):  # forget what is gone
            for gone in lines.keys() - items.keys():
                del lines[gone]
        out = []
        for key, value in items.items():
            held = lines.get(key)
            if held is None or held[0] is not value:
                shown = json.dumps(make(value), sort_keys=True)
                held = lines[key] = (value, f"    {json.dumps(key)}: {shown}")
            out.append(held[1])
        return "{\n" + ",\n".join(out) + "\n  }" if out else "{}"

    def forget(self, key: str) -> None:
        """``key``'s value changed in place: make its line again."""
        self._lines.pop(key, None)


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text``; OSError if it cannot be written."""
    data = text.encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # fchmod too: a temporary file a crash left behind keeps its old mode
        # through O_TRUNC.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
