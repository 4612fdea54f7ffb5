"""The console engine: ring, console log, offset mark, console, registry.

Nothing here imports from ``vdsmconsole.server`` or ``vdsmconsole.client``.
"""
