"""The bookkeeping of connection caps and the descriptor reserve, on a Clock."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from vdsmconsole.connlimits import ConnectionLimits, RefusalLog


def limits(clock: Clock, open_now: list[int] | None = None, **kw) -> ConnectionLimits:
    counts = open_now if open_now is not None else [10]
    settings = dict(
        per_address=3,
        per_identity=4,
        reserve=100,
        first_request_timeout=10.0,
        open_files=1024,
    )
    settings.update(kw)
    return ConnectionLimits(clock, count_open=lambda: counts[0], **settings)


def test_per_address_cap_admits_up_to_the_cap_and_again_after_release():
    """Three connections from an address, the fourth refused; one leaves, one in."""
    lim = limits(Clock())
    assert [lim.admit_address("192.0.2.1") for _ in range(4)] == [True] * 3 + [False]
    assert lim.admit_address("192.0.2.2")  # another address is not affected
    lim.release("192.0.2.1", None, closing=False)
    assert lim.admit_address("192.0.2.1")
    assert lim.connections == 4


def test_per_identity_cap():
    """Four connections of an identity, the fifth refused; others unaffected."""
    lim = limits(Clock())
    assert [lim.admit_identity("engine", "p") for _ in range(5)] == [True] * 4 + [False]
    assert lim.admit_identity("viewer", "p")
    lim.release(None, "engine", closing=False)
    assert lim.admit_identity("engine", "p")


def test_reserve_counts_connections_and_other_descriptors():
    """Short when connections and other descriptors reach the limit less reserve."""
    clock = Clock()
    open_now = [24]  # consoles, logs, the listening socket...
    lim = limits(clock, open_now, per_address=10_000)  # budget 1024 - 100
    for _ in range(890):
        lim.admit_address("192.0.2.1")
    assert not lim.short_of_descriptors(100)  # 890 + 24 < 924
    assert lim.short_of_descriptors(950)  # that number proves 951 are in use
    for _ in range(10):
        lim.admit_address("192.0.2.1")
    assert lim.short_of_descriptors(100)  # 900 + 24
    open_now[0] = 900 + 5  # a recount: consoles closed files meanwhile
    assert lim.short_of_descriptors(100)  # not recounted within a second
    clock.advance(1)
    assert not lim.short_of_descriptors(100)  # 900 + 5 < 924


def test_connections_being_closed_for_the_reserve_are_not_counted_twice():
    """One closing connection makes room for one newcomer, not for each."""
    lim = limits(Clock(), [24], per_address=10_000)
    for _ in range(900):
        lim.admit_address("192.0.2.1")
    assert lim.short_of_descriptors(0)  # 900 + 24: the budget is reached
    lim.closing += 1  # the factory closed an idle one for it
    assert not lim.short_of_descriptors(0)
    lim.admit_address("192.0.2.1")
    assert lim.short_of_descriptors(0)
    lim.release("192.0.2.1", None, closing=True)
    assert lim.closing == 0 and lim.connections == 900


def test_refusals_are_logged_once_per_interval_with_a_count():
    """A flood of refusals is one line per 10 s, saying how many it left out."""
    clock = Clock()
    refusals = RefusalLog(clock)
    with capturedLogs() as events:
        for _ in range(50):
            refusals.note("address", "refused {host}", host="192.0.2.1")
        clock.advance(10)
        refusals.note("address", "refused {host}", host="192.0.2.1")
        refusals.note("identity", "closed {who}", who="engine")
    assert [formatEvent(e) for e in events] == [
        "refused 192.0.2.1",
        "refused 192.0.2.1 (49 more like it not logged)",
        "closed engine",
    ]


def test_the_systemd_unit_sets_a_descriptor_limit():
    """contrib's unit sets LimitNOFILE well above systemd's default soft 1024."""
    unit = Path(__file__).parent.parent / "contrib" / "vdsmconsole.service"
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("LimitNOFILE=")]
    assert int(line.split("=", 1)[1]) >= 65536
