"""The demo's browser consoles: the web listener, its assets, and URLs with
tokens that work as printed.

``vdsmconsole demo`` turns the ``[web]`` listener on (port 6100, or any
free port when that one is taken) when the pinned browser assets are
installed (``tools/assets.sh`` puts them in the source tree's
``web/node_modules``), and prints a page URL for the demo guest's serial
console and, with qemu, its screen.  Each URL carries a console token
minted for the demo on the server's own store: an operator token, not
single-use, valid for the longest time remoteConsole grants, so the URLs
keep working while the demo runs.  The throwaway CA is not one a browser
trusts: it shows its certificate warning first.
"""

from __future__ import annotations

from pathlib import Path

from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.tokens.audit import record_mint
from vdsmconsole.server.tokens.urls import console_url
from vdsmconsole.spec import MAX_TOKEN_TTL

__all__ = ["ASSET_DIRS", "browser_urls", "find_assets"]

# Where tools/assets.sh installs: beside the package in a source tree (an
# editable install), or the current directory's (tools/demo runs from it).
ASSET_DIRS = (
    Path(__file__).resolve().parents[3] / "web" / "node_modules",
    Path("web") / "node_modules",
)
MARKERS = ("@xterm/xterm/lib/xterm.js", "@novnc/novnc/core/rfb.js")


def find_assets(given: Path | None = None) -> Path | None:
    """The first directory with both pinned packages installed, or None."""
    candidates = (given,) if given is not None else ASSET_DIRS
    for directory in candidates:
        if all((directory / marker).is_file() for marker in MARKERS):
            return directory.resolve()
    return None


def browser_urls(
    context: ServerContext, host: str, vm_id: str, screen: bool
) -> list[tuple[str, str]]:
    """(title, URL) of the demo guest's pages, each with a fresh token."""
    pages = [("serial", "its serial console in a browser (xterm.js)")]
    if screen:
        pages.append(("vnc", "its screen in a browser (noVNC)"))
    urls = []
    for protocol, title in pages:
        token, _ = context.tokens.mint(
            vm_id, protocol, "operator", MAX_TOKEN_TTL, False
        )
        grant = context.tokens.lookup(token)
        assert grant is not None
        record_mint(context.audit, "demo", grant)
        _, url = console_url(
            host, context.port, context.web_port, vm_id, protocol, token
        )
        urls.append((title, url))
    return urls
