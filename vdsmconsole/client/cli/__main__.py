"""``python -m vdsmconsole.client.cli``: the ``vdsmconsole-client`` command."""

from vdsmconsole.client.cli.main import main

main()
