"""The console token store without a reactor: minting, expiry on a Clock,
single use, revocation, pruning, and its file (hashes only, mode 0600)."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest
from twisted.internet.task import Clock

from vdsmconsole.server.tokens.setup import (
    PRUNE_SECONDS,
    make_token_store,
    start_tokens,
)
from vdsmconsole.server.tokens.store import (
    TokenGrant,
    TokenStore,
    TooManyTokens,
    token_id,
)
from vdsmconsole.spec import is_valid_token


def _clock(now: float = 1_000_000.0) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def test_mint_gives_a_urlsafe_token_and_its_grant():
    """A minted token has the contract's shape and looks up to what was asked."""
    clock = _clock()
    store = TokenStore(clock)
    token, expires = store.mint("vm1", "vnc", "viewer", 600, False)
    assert is_valid_token(token)
    assert expires == clock.seconds() + 600
    assert store.lookup(token) == TokenGrant(
        "vm1", "vnc", "viewer", expires, False, token_id(token)
    )
    assert token_id(token) == hashlib.sha256(token.encode()).hexdigest()[:12]


def test_tokens_are_distinct():
    """Each mint makes a new random token."""
    store = TokenStore(_clock())
    tokens = {store.mint("vm1", "serial", "viewer", 60, False)[0] for _ in range(50)}
    assert len(tokens) == 50


def test_a_token_expires_on_the_clock():
    """Valid until just before its ttl has passed, unknown from then on."""
    clock = _clock()
    store = TokenStore(clock)
    token, _ = store.mint("vm1", "rdp", "operator", 10, False)
    clock.advance(9.999)
    assert store.lookup(token) is not None
    assert store.use(token) is not None
    clock.advance(0.001)
    assert store.lookup(token) is None
    assert store.use(token) is None


def test_lookup_has_no_side_effect_and_use_consumes_single_use():
    """lookup never consumes; a single-use token is used once, then unknown."""
    store = TokenStore(_clock())
    token, _ = store.mint("vm1", "vnc", "viewer", 60, True)
    assert store.lookup(token) is not None
    assert store.lookup(token) is not None
    assert store.use(token) is not None
    assert store.use(token) is None
    assert store.lookup(token) is None
    assert len(store) == 0


def test_a_reusable_token_is_used_many_times():
    """Without singleUse a token serves every use until it expires."""
    store = TokenStore(_clock())
    token, _ = store.mint("vm1", "vnc", "viewer", 60, False)
    assert all(store.use(token) is not None for _ in range(5))


def test_use_for_another_vm_or_protocol_refuses_without_consuming():
    """A token checked against another vmId or protocol is None and stays valid."""
    store = TokenStore(_clock())
    token, _ = store.mint("vm1", "vnc", "viewer", 60, True)
    assert store.use(token, vm_id="vm2") is None
    assert store.use(token, protocol="spice") is None
    grant = store.use(token, vm_id="vm1", protocol="vnc")
    assert grant is not None and grant.vm_id == "vm1"
    assert store.use(token) is None


@pytest.mark.parametrize("bad", ["", "x" * 43 + "=", "a" * 42, "a" * 44, None, 7])
def test_malformed_tokens_are_unknown(bad):
    """Anything not shaped like a token is simply unknown."""
    store = TokenStore(_clock())
    store.mint("vm1", "vnc", "viewer", 60, False)
    assert store.lookup(bad) is None
    assert store.use(bad) is None


def test_revoke_vm_forgets_only_that_vms_tokens():
    """revoke_vm counts and forgets every token of one VM, none of another."""
    store = TokenStore(_clock())
    mine = [store.mint("vm1", p, "viewer", 60, False)[0] for p in ("vnc", "serial")]
    other, _ = store.mint("vm2", "vnc", "viewer", 60, False)
    assert store.revoke_vm("vm1") == 2
    assert all(store.lookup(t) is None for t in mine)
    assert store.lookup(other) is not None
    assert store.revoke_vm("vm1") == 0


def test_prune_forgets_expired_tokens_only():
    """prune drops what has expired and keeps what has not."""
    clock = _clock()
    store = TokenStore(clock)
    short, _ = store.mint("vm1", "vnc", "viewer", 5, False)
    long, _ = store.mint("vm1", "vnc", "viewer", 50, False)
    assert store.prune() == 0
    clock.advance(5)
    assert len(store) == 2  # expired, refused, not yet pruned
    assert store.prune() == 1
    assert len(store) == 1
    assert store.lookup(long) is not None and store.lookup(short) is None


@pytest.mark.parametrize(
    "args",
    [
        ("../x", "vnc", "viewer", 60, False),
        ("vm1", "telnet", "viewer", 60, False),
        ("vm1", "vnc", "admin", 60, False),
        ("vm1", "vnc", "viewer", 0, False),
    ],
)
def test_mint_rejects_bad_arguments(args):
    """A bad vmId, protocol, role or ttl is a ValueError, and mints nothing."""
    store = TokenStore(_clock())
    with pytest.raises(ValueError):
        store.mint(*args)
    assert len(store) == 0


def test_the_store_is_bounded_and_prunes_before_refusing():
    """A full store prunes expired tokens first, then refuses new ones."""
    clock = _clock()
    store = TokenStore(clock, max_tokens=3)
    for _ in range(3):
        store.mint("vm1", "vnc", "viewer", 10, False)
    with pytest.raises(TooManyTokens):
        store.mint("vm1", "vnc", "viewer", 10, False)
    clock.advance(10)
    store.mint("vm1", "vnc", "viewer", 10, False)
    assert len(store) == 1


