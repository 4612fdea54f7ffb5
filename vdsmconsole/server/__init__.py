"""The server: service assembly, configuration, authorization, audit, RPC,
TLS, HTTP and console streams."""
