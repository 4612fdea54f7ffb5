"""The TLS side of the port: server contexts, peer identity, handshake logging.

Every connection is mutually authenticated: the client must present a
certificate that the configured CA signed, that is valid now, that the CRL
(if one is configured) does not list and, unless configured otherwise, whose
extendedKeyUsage allows client use.  A failed handshake is logged as one line
with the peer address and a readable reason (never a traceback), and the
verified peer identity (subject CN and SANs) travels with each request.

``ServerTLS`` is the connection creator the port uses.  It holds the current
context and builds a new one from the files on ``reload()`` (SIGHUP) and when
the CRL file changes; each new connection takes the context that is current
when it arrives, so established connections, and their streams, keep theirs.
A reload that fails leaves the previous context in use.
"""
