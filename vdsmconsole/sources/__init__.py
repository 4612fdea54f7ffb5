"""Guest console sources: pty, unix and tcp chardevs, spawned commands.

Nothing here imports from ``vdsmconsole.server`` or ``vdsmconsole.client``.
"""
