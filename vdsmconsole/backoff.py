"""The schedule of a reconnect loop's delays: exponential, capped, pure.

The server (its libvirt watcher) and the client (a follower resuming after a
lost connection) retry the same way: wait ``initial``, then ``factor`` times
longer after each failure up to ``maximum``, and start over once connected.
Only the numbers live here; each loop keeps its own timer (a reactor's
``callLater``, or a thread's deadline), so this is tested without one and
importable from both sides.  No jitter: what is retried is one local daemon
or one server per client, not a crowd that would retry in step.
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """``next_delay()`` returns the delay before the next attempt and moves the
    schedule on; ``reset()`` after a success starts it again at ``initial``.

    The first delay is ``initial`` as given; every later one is
    ``factor`` times the one before, capped at ``maximum``.
    """

    __slots__ = ("_next", "factor", "initial", "maximum")

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        if initial < 0:
            raise ValueError(f"initial delay must be >= 0, got {initial!r}")
        if maximum < 0:
            raise ValueError(f"maximum delay must be >= 0, got {maximum!r}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    @property
    def upcoming(self) -> float:
        """The delay ``next_delay()`` will return, without moving on."""
        return self._next

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(delay * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial
