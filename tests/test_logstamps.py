"""The server log's timestamps: Twisted's own text, made once a second."""

from __future__ import annotations

from twisted.logger import formatTime

from vdsmconsole.cli import _SecondStamps


def test_stamps_match_twisted_and_follow_the_clock():
    """Within a second the same text as Twisted's; a new second, a new text."""
    stamps = _SecondStamps()
    when = 1796182426.2
    assert stamps(when) == formatTime(when)
    assert stamps(when + 0.7) == formatTime(when + 0.7)
    assert stamps(when + 1.0) == formatTime(when + 1.0) != stamps(when)
    assert stamps(when - 5.5) == formatTime(when - 5.5)


def test_no_time_is_a_dash():
    """An event without a time shows "-", as Twisted's observer does."""
    assert _SecondStamps()(None) == "-"
