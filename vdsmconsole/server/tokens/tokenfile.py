"""``<state_dir>/tokens.json``: the live console tokens, as SHA-256 only.

Written whole to a temporary file (created mode 0600, as the file itself),
fsynced and renamed over the old one, as ``core/registry.py`` writes the
registry: a crash leaves the old or the new file, never half of one.

The file maps each token's SHA-256 (hex) to ``{vmId, protocol, role,
expires, singleUse}``; the token itself is never in it.  A file that cannot
be read, or an entry that is malformed, is one log line and left out: a lost
token only means asking for a new one, never a console opened wrongly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from vdsmconsole.core.jsonfile import json_object, write_atomically
from vdsmconsole.spec import REMOTE_PROTOCOLS, is_valid_vm_id

__all__ = ["FORMAT_VERSION", "load_records", "save_records"]

log = Logger(namespace="vdsmconsole.tokens")

FORMAT_VERSION = 1
FILE_MODE = 0o600
DIGEST = re.compile(r"[0-9a-f]{64}")
ROLES = ("viewer", "operator")


def save_records(path: Path, tokens: str) -> None:
    """Replace the file with ``tokens``, the JSON text of a map of SHA-256
    hex -> entry (``TextCache.json_map``); OSError if it cannot be written."""
    text = json_object({"version": str(FORMAT_VERSION), "tokens": tokens})
    write_atomically(path, text, FILE_MODE)


def _valid(digest: object, entry: object) -> bool:
    if not isinstance(digest, str) or DIGEST.fullmatch(digest) is None:
        return False
    if not isinstance(entry, dict):
        return False
    expires = entry.get("expires")
    return (
        is_valid_vm_id(entry.get("vmId"))
        and entry.get("protocol") in REMOTE_PROTOCOLS
        and entry.get("role") in ROLES
        and isinstance(expires, int | float)
        and not isinstance(expires, bool)
        and isinstance(entry.get("singleUse"), bool)
    )


def load_records(path: Path) -> dict[str, dict[str, Any]]:
    """The file's well-formed entries; {} if there is no file or it is unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.error("cannot read console tokens from {path}: {err}", path=path, err=e)
        return {}
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict):
        log.error("no console tokens in {path}: not a token file", path=path)
        return {}
    records = {d: e for d, e in tokens.items() if _valid(d, e)}
    if len(records) != len(tokens):
        log.error(
            "{n} malformed console token entries in {path} left out",
            n=len(tokens) - len(records),
            path=path,
        )
    return records
