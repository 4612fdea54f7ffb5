"""How sources behave (``SourceOptions``), their backoff, how much a read takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# One read takes what the kernel has, up to this much.
READ_SIZE = 65536


# A pty hands out at most about 4 KiB per read (its line discipline's buffer),
# however much the guest has queued behind that.  A busy guest's output is
# therefore read in a loop until the pty runs dry or this much is in hand,
# and passed on as one: one ring append, one log write and one write to each
# client instead of one per 4 KiB, which is most of what a relay costs.
READ_BATCH = 256 * 1024


# A read this short means the guest had nothing more queued: stop there
# rather than pay for a read that would only say EAGAIN.
FULL_READ = 2048


# How long a quiet console's output may wait (SourceOptions.coalesce_delay):
# chosen by measurement (docs/benchmarks.rst, "Interactive-aware
# coalescing"); the cap keeps any byte's added delay below what a person
# watching a log notices.
COALESCE_DELAY = 0.022
MAX_COALESCE_DELAY = 0.025

# How long after the last input nothing is held (interactive_window): longer
# than the pauses between keys of someone typing, long enough to cover the
# answer to a command just entered.
INTERACTIVE_WINDOW = 2.0
MAX_INTERACTIVE_WINDOW = 3600.0


# The reactor provides IReactorTime, IReactorFDSet, IReactorProcess,
# IReactorTCP, IReactorUNIX and IReactorPluggableNameResolver.  zope interfaces
# are not checkable types without the mypy-zope plugin, hence Any.
Reactor = Any


@dataclass(frozen=True)
class SourceOptions:
    """How sources behave; from the server's configuration, same for all."""

    reconnect_initial: float = 0.5
    """Seconds before the first retry of a unix/tcp source; doubles each time."""
    reconnect_max: float = 30.0
    """The cap of the exponential backoff."""
    connect_timeout: float = 10.0
    """Seconds one unix/tcp connection attempt may take."""
    spawn_commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Name -> argv of the commands a spawn source may run.

    A spawn console names one of these; an argv never comes from the wire.
    """
    spawn_env: Mapping[str, str] | None = None
    """The environment of spawned commands; None inherits the server's."""
    stop_timeout: float = 5.0
    """Seconds a spawned child gets between SIGTERM and SIGKILL; also how long
    its pty may stay open after it exited (a grandchild may hold it)."""
    coalesce_delay: float = COALESCE_DELAY
    """Seconds a quiet console's output may be left unread; 0: never held.

    A guest that prints a few bytes at a time (a boot log, a progress bar, a
    clock in a status line) would otherwise cost one read, one log write and
    one TLS record per few bytes.  After a read shorter than ``small_read``
    the source stops reading for this long, so that the kernel gathers what
    the guest writes meanwhile and the next read takes it all at once: a
    chattering console costs 1 / coalesce_delay writes a second.  The first
    bytes after a quiet spell go out at once; later ones wait at most this
    long.  Never while someone types (``interactive_window``), never for a
    guest writing fast (``small_read``), and never for a follower reading
    what the console already holds (holding is the source's, not the
    stream's).  At most ``MAX_COALESCE_DELAY``.
    """
    interactive_window: float = INTERACTIVE_WINDOW
    """Seconds after input reached the guest during which nothing is held.

    What a person notices is the echo of their keys and the answer to what
    they typed; within this window every read goes out at once.  Input also
    ends a hold at once, so the first key after a quiet spell is answered
    unheld too.  0: only the read right after input is unheld.
    """
    small_read: int = 4096
    """Reads shorter than this many bytes start a coalescing wait, if they came
    slowly enough that the guest writes less than this during the wait (a
    guest streaming faster than ``small_read / coalesce_delay``, about
    190 KB/s at the default 22 ms, is never held back)."""

    def __post_init__(self) -> None:
        for name in ("reconnect_initial", "reconnect_max", "connect_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if not self.stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0, not {self.stop_timeout!r}")
        if not 0 <= self.coalesce_delay <= MAX_COALESCE_DELAY:
            raise ValueError(
                f"coalesce_delay must be 0 to {MAX_COALESCE_DELAY} seconds, "
                f"not {self.coalesce_delay!r}"
            )
        if not 0 <= self.interactive_window <= MAX_INTERACTIVE_WINDOW:
            raise ValueError(
                f"interactive_window must be 0 to {MAX_INTERACTIVE_WINDOW} seconds, "
                f"not {self.interactive_window!r}"
            )
        if self.small_read < 0:
            raise ValueError(f"small_read must be >= 0, not {self.small_read!r}")
        for name, argv in self.spawn_commands.items():
            if (
                isinstance(argv, str | bytes)
                or not argv
                or not all(isinstance(arg, str) for arg in argv)
            ):
                raise ValueError(
                    f"spawn command {name!r} needs a non-empty argv list, not {argv!r}"
                )


_DEFAULT_OPTIONS = SourceOptions()


def backoff_delay(failed_attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failed_attempts`` (1, 2, ...) failures in a row.

    ``initial``, doubling, capped at ``maximum``.  No jitter: the peers are
    local qemu processes, not a shared server that a herd could overwhelm.
    """
    # The exponent is bounded so that a source retrying for months cannot
    # overflow a float.
    exponent = min(max(failed_attempts - 1, 0), 64)
    return float(min(initial * 2**exponent, maximum))
