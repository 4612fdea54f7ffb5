"""The TLS side of the port: contexts from files, reloads, audited connections."""
