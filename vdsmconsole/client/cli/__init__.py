"""``vdsmconsole-client``: vdsClient's command line, for vdsmconsole's port."""
