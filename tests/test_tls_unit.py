"""TLS without sockets: loading files, reloads, CRL changes, refusal reasons, expiry.

Handshakes run in memory (``twisted.test.iosim``) and time is a ``Clock``
set to now, so nothing here sleeps or opens a port.
"""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL.SSL import X509VerificationCodes as Codes
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface.verify import verifyObject

from tests.tlshelp import Pki, now_clock, utcnow
from vdsmconsole import pki as pkimod
from vdsmconsole.pki import Issued, PkiPaths
from vdsmconsole.server.config import Config, ConfigError, parse_config
from vdsmconsole.server.service import EXPIRY_CHECK_SECONDS, ConsoleService
from vdsmconsole.server.tls.connection import AuditedTLSFactory
from vdsmconsole.server.tls.files import TLSConfigError, load_server_tls
from vdsmconsole.server.tls.reload import CRL_CHECK_SECONDS, ServerTLS
from vdsmconsole.server.tls.verify import refusal_reason

DAY = datetime.timedelta(days=1)


@pytest.fixture
def own(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def messages(events: list[dict], level: str | None = None) -> list[str]:
    return [
        formatEvent(e) for e in events if level is None or e["log_level"].name == level
    ]


# -- configuration ---------------------------------------------------------------------


def test_tls_config_defaults():
    """No CRL, client usage required, a warning 30 days before expiry."""
    config = Config()
    assert config.crl_path is None
    assert config.require_client_usage is True
    assert config.expiry_warning_days == 30


def test_tls_config_keys_parse():
    """crl, require_client_usage and expiry_warning_days land on the Config."""
    config = parse_config(
        tomllib.loads(
            '[tls]\ncrl = "/etc/pki/vdsm/crl.pem"\nrequire_client_usage = false\n'
            "expiry_warning_days = 0\n"
        )
    )
    assert config.crl_path == Path("/etc/pki/vdsm/crl.pem")
    assert config.require_client_usage is False
    assert config.expiry_warning_days == 0


@pytest.mark.parametrize(
    "line",
    [
        "require_client_usage = 1",
        'require_client_usage = "yes"',
        "expiry_warning_days = -1",
        "expiry_warning_days = true",
        "expiry_warning_days = 1.5",
        "crl = 5",
    ],
)
def test_tls_config_bad_values_name_the_key(line):
    """Only TOML booleans for the flag, days 0 or more, the CRL a string."""
    key = line.split(" =")[0]
    with pytest.raises(ConfigError, match=rf"^tls\.{key}:"):
        parse_config(tomllib.loads(f"[tls]\n{line}\n"))


# -- loading files ---------------------------------------------------------------------


def test_load_reports_certificate_and_crl(own):
    """A loaded context knows its certificate and how many serials the CRL revokes."""
    victim = pkimod.issue(own.ca, "victim", client=True)
    own.write_crl([victim])
    loaded = load_server_tls(own.files())
    assert loaded.certificate == x509.load_pem_x509_certificate(
        own.paths.server_cert.read_bytes()
    )
    assert loaded.revoked == 1
    assert load_server_tls(own.files(crl=False)).revoked is None


def test_load_accepts_der_and_several_pem_crls(own):
    """A DER CRL works, and so does a PEM file holding more than one CRL."""
    one = pkimod.make_crl(own.ca, [pkimod.issue(own.ca, "a").cert])
    two = pkimod.make_crl(own.ca, [pkimod.issue(own.ca, b).cert for b in "bc"])
    own.crl.write_bytes(one.public_bytes(Encoding.DER))
    assert load_server_tls(own.files()).revoked == 1
    own.crl.write_bytes(pkimod.crl_pem(one) + pkimod.crl_pem(two))
    assert load_server_tls(own.files()).revoked == 3


@pytest.mark.parametrize(
    "breakage,needle",
    [
        ("missing_crl", "cannot read CRL"),
        ("crl_other_ca", "is not signed by the CA"),
        ("crl_garbage", "cannot load CRL"),
        ("key_mismatch", "does not match the certificate"),
        ("key_garbage", "cannot load server key"),
        ("cert_garbage", "cannot load server certificate"),
        ("ca_garbage", "cannot load CA certificate"),
    ],
)
def test_load_errors_name_the_file(own, breakage, needle):
    """Each unusable file is a TLSConfigError naming it, never a key's contents."""
    paths = own.paths
    # A fake key (base64 of "SECRETSECRET"), its armour built at run time so
    # no key-shaped text sits in the repository.
    armour = b"PRIVATE" + b" KEY-----"
    secret = b"-----BEGIN " + armour + b"\nU0VDUkVUU0VDUkVU\n-----END " + armour + b"\n"
    culprit = {
        "missing_crl": own.crl,
        "crl_other_ca": own.crl,
        "crl_garbage": own.crl,
        "key_mismatch": paths.server_key,
        "key_garbage": paths.server_key,
        "cert_garbage": paths.server_cert,
        "ca_garbage": paths.ca_cert,
    }[breakage]
    if breakage == "missing_crl":
        own.crl.unlink()
    elif breakage == "crl_other_ca":
        own.write_crl([], ca=pkimod.make_ca("some other CA"))
    elif breakage == "key_mismatch":
        paths.server_key.write_bytes(pkimod.issue(own.ca, "other").key_pem())
    elif breakage == "key_garbage":
        paths.server_key.write_bytes(secret)
    else:
        culprit.write_bytes(b"garbage\n")
    with pytest.raises(TLSConfigError) as info:
        load_server_tls(own.files())
    message = str(info.value)
    assert needle in message and str(culprit) in message, message
    assert "U0VDUkVU" not in message
    assert "\n" not in message


# -- refusal reasons -------------------------------------------------------------------


@pytest.mark.parametrize(
    "errnum,needle",
    [
        (Codes.ERR_CERT_HAS_EXPIRED, "expired at "),
        (Codes.ERR_CERT_NOT_YET_VALID, "is not valid before "),
        (
            Codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
            "is not signed by the configured CA",
        ),
        (Codes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT, "is not signed by the configured CA"),
        (Codes.ERR_CERT_REVOKED, "is revoked"),
        (Codes.ERR_INVALID_PURPOSE, "lacks clientAuth"),
        (Codes.ERR_CRL_HAS_EXPIRED, "the CRL is past its nextUpdate"),
        (Codes.ERR_UNABLE_TO_GET_CRL, "no CRL from its issuer"),
        (Codes.ERR_PATH_LENGTH_EXCEEDED, "X509_V_ERR"),
    ],
)
def test_refusal_reason_is_readable(own, errnum, needle):
    """OpenSSL's verify errors become a phrase naming the client certificate."""
    cert = pkimod.issue(own.ca, "someone", client=True).cert
    reason = refusal_reason(cert, errnum, 0)
    assert reason.startswith("client certificate 'someone' "), reason
    assert needle in reason, reason


def test_refusal_reason_escapes_names(own):
    """A name with a newline cannot forge a second log line."""
    cert = pkimod.issue(own.ca, "evil\nTLS reloaded (SIGHUP): fake", client=True).cert
    reason = refusal_reason(cert, Codes.ERR_CERT_REVOKED, 0)
    assert "\n" not in reason and "\\n" in reason


# -- in-memory handshakes --------------------------------------------------------------


def handshake(server_tls: ServerTLS, pki: PkiPaths, client: Issued, clock) -> bool:
    """Run one TLS handshake in memory; True if the client got to talk."""
    received: list[bytes] = []

    class Server(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    server_factory = AuditedTLSFactory(
        server_tls, False, Factory.forProtocol(Server), clock=clock
    )
    server = server_factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40001))
    client_options = ssl.optionsForClientTLS(
        "localhost",
        trustRoot=ssl.Certificate.loadPEM(pki.ca_cert.read_bytes()),
        clientCertificate=ssl.PrivateCertificate.loadPEM(
            client.cert_pem() + client.key_pem()
        ),
    )

    class Client(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"hello")

    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(Client), clock=clock
    )
    client_proto = client_factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
    pump = iosim.connect(
        server,
        iosim.FakeTransport(
            server, True, peerAddress=IPv4Address("TCP", "192.0.2.7", 40001)
        ),
        client_proto,
        iosim.makeFakeClient(client_proto),
        clock=clock,
    )
    for _ in range(5):
        pump.flush()
        clock.advance(0)
    return b"".join(received) == b"hello"


