"""The console pages: static HTML that loads the installed assets.

A page carries nothing of the request: the token stays in the page's own
address, where its script reads it (``location.search``), so nothing from
the wire is written into the HTML.  The page's script is ours
(``static/``, served at ``/static/``); xterm.js and noVNC come from
``[web] assets`` under ``/assets/``.  No CDN: a Content-Security-Policy
allows scripts, styles and connections to this origin only.
"""

from __future__ import annotations

from typing import Any

# xterm.js sets its measured cell sizes and colours as inline styles; styles
# cannot run code, scripts stay 'self' only.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
    b"frame-ancestors 'none'; form-action 'none'"
)

SERIAL = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>serial console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/@xterm/xterm/css/xterm.css">
<link rel="stylesheet" href="/static/console.css">
<script src="/assets/@xterm/xterm/lib/xterm.js"></script>
<script src="/assets/@xterm/addon-fit/lib/addon-fit.js"></script>
<script src="/static/serial.js" defer></script>
</head><body><div id="status"></div><div id="terminal"></div></body></html>
"""

VNC = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>VNC console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
<script type="module" src="/static/vnc.js"></script>
</head><body><div id="status"></div><div id="screen"></div></body></html>
"""

PAGES = {"serial": SERIAL, "vnc": VNC}


def page(request: Any, kind: str) -> bytes:
    body = PAGES[kind]
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"referrer-policy", b"no-referrer")  # the token is in the URL
    request.setHeader(b"x-content-type-options", b"nosniff")
    return body
