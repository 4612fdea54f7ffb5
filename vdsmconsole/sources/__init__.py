"""Guest console sources: the one reader and writer of each guest's console.

Nothing here imports from ``vdsmconsole.server`` or ``vdsmconsole.client``.

A guest's serial console lives behind a pty that qemu holds the master of, a
socket chardev qemu listens on, or (for the demo guest and tests) a child
process on a pty of our own.  Whatever the kind, the console above needs the
same few things, which `ConsoleSource` names: every byte the guest writes,
handed on as soon as it is read (qemu drops serial output nobody reads, and a
guest whose console blocks can freeze on its own kernel messages); a way to
send input whose backpressure reaches the writers; a state that says whether
the guest is there; and a stop that really ends everything.

Each kind fails differently, and that shapes the code:

- A pty path is never reopened.  The kernel hands ``/dev/pts/N`` to the next
  pty as soon as the old one is gone, so reopening the path could attach
  another guest's console.  A pty whose guest went away stays ``down``.
  After a server restart the registry brings a pty console back, and its
  path is opened again only if the process that held the pty's master when
  it was first attached (its pid and start time, found in /proc) still holds
  the master of that pty number.
- A socket chardev is retried forever with exponential backoff: qemu may start
  after us or be restarted, and the socket path or port stays the guest's.
- A spawned child is ours: ``stop()`` ends it (SIGTERM, then SIGKILL).

Reading is shaped for what it costs.  A busy guest's pty is read until it
runs dry and handed on as one piece (a pty gives about 4 KiB per read).  A
guest that trickles a few bytes at a time is read at once, then left unread
for ``SourceOptions.coalesce_delay`` (22 ms, at most 25) so that the kernel
gathers its next writes into one read: one log write and one TLS record per
hold instead of one per few bytes.  Only while nobody types: input ends such
a wait, and for ``interactive_window`` (2 s) after it nothing is held, so
the echo of a key and the answer to a command go out at once.  A guest
writing faster than ``small_read`` per hold is never held.  Within the wait
the pty buffers what the guest writes (about 12 KiB before the guest's write
would block), so nothing is lost and the guest is not stalled in practice.

Input backpressure comes from the write transport's producer protocol: each
source registers a small push producer on the transport it writes to, and the
transport pauses it when its buffer is full and resumes it when drained.
Those calls become ``sourceInputPaused`` / ``sourceInputResumed``.

The reactor is always injected; only tests and the entry point use the global
one.
"""
