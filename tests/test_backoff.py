"""The reconnect schedule (vdsmconsole/backoff.py), alone and as
ResumingFollow runs it on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from vdsmconsole.backoff import Backoff
from vdsmconsole.client.errors import ConnectError
from vdsmconsole.client.resuming import ResumingFollow
from vdsmconsole.client.stream import Stream


@pytest.mark.parametrize(
    "initial, maximum, factor, delays",
    [
        (0.5, 30.0, 2.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
        (0.25, 1.0, 2.0, [0.25, 0.5, 1.0, 1.0]),
        (1.0, 10.0, 3.0, [1.0, 3.0, 9.0, 10.0]),
        (2.0, 2.0, 2.0, [2.0, 2.0, 2.0]),
        (0.0, 5.0, 2.0, [0.0, 0.0]),
        # A maximum below the first delay caps only the later ones.
        (1.0, 0.5, 2.0, [1.0, 0.5, 0.5]),
    ],
)
def test_delays_grow_by_the_factor_up_to_the_maximum(initial, maximum, factor, delays):
    """The first delay is initial, each next one factor times longer, capped."""
    backoff = Backoff(initial, maximum, factor)
    assert [backoff.next_delay() for _ in delays] == delays


def test_reset_starts_again_at_initial():
    """After reset() (a success) the schedule starts over from initial."""
    backoff = Backoff(0.5, 30.0)
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.upcoming == 4.0
    backoff.reset()
    assert backoff.upcoming == 0.5
    assert [backoff.next_delay() for _ in range(2)] == [0.5, 1.0]


@pytest.mark.parametrize(
    "initial, maximum, factor, word",
    [
        (-1.0, 5.0, 2.0, "initial"),
        (1.0, -5.0, 2.0, "maximum"),
        (1.0, 5.0, 0.5, "factor"),
    ],
)
def test_bad_numbers_are_refused(initial, maximum, factor, word):
    """A negative delay or a shrinking factor is a ValueError naming it."""
    with pytest.raises(ValueError, match=word):
        Backoff(initial, maximum, factor)


class RefusingClient:
    """A ConsoleClient stand-in: follow() answers from a list of results
    (a Stream, or an error), recording when it was asked on the Clock."""

    where = "test"

    def __init__(self, results: list[Any]) -> None:
        self.reactor = Clock()
        self.results = results
        self.asked: list[float] = []

    def follow(self, vm_id: str, on_data: Any, **kwargs: Any) -> defer.Deferred:
        self.asked.append(self.reactor.seconds())
        result = self.results.pop(0)
        if isinstance(result, Exception):
            return defer.fail(result)
        return defer.succeed(result)


def test_resuming_follow_retries_on_the_schedule_and_resets_once_attached():
    """A lost stream is asked again at once, then 0.25, 0.5, 1 and 1 s after
    each refusal (max_delay 1); once attached, the next loss starts over."""
    first, second = Stream("vm1", 0, 0), Stream("vm1", 0, 0)
    refused = [ConnectError("refused") for _ in range(5)]
    client = RefusingClient([first, *refused, second, *refused[:2]])
    follower = ResumingFollow(
        client,  # type: ignore[arg-type]
        "vm1",
        lambda data: None,
        initial_delay=0.25,
        max_delay=1.0,
    )
    follower.start()
    clock = client.reactor
    first.done.callback(first)  # the server ended it: resume at once
    for wait in [0, 0.25, 0.5, 1.0, 1.0, 1.0]:
        clock.advance(wait)
    assert client.asked == [0, 0, 0.25, 0.75, 1.75, 2.75, 3.75]
    assert follower.stream is second
    second.done.callback(second)
    clock.advance(0)
    clock.advance(0.25)
    assert client.asked[-2:] == [3.75, 4.0]
    follower.stop()
    assert not clock.getDelayedCalls()