def test_creator_interface(own):
    """ServerTLS is what TLSMemoryBIOFactory takes: a server connection creator."""
    assert verifyObject(
        IOpenSSLServerConnectionCreator, ServerTLS(own.files(), now_clock())
    )


def test_revoked_client_refused_in_memory_with_one_line(own):
    """In memory: the CRL refuses a client with one line; a good client talks."""
    clock = now_clock()
    victim = pkimod.issue(own.ca, "victim", client=True)
    good = pkimod.issue(own.ca, "good", client=True)
    own.write_crl([victim])
    server_tls = ServerTLS(own.files(), clock)
    with capturedLogs() as events:
        assert handshake(server_tls, own.paths, good, clock)
        assert not handshake(server_tls, own.paths, victim, clock)
    lines = [m for m in messages(events) if "TLS handshake" in m]
    assert lines == [
        "TLS handshake with 192.0.2.7:40001 failed: "
        "client certificate 'victim' is revoked (listed in the CRL)"
    ]


def test_server_certificate_as_client_depends_on_setting(own):
    """serverAuth only: refused by default, accepted with require_client_usage off."""
    clock = now_clock()
    peer = pkimod.issue(own.ca, "otherhost", server=True)
    plain = pkimod.issue(own.ca, "plain")  # no extendedKeyUsage at all
    strict = ServerTLS(own.files(), clock)
    lax = ServerTLS(own.files(), clock, require_client_usage=False)
    with capturedLogs() as events:
        assert not handshake(strict, own.paths, peer, clock)
        assert handshake(strict, own.paths, plain, clock)
        assert handshake(lax, own.paths, peer, clock)
    lines = [m for m in messages(events) if "TLS handshake" in m]
    assert len(lines) == 1 and "lacks clientAuth" in lines[0], lines


