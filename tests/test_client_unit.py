"""The client library's pure parts: no server, no reactor running.

The XML-RPC codec, credentials, stream offsets and ``InputStream`` (a body
that stays open) are plain objects; ``InputStream`` is driven by a consumer
that records what it was sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vdsmconsole.client import (
    ClientCredentials,
    CredentialsError,
    InputStream,
    Stream,
    dumps_call,
    loads_response,
)
from vdsmconsole.client.errors import ClientError, RPCFault
from vdsmconsole.pki import PkiPaths


def credentials(pki: PkiPaths) -> ClientCredentials:
    return ClientCredentials.from_pki_dir(pki.root)


def test_wide_ints_go_out_as_i8():
    """Offsets beyond 32 bits are marshalled as <i8>, and <i8> is read back."""
    body = dumps_call("consoleRead", ("vm", 2**40, 5))
    assert b"<i8>1099511627776</i8>" in body and b"<int>5</int>" in body
    response = (
        b"<?xml version='1.0'?><methodResponse><params><param><value><struct>"
        b"<member><name>nextOffset</name><value><i8>8589934592</i8></value></member>"
        b"<member><name>data</name><value><base64>aGk=</base64></value></member>"
        b"</struct></value></param></params></methodResponse>"
    )
    assert loads_response(response) == {"nextOffset": 2**33, "data": b"hi"}


def test_credentials_precedence(tmp_path):
    """Flags, --pki, VDSMCONSOLE_CA/CERT/KEY, VDSMCONSOLE_PKI, then VDSM's files."""
    assert ClientCredentials.resolve(environ={}) == ClientCredentials(
        Path("/etc/pki/vdsm/certs/cacert.pem"),
        Path("/etc/pki/vdsm/certs/vdsmcert.pem"),
        Path("/etc/pki/vdsm/keys/vdsmkey.pem"),
    )
    env = {"VDSMCONSOLE_PKI": "/e", "VDSMCONSOLE_CERT": "/env-cert.pem"}
    assert ClientCredentials.resolve(environ=env) == ClientCredentials(
        Path("/e/certs/cacert.pem"),
        Path("/env-cert.pem"),
        Path("/e/keys/enginekey.pem"),
    )
    assert ClientCredentials.resolve(
        pki=Path("/p"), key=Path("/flag-key.pem"), environ=env
    ) == ClientCredentials(
        Path("/p/certs/cacert.pem"),
        Path("/p/certs/enginecert.pem"),
        Path("/flag-key.pem"),
    )


def test_credentials_problems_are_one_line(pki, odd_certs, tmp_path):
    """A missing file or a key that is not the certificate's: CredentialsError."""
    mine = credentials(pki)
    with pytest.raises(CredentialsError) as info:
        ClientCredentials(tmp_path / "none.pem", mine.cert, mine.key).load()
    assert str(info.value) == (
        f"cannot read CA certificate {tmp_path / 'none.pem'}: No such file or directory"
    )
    _, other_key = odd_certs["other_ca"]
    with pytest.raises(CredentialsError, match="does not match"):
        ClientCredentials(mine.ca, mine.cert, other_key).load()


def test_stream_offset_is_start_plus_received():
    """Stream.offset is X-Console-Offset plus the bytes received."""
    stream = Stream("vm", 100, 3)
    stream.received = 20
    assert (stream.offset, stream.lost) == (120, 3)


def test_a_fault_answer_raises_rpcfault_and_garbage_a_client_error():
    """loads_response: a Fault is RPCFault with its code; unreadable XML is a
    ClientError whose message says so."""
    fault = (
        b"<?xml version='1.0'?><methodResponse><fault><value><struct>"
        b"<member><name>faultCode</name><value><int>8001</int></value></member>"
        b"<member><name>faultString</name><value><string>no</string></value>"
        b"</member></struct></value></fault></methodResponse>"
    )
    with pytest.raises(RPCFault) as info:
        loads_response(fault)
    assert (info.value.faultCode, info.value.faultString) == (8001, "no")
    with pytest.raises(ClientError, match="unreadable XML-RPC answer"):
        loads_response(b"<html>not xml-rpc")


class Consumer:
    """Records what an IBodyProducer writes to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Producer:
    """A push producer that counts the pauses it is told."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped = True


def test_input_stream_writes_through_once_started():
    """Before the connection is up writes wait; then they go out in order,
    and later writes go straight to the consumer."""
    stream = InputStream()
    stream.write(b"a")
    stream.write(b"b")
    consumer = Consumer()
    body_done = stream.startProducing(consumer)
    assert consumer.written == [b"a", b"b"]
    stream.write(b"c")
    assert consumer.written == [b"a", b"b", b"c"]
    assert not body_done.called


def test_input_stream_holds_while_paused_and_bounds_what_it_holds():
    """Paused by the connection, writes wait up to max_buffer bytes; beyond
    that they are dropped and counted, never queued without bound."""
    stream = InputStream(max_buffer=4)
    consumer = Consumer()
    stream.startProducing(consumer)
    stream.pauseProducing()
    stream.write(b"12")
    stream.write(b"34")
    stream.write(b"5")
    assert consumer.written == []
    assert (stream.pending_bytes, stream.dropped) == (4, 1)
    stream.resumeProducing()
    assert consumer.written == [b"12", b"34"]
    assert stream.pending_bytes == 0


def test_input_stream_pushes_back_on_its_own_producer():
    """A producer registered on the stream is paused while writes wait, and
    resumed once they are out."""
    stream = InputStream()
    producer = Producer()
    stream.registerProducer(producer, True)
    stream.write(b"early")  # no connection yet: it waits, the producer pauses
    assert producer.paused == 1
    consumer = Consumer()
    stream.startProducing(consumer)
    stream.pauseProducing()
    assert producer.paused == 2
    stream.resumeProducing()
    assert consumer.written == [b"early"]
    assert producer.resumed == 1
    with pytest.raises(ValueError):
        stream.registerProducer(producer, False)


def test_input_stream_finish_ends_the_body_after_what_is_pending():
    """finish() ends the body once pending writes are out; later writes are
    ignored, and stopProducing drops what waits."""
    stream = InputStream()
    consumer = Consumer()
    body_done = stream.startProducing(consumer)
    stream.pauseProducing()
    stream.write(b"last")
    stream.finish()
    assert not body_done.called and not stream.open
    stream.resumeProducing()
    assert consumer.written == [b"last"] and body_done.called
    stream.write(b"ignored")
    assert consumer.written == [b"last"]
    other = InputStream()
    other.startProducing(Consumer())
    other.pauseProducing()
    other.write(b"x")
    other.stopProducing()
    assert (other.pending_bytes, other.open) == (0, False)
