"""The client library reads why a stream ended, against the real server.

A destroyed console and a guest gone for good end a ``ResumingFollow`` with
the error to report (and no "lost" before it); the server stopping is a loss
to resume from, and a request it refuses while stopping is ``ServerStopping``,
not a console that is down.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.fakeguest import wait_until
from tests.test_client import DEMO_CONFIG, create, credentials, read_all
from tests.test_e2e_endings import SLOW_STOP, finish_call, held_call
from tests.test_e2e_port import _refuses_connections
from vdsmconsole.client import (
    ConnectionLost,
    ConsoleClient,
    ConsoleUnavailable,
    NoSuchConsole,
    ResumingFollow,
    ServerStopping,
)
from vdsmconsole.streamend import StreamEnd

pytestmark = pytest.mark.e2e


def resuming(client: ConsoleClient, got: bytearray, events: list) -> ResumingFollow:
    return ResumingFollow(
        client,
        "vm1",
        got.extend,
        offset=0,
        on_lost=lambda e: events.append(("lost", e)),
        on_resumed=lambda s, lost: events.append(("resumed", s.start_offset, lost)),
        initial_delay=0.05,
        max_delay=0.2,
    )


@pytest_twisted.ensureDeferred
async def test_stream_end_says_why(server_factory, pki):
    """Stream.end: complete for follow=False, destroyed (for a duplex too),
    down (the guest exited)."""
    server = server_factory(DEMO_CONFIG)
    client = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor)
    try:
        await create(client, "vm1")
        whole = await client.follow("vm1", lambda data: None, follow=False)
        await whole.done
        assert whole.end is StreamEnd.COMPLETE
        live = await client.follow("vm1", lambda data: None)
        both = await client.duplex("vm1", lambda data: None)
        await client.call("destroy", "vm1")
        await live.done
        await both.done
        assert live.end is both.end is StreamEnd.DESTROYED

        await create(client, "vm1")
        live = await client.follow("vm1", lambda data: None)
        await client.send("vm1", b"exit\r")
        await live.done
        assert live.end is StreamEnd.DOWN
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_resuming_follow_stops_on_destroy_without_a_loss(server_factory, pki):
    """destroy: done fails with NoSuchConsole ("Virtual machine does not
    exist: vm1"); on_lost is never called, nothing is retried."""
    server = server_factory(DEMO_CONFIG)
    client = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor)
    got, events = bytearray(), []
    follower = resuming(client, got, events)
    try:
        await create(client, "vm1")
        await follower.start()
        await wait_until(lambda: b"demo# " in got, "the prompt")
        await client.call("destroy", "vm1")
        with pytest.raises(NoSuchConsole) as info:
            await follower.done
        assert str(info.value) == "Virtual machine does not exist: vm1"
        assert events == []
    finally:
        follower.stop()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_resuming_follow_stops_when_the_guest_is_gone(server_factory, pki):
    """The guest exits: everything it wrote arrives, then done fails with
    ConsoleUnavailable; no loss is reported, nothing is retried."""
    server = server_factory(DEMO_CONFIG)
    client = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor)
    got, events = bytearray(), []
    follower = resuming(client, got, events)
    try:
        await create(client, "vm1")
        await follower.start()
        await client.send("vm1", b"exit\r")
        with pytest.raises(ConsoleUnavailable):
            await follower.done
        assert bytes(got) == await read_all(client, "vm1")
        assert b"logout" in got and events == []
    finally:
        follower.stop()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_server_stopping_is_a_loss_to_resume_from(server_factory, pki):
    """SIGTERM: a request on a kept-alive connection is ServerStopping (not a
    guest that is down); the follower is told of a lost connection and keeps
    trying, it does not stop."""
    server = server_factory(DEMO_CONFIG + SLOW_STOP)
    client = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor)
    got, events = bytearray(), []
    follower = resuming(client, got, events)
    try:
        await create(client, "vm1")
        await follower.start()
        await wait_until(lambda: b"demo# " in got, "the prompt")
        call = held_call(server)
        await client.call("ping")  # leaves a kept-alive connection in the pool
        server.signal(signal.SIGTERM)
        await wait_until(lambda: _refuses_connections(server.port), "port closed")
        with pytest.raises(ServerStopping):
            await client.follow("vm1", lambda data: None)
        assert events == []  # the follower is still attached
        assert b" 200 " in finish_call(call)
        await wait_until(lambda: events, "the loss", timeout=15)
        assert events[0][0] == "lost" and isinstance(events[0][1], ConnectionLost)
        assert server.wait(15) == 0
        assert not follower.done.called and not follower.stopped
    finally:
        follower.stop()
        await client.close()
