"""Console tokens (issue 13): the store, its file, the RPC methods that mint
and revoke them, and the connect-info resource (Nova's
``os-console-auth-tokens``).  See docs/protocol.rst, "Console tokens"."""
