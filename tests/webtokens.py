"""The real server with a stand-in token store, for the web listener's tests.

Issue 13's token store is not in yet (``server/web/grants.py`` is the hook),
so the web listener refused every token.  This runs ``vdsmconsole serve``
exactly, but gives its context a ``tokens`` object with issue 13's
interface (``lookup``, ``use``), read from a JSON file the test writes:
``{"<token>": {"vm_id", "protocol", "role", "single_use"}}``.  Test harness
only; once issue 13 lands the tests mint tokens with ``remoteConsole``.

    python -m tests.webtokens TOKENS.json serve [vdsmconsole serve flags]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import vdsmconsole.server.service as service
from vdsmconsole import cli


class FileTokens:
    """lookup/use as issue 13's TokenStore, from a JSON file read each time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.used: set[str] = set()

    def lookup(self, token: str) -> Any:
        if token in self.used:
            return None
        try:
            grants = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        grant = grants.get(token)
        if grant is None:
            return None
        return SimpleNamespace(expires=0, **grant)

    def use(self, token: str, **_: Any) -> Any:
        grant = self.lookup(token)
        if grant is not None and grant.single_use:
            self.used.add(token)
        return grant

    # What the server's start and stop ask of a store.
    def load(self) -> int:
        return 0

    def prune(self) -> int:
        return 0

    def revoke_vm(self, vm_id: str) -> int:
        return 0


def main() -> None:
    tokens = FileTokens(Path(sys.argv[1]))
    build_context = service.build_context

    def with_tokens(config: Any, reactor: Any) -> Any:
        context = build_context(config, reactor)
        context.tokens = tokens
        return context

    service.build_context = with_tokens  # type: ignore[assignment]
    cli.main(sys.argv[2:])


if __name__ == "__main__":
    main()
