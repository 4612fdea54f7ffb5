"""The token store's place in the server: made with the context, loaded at
start, pruned periodically, and told when a VM is destroyed.

``service.py`` calls these few functions, so that the assembly of the server
says where tokens fit without knowing how they work.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.logger import Logger

from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.tokens.audit import record_revoke
from vdsmconsole.server.tokens.store import TokenStore

__all__ = ["PRUNE_SECONDS", "TOKEN_FILE", "make_token_store", "start_tokens"]

log = Logger(namespace="vdsmconsole.tokens")

TOKEN_FILE = "tokens.json"  # noqa: S105 - a file name, not a secret
# How often expired tokens leave the store and its file.  They are refused
# from the moment they expire; pruning only bounds what is kept.
PRUNE_SECONDS = 60.0


def make_token_store(state_dir: Any, reactor: Any) -> TokenStore:
    """The server's store: ``<state_dir>/tokens.json``, time from the reactor."""
    return TokenStore(reactor, state_dir / TOKEN_FILE)


def revoker(tokens: TokenStore, audit: AuditLog) -> Any:
    """A registry ``destroyed`` hook: a destroyed VM's tokens are revoked."""

    def revoke(vm_id: str) -> None:
        count = tokens.revoke_vm(vm_id)
        if count:
            record_revoke(audit, "-", vm_id, count, "destroy")

    return revoke


def start_tokens(tokens: TokenStore, reactor: Any) -> task.LoopingCall:
    """Load the file (dropping expired tokens) and prune every PRUNE_SECONDS;
    the caller stops the returned LoopingCall when the server stops."""
    live = tokens.load()
    if live:
        log.info("console tokens: {n} live restored", n=live)
    pruning = task.LoopingCall(tokens.prune)
    pruning.clock = reactor
    pruning.start(PRUNE_SECONDS, now=False)
    return pruning
