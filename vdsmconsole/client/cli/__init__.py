"""``vdsmconsole-client``: vdsClient's command line, for vdsmconsole's port.

::

    vdsmconsole-client [options] [-s] HOST[:PORT] COMMAND [ARGS...]

``HOST`` ``0`` means this host; the port is 54321 unless given.  Commands:

``list``, ``list table``
    the consoles (full status), or one row each: vmId, state, firstOffset,
    nextOffset, readers, writers.
``console VMID [-e CHAR] [--read-only] [--offset N | --tail N]``
    interactive, like ``virsh console``: the terminal in raw mode, ``^]``
    (or ``-e CHAR``, e.g. ``-e '^A'``) leaves.  A lost connection (or the
    server stopping) is re-established with backoff and output resumes from
    the last offset; one line says how many bytes were lost meanwhile, if
    any.  A destroyed console ends it (exit 1), so does a guest gone for
    good (exit 100), without a reconnection.
``tail VMID [-f] [--offset N | --tail N]``
    what is retained (from the oldest byte, or the given start); ``-f``
    keeps following (and reconnects and ends like ``console``).
``send VMID TEXT...`` / ``send VMID -``
    TEXT and a newline (``-n``: no newline), or standard input streamed as
    one POST, each read sent as it comes.
``tunnel VMID --protocol P [--listen ADDR:PORT] [--token T]``
    a local port (default 127.0.0.1 and a free one, printed as one line
    with a viewer's command) whose every connection is a ``CONNECT`` tunnel
    to the VM's console of protocol ``vnc``, ``spice``, ``rdp`` or
    ``serial``, until a signal (^C).
``remote-console VMID --protocol P [--ttl N] [--single-use] [--role R]``
    a console token (``remoteConsole``): prints its URL, the token and
    when it expires.
any other word
    an XML-RPC method by that name (``getVmStats VMID``, ``destroy VMID``,
    ``create vmId=vm1 console.type=spawn console.command=demo``).

Arguments of an RPC: plain words are positional; ``key=value`` names a
parameter of a known method (``consoleRead vmId=vm1 maxBytes=100``); other
keys (dotted for nesting) build a struct: the method's struct parameter
(``create``'s ``params``), or a struct appended as the last argument.
Values: ``true``/``false`` are booleans, decimal numbers are ints, text
starting with ``{``, ``[`` or ``"`` is JSON, anything else a string; a known
parameter gets its own type (a vmId stays a string).

Certificates: ``--ca/--cert/--key``, else ``--pki DIR`` (a ``vdsmconsole pki
init`` directory: ``certs/cacert.pem``, ``certs/enginecert.pem``,
``keys/enginekey.pem``), else ``VDSMCONSOLE_CA``, ``VDSMCONSOLE_CERT``,
``VDSMCONSOLE_KEY``, else ``VDSMCONSOLE_PKI``, else VDSM's host files under
``/etc/pki/vdsm``.

Exit status: an RPC's status code (vdsClient's convention: 0 Done, 1 noVM,
11 MissParam...); for streams 1 when the console does not exist and 100 when
its guest is down; 2 for bad arguments or unreadable certificates; 255 when
the server cannot be reached, the TLS handshake fails or the connection is
lost (vdsClient's -1); 128+N after signal N.  Every error is one line on
stderr.
"""
