"""Sans-IO wire protocols: bytes in, events out, no reactor (like h2 and wsproto)."""
