"""Console tokens: who may open which remote console, until when.  Pure: no
reactor, no sockets; time comes from an injected clock.

A token is ``secrets.token_urlsafe(32)`` (32 random bytes, 43 characters),
handed to the caller once.  The store keeps only its SHA-256, with the vmId,
protocol, role and expiry: a copy of the store (or of its file) opens nothing.
The token's strength is its 256 random bits, so a plain hash suffices (no
salt or slow hash: there is no password to guess).

With a ``path`` the live tokens are kept in that file (``tokens.json``, mode
0600, written whole to a temporary file, fsynced and renamed over the old one
as the registry is), so a restart keeps unexpired tokens valid.  Expired
tokens are pruned on load and by ``prune()`` (the server calls it
periodically); until then they are refused like unknown ones.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger

from vdsmconsole.core.jsonfile import TextCache
from vdsmconsole.server.tokens.tokenfile import ROLES, load_records, save_records
from vdsmconsole.spec import REMOTE_PROTOCOLS, is_valid_token, is_valid_vm_id

__all__ = [
    "MAX_LIVE_TOKENS",
    "MAX_TOKENS_PER_IDENTITY",
    "TOKEN_ROLES",
    "Clock",
    "TokenGrant",
    "TokenStore",
    "TooManyTokens",
    "token_id",
]

log = Logger(namespace="vdsmconsole.tokens")

TOKEN_ROLES = ROLES
# Live tokens at most: every mint rewrites the file, and a caller with read
# access may mint, so the store (and the file) must not grow without bound.
MAX_LIVE_TOKENS = 10_000
# ... and at most this many minted by one identity (a client certificate),
# so that one client cannot take the whole store from the others.  Not
# persisted: tokens restored after a restart count for nobody.
MAX_TOKENS_PER_IDENTITY = 2_000
TOKEN_ID_CHARS = 12


class Clock(Protocol):
    """What the store needs of a reactor: ``IReactorTime.seconds``."""

    def seconds(self) -> float:
        """The current time, in seconds since the epoch."""


class TooManyTokens(Exception):
    """The store holds MAX_LIVE_TOKENS live tokens already, or the minting
    identity MAX_TOKENS_PER_IDENTITY."""


@dataclass(frozen=True)
class TokenGrant:
    """What a token grants: a role on one console of one VM, until ``expires``
    (``clock.seconds()`` time); ``id`` names it in logs (a SHA-256 prefix)."""

    vm_id: str
    protocol: str
    role: str
    expires: float
    single_use: bool
    id: str = ""
    holder: str = ""  # the identity that minted it ("": unknown); not saved

    def to_record(self) -> dict[str, Any]:
        """What tokens.json keeps of it (under the token's SHA-256)."""
        return {
            "vmId": self.vm_id,
            "protocol": self.protocol,
            "role": self.role,
            "expires": self.expires,
            "singleUse": self.single_use,
        }


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_id(token: str) -> str:
    """A short name of a token for audit lines: a prefix of its SHA-256.

    It cannot be turned back into the token, and it is the start of the key
    ``tokens.json`` keeps, so an administrator can match the two.
    """
    return _digest(token)[:TOKEN_ID_CHARS]


class TokenStore:
    """SHA-256 of a token -> its grant; see the module's docstring."""

    def __init__(
        self,
        clock: Clock,
        path: Path | None = None,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        max_tokens: int = MAX_LIVE_TOKENS,
        max_per_identity: int = MAX_TOKENS_PER_IDENTITY,
    ) -> None:
        self._clock = clock
        self._path = path
        self._new_token = new_token
        self._max_tokens = max_tokens
        self._max_per_identity = max_per_identity
        self._held: dict[str, int] = {}  # identity -> tokens it minted, held
        self._grants: dict[str, TokenGrant] = {}
        self._texts = TextCache()
        self._holding = False  # in ``batch``: the file is written by ``sync``
        self._unsaved: list[str] = []  # digests minted in the batch
        self._dirty = False  # the file is behind the grants

    def __len__(self) -> int:
        return len(self._grants)

    def __iter__(self) -> Iterator[TokenGrant]:
        """The grants held (expired ones until pruned); never the tokens."""
        return iter(list(self._grants.values()))

    # -- minting and using -----------------------------------------------------

    def mint(
        self,
        vm_id: str,
        protocol: str,
        role: str,
        ttl: float,
        single_use: bool,
        holder: str = "",
    ) -> tuple[str, float]:
        """A new token for ``vm_id``'s ``protocol`` console: (token, expires).

        ``holder``: the identity minting it, held to MAX_TOKENS_PER_IDENTITY.
        Raises ValueError for a bad argument, TooManyTokens when full, and
        OSError when the file cannot be written (then no token was made).
        """
        if not is_valid_vm_id(vm_id):
            raise ValueError(f"invalid vmId {vm_id!r}")
        if protocol not in REMOTE_PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if role not in TOKEN_ROLES:
            raise ValueError(f"unknown token role {role!r}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        if len(self._grants) >= self._max_tokens and not self.prune():
            raise TooManyTokens(f"{len(self._grants)} live console tokens already")
        if holder and self._held.get(holder, 0) >= self._max_per_identity:
            self.prune()
            if self._held.get(holder, 0) >= self._max_per_identity:
                raise TooManyTokens(
                    f"{self._held[holder]} live console tokens of this identity already"
                )
        token = self._new_token()
        if not is_valid_token(token):
            raise ValueError("the token factory made a malformed token")
        digest = _digest(token)
        expires = self._clock.seconds() + ttl
        self._add(
            digest,
            TokenGrant(
                vm_id,
                protocol,
                role,
                expires,
                bool(single_use),
                digest[:TOKEN_ID_CHARS],
                holder,
            ),
        )
        try:
            self.save()
        except OSError:
            self._drop(digest)
            raise
        if self._holding:
            self._unsaved.append(digest)
        return token, expires

    def lookup(self, token: object) -> TokenGrant | None:
        """The grant of a live token, or None; changes nothing."""
        if not is_valid_token(token):
            return None
        assert isinstance(token, str)
        grant = self._grants.get(_digest(token))
        if grant is None or grant.expires <= self._clock.seconds():
            return None
        return grant

    def use(
        self,
        token: object,
        *,
        vm_id: str | None = None,
        protocol: str | None = None,
    ) -> TokenGrant | None:
        """The grant of a live token, consuming it if single-use; None for an
        unknown, expired or used token.

        With ``vm_id`` and/or ``protocol``, a token granted for another VM or
        console is None as well, and is not consumed.  A consumed token is
        forgotten at once (and in the file): it answers None from then on.
        """
        grant = self.lookup(token)
        if grant is None:
            return None
        if vm_id is not None and grant.vm_id != vm_id:
            return None
        if protocol is not None and grant.protocol != protocol:
            return None
        if grant.single_use:
            assert isinstance(token, str)
            self._drop(_digest(token))
            self._save_or_log(f"that token {grant.id} was used")
        return grant

    def revoke_vm(self, vm_id: str) -> int:
        """Forget every token of ``vm_id``; how many there were (expired too)."""
        gone = [d for d, g in self._grants.items() if g.vm_id == vm_id]
        for digest in gone:
            self._drop(digest)
        if gone:
            self._save_or_log(f"that the tokens of {vm_id} were revoked")
        return len(gone)

    def prune(self) -> int:
        """Forget expired tokens; how many."""
        now = self._clock.seconds()
        gone = [d for d, g in self._grants.items() if g.expires <= now]
        for digest in gone:
            self._drop(digest)
        if gone:
            self._save_or_log("that expired tokens were pruned")
        return len(gone)

    # -- persistence -------------------------------------------------------------

    def load(self) -> int:
        """Read the file (if any), dropping expired tokens; how many live ones."""
        if self._path is None:
            return 0
        self._grants = {
            digest: TokenGrant(
                entry["vmId"],
                entry["protocol"],
                entry["role"],
                float(entry["expires"]),
                entry["singleUse"],
                digest[:TOKEN_ID_CHARS],
            )
            for digest, entry in load_records(self._path).items()
        }
        self._held = {}
        self.prune()
        return len(self._grants)

    def _add(self, digest: str, grant: TokenGrant) -> None:
        self._grants[digest] = grant
        if grant.holder:
            self._held[grant.holder] = self._held.get(grant.holder, 0) + 1

    def _drop(self, digest: str) -> None:
        grant = self._grants.pop(digest)
        if grant.holder:
            left = self._held[grant.holder] - 1
            if left:
                self._held[grant.holder] = left
            else:
                del self._held[grant.holder]

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Changes inside reach the file at ``sync``, all in one write,
        not one by one (a multicall's mints, each of which would rewrite it)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def sync(self) -> None:
        """Write what ``batch`` held; OSError, and then the tokens minted in
        it are dropped (their answers must not go out)."""
        if not self._dirty:
            return
        minted, self._unsaved = self._unsaved, []
        try:
            self.save()
        except OSError:
            for digest in minted:
                if digest in self._grants:
                    self._drop(digest)
            raise

    def save(self) -> None:
        if self._holding:
            self._dirty = True
            return
        if self._path is not None:
            # A grant never changes: its JSON is made once (TextCache).
            tokens = self._texts.json_map(self._grants, TokenGrant.to_record)
            save_records(self._path, tokens)
        self._dirty = False

    def _save_or_log(self, what: str) -> None:
        # Forgetting a token must not fail: it is forgotten here at once; only
        # a restart before the next good save could bring it back.
        try:
            self.save()
        except OSError as e:
            log.error(
                "cannot record {what} in {path}: {err}",
                what=what,
                path=self._path,
                err=e.strerror,
            )
