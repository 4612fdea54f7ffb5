"""vdsmconsole: guest serial consoles and VDSM-style XML-RPC on one TLS port."""

__version__ = "0.1.0"