# -- reloads and CRL changes -----------------------------------------------------------


def test_reload_swaps_context_for_new_connections(own):
    """reload() builds a new context from the renewed files; one info line."""
    server_tls = ServerTLS(own.files(), now_clock())
    before = server_tls.current
    renewed = own.renew_server()
    with capturedLogs() as events:
        assert server_tls.reload("test") is True
    assert server_tls.current is not before
    assert server_tls.current.certificate == renewed.cert
    lines = messages(events)
    assert len(lines) == 1 and lines[0].startswith("TLS reloaded (test): "), lines
    assert f"serial {renewed.cert.serial_number:x} " in lines[0]


def test_failed_reload_keeps_context_and_logs_one_line(own):
    """A bad file at reload: False, one error line, the old context stays."""
    server_tls = ServerTLS(own.files(), now_clock())
    before = server_tls.current
    own.paths.server_cert.write_bytes(b"garbage\n")
    with capturedLogs() as events:
        assert server_tls.reload("SIGHUP") is False
    assert server_tls.current is before
    lines = messages(events)
    assert len(lines) == 1, lines
    assert lines[0].startswith("TLS reload (SIGHUP) failed, still using the previous")
    assert str(own.paths.server_cert) in lines[0]


def test_crl_change_noticed_at_most_once_a_second(own):
    """A replaced CRL is seen by the first connection a second after the last look."""
    clock = now_clock()
    server_tls = ServerTLS(own.files(), clock)
    factory = AuditedTLSFactory(
        server_tls, False, Factory.forProtocol(Protocol), clock=clock
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    before = server_tls.current
    own.write_crl([pkimod.issue(own.ca, "victim", client=True)])
    server_tls.serverConnectionForTLS(protocol)
    assert server_tls.current is before  # looked less than a second ago
    clock.advance(CRL_CHECK_SECONDS)
    with capturedLogs() as events:
        server_tls.serverConnectionForTLS(protocol)
    assert server_tls.current is not before
    assert server_tls.current.revoked == 1
    assert [m.split(":")[0] for m in messages(events)] == [
        "TLS reloaded (CRL file changed)"
    ]
    # No change, no reload, however many connections come.
    clock.advance(CRL_CHECK_SECONDS)
    with capturedLogs() as events:
        server_tls.serverConnectionForTLS(protocol)
    assert messages(events) == []


def test_bad_crl_change_logged_once(own):
    """A CRL replaced by garbage: one error line, not one per connection after."""
    clock = now_clock()
    server_tls = ServerTLS(own.files(), clock)
    factory = AuditedTLSFactory(
        server_tls, False, Factory.forProtocol(Protocol), clock=clock
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    before = server_tls.current
    own.crl.write_bytes(b"garbage")
    with capturedLogs() as events:
        for _ in range(3):
            clock.advance(CRL_CHECK_SECONDS)
            assert server_tls.serverConnectionForTLS(protocol) is not None
    assert server_tls.current is before
    assert len(messages(events, "error")) == 1


# -- expiry ----------------------------------------------------------------------------


def test_expiry_warning_and_capabilities(own):
    """5 days (and an hour) left: a warning naming 5 days; capabilities say 5."""
    renewed = own.renew_server(
        not_after=utcnow() + 5 * DAY + datetime.timedelta(hours=1)
    )
    server_tls = ServerTLS(own.files(), now_clock())
    with capturedLogs() as events:
        assert server_tls.warn_if_expiring() is True
    lines = messages(events, "warn")
    assert len(lines) == 1 and "expires in 5 days" in lines[0], lines
    caps = server_tls.capabilities()
    assert caps["certificateDaysLeft"] == 5
    assert caps["certificateNotAfter"] == renewed.cert.not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert caps["crlChecked"] is True and caps["clientUsageRequired"] is True
    quiet = ServerTLS(own.files(), now_clock(), expiry_warning_days=3)
    with capturedLogs() as events:
        assert quiet.warn_if_expiring() is False
    assert messages(events) == []


def test_expired_server_certificate_is_an_error(own):
    """An expired server certificate is logged as an error; days left go negative."""
    # Whole days rounded down: negative exactly when it has expired.
    hour = datetime.timedelta(hours=1)
    own.renew_server(
        not_before=utcnow() - 10 * DAY, not_after=utcnow() - 2 * DAY + hour
    )
    server_tls = ServerTLS(own.files(), now_clock())
    with capturedLogs() as events:
        assert server_tls.warn_if_expiring() is True
    assert len(messages(events, "error")) == 1
    assert server_tls.days_left() == -2


def test_service_warns_at_start_and_daily_and_reloads(own, tmp_path):
    """ConsoleService warns at start and daily after; reload() swaps the context."""
    own.renew_server(not_after=utcnow() + 10 * DAY)
    reactor = now_clock()
    config = Config(port=0, state_dir=tmp_path / "state").with_pki(own.paths.root)
    service = ConsoleService(config, reactor)
    with capturedLogs() as events:
        service.startService()
        reactor.advance(EXPIRY_CHECK_SECONDS)
    warnings = [m for m in messages(events, "warn") if "expires in" in m]
    assert len(warnings) == 2, warnings
    assert "expires in 10 days" in warnings[0] or "expires in 9 days" in warnings[0]
    _port, factory, _backlog, _interface = reactor.tcpServers[0]
    assert factory._creatorCallable is not None
    assert service.tls is not None
    before = service.tls.current
    own.renew_server()
    assert service.reload() is True
    assert service.tls.current is not before
    service.stopService()
    with capturedLogs() as events:
        reactor.advance(EXPIRY_CHECK_SECONDS)
    assert not [m for m in messages(events) if "expires in" in m]