def test_one_identity_cannot_take_the_whole_store():
    """An identity holding its share of live tokens is refused more, while
    others still mint; its share comes back as its tokens are used,
    revoked or expire."""
    clock = _clock()
    store = TokenStore(clock, max_tokens=10, max_per_identity=3)
    single = store.mint("vm1", "vnc", "viewer", 10, True, holder="a")[0]
    store.mint("vm2", "vnc", "viewer", 10, False, holder="a")
    store.mint("vm1", "vnc", "viewer", 20, False, holder="a")
    with pytest.raises(TooManyTokens, match="of this identity"):
        store.mint("vm1", "vnc", "viewer", 10, False, holder="a")
    store.mint("vm1", "vnc", "viewer", 10, False, holder="b")
    store.mint("vm1", "vnc", "viewer", 10, False)  # no identity: only the total
    assert store.use(single) is not None
    store.mint("vm3", "vnc", "viewer", 10, False, holder="a")
    assert store.revoke_vm("vm2") == 1
    store.mint("vm3", "vnc", "viewer", 10, False, holder="a")
    with pytest.raises(TooManyTokens):
        store.mint("vm3", "vnc", "viewer", 10, False, holder="a")
    clock.advance(10)  # all but the 20 s one expire: pruned before refusing
    store.mint("vm3", "vnc", "viewer", 10, False, holder="a")
    store.mint("vm3", "vnc", "viewer", 10, False, holder="a")
    with pytest.raises(TooManyTokens):
        store.mint("vm3", "vnc", "viewer", 10, False, holder="a")


# -- the file ------------------------------------------------------------------


def test_the_file_keeps_hashes_only_and_is_private(tmp_path):
    """tokens.json is mode 0600 and holds each token's SHA-256, never the token."""
    path = tmp_path / "tokens.json"
    store = TokenStore(_clock(), path)
    token, expires = store.mint("vm1", "spice", "operator", 60, True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    data = json.loads(text)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert data["tokens"] == {
        digest: {
            "vmId": "vm1",
            "protocol": "spice",
            "role": "operator",
            "expires": expires,
            "singleUse": True,
        }
    }
    assert not (tmp_path / "tokens.json.tmp").exists()


def test_a_restart_keeps_unexpired_tokens(tmp_path):
    """A new store on the same file knows the tokens the old one minted."""
    path = tmp_path / "tokens.json"
    clock = _clock()
    old = TokenStore(clock, path)
    token, _ = old.mint("vm1", "vnc", "viewer", 60, False)
    new = TokenStore(clock, path)
    assert new.load() == 1
    assert new.lookup(token) == old.lookup(token)


def test_load_prunes_expired_tokens_from_the_file(tmp_path):
    """Tokens that expired while the server was down are gone after load."""
    path = tmp_path / "tokens.json"
    clock = _clock()
    old = TokenStore(clock, path)
    gone, _ = old.mint("vm1", "vnc", "viewer", 5, False)
    kept, _ = old.mint("vm1", "vnc", "viewer", 500, False)
    clock.advance(100)
    new = TokenStore(clock, path)
    assert new.load() == 1
    assert new.lookup(gone) is None and new.lookup(kept) is not None
    assert len(json.loads(path.read_text())["tokens"]) == 1


def test_used_and_revoked_tokens_stay_gone_after_a_restart(tmp_path):
    """A consumed single-use token and a revoked one do not come back on load."""
    path = tmp_path / "tokens.json"
    clock = _clock()
    old = TokenStore(clock, path)
    used, _ = old.mint("vm1", "vnc", "viewer", 60, True)
    revoked, _ = old.mint("vm2", "vnc", "viewer", 60, False)
    assert old.use(used) is not None
    assert old.revoke_vm("vm2") == 1
    new = TokenStore(clock, path)
    assert new.load() == 0
    assert new.use(used) is None and new.lookup(revoked) is None


def test_a_mint_that_cannot_be_saved_makes_no_token(tmp_path):
    """If tokens.json cannot be written the mint fails and nothing is granted."""
    store = TokenStore(_clock(), tmp_path / "missing" / "tokens.json")
    with pytest.raises(OSError):
        store.mint("vm1", "vnc", "viewer", 60, False)
    assert len(store) == 0


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"version": 1}',
        '{"version": 1, "tokens": {"abc": {"vmId": "vm1"}}}',
        json.dumps(
            {
                "tokens": {
                    "0" * 64: {
                        "vmId": "../etc",
                        "protocol": "vnc",
                        "role": "viewer",
                        "expires": 2e9,
                        "singleUse": False,
                    }
                }
            }
        ),
    ],
)
def test_a_bad_file_loads_nothing(tmp_path, content):
    """An unreadable file or malformed entries are left out, never half-trusted."""
    path = tmp_path / "tokens.json"
    path.write_text(content)
    store = TokenStore(_clock(), path)
    assert store.load() == 0


def test_the_server_prunes_expired_tokens_every_minute(tmp_path):
    """start_tokens loads the file and prunes it every PRUNE_SECONDS on the clock."""
    path = tmp_path / "tokens.json"
    clock = _clock()
    TokenStore(clock, path).mint("vm1", "vnc", "viewer", 5, False)
    store = make_token_store(tmp_path, clock)
    pruning = start_tokens(store, clock)
    try:
        assert len(store) == 1
        clock.advance(PRUNE_SECONDS - 1)
        assert len(store) == 1  # expired (refused) but not yet pruned
        clock.advance(1)
        assert len(store) == 0
        assert json.loads(path.read_text())["tokens"] == {}
    finally:
        pruning.stop()
