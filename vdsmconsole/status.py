"""VDSM's status dicts: every RPC answers ``{"status": {code, message}, ...}``.

Pure: no Twisted here.  Errors travel as ``StatusError`` until the RPC layer
turns them into a status dict; only unparseable calls become Faults.
"""

from __future__ import annotations

import enum
from typing import Any


class Code(enum.IntEnum):
    DONE = 0
    NO_VM = 1
    EXIST = 4
    MISS_PARAM = 11
    UNEXPECTED = 16
    NO_IMPL = 44
    # Ours: VDSM's table has no such cases.
    CONSOLE_DOWN = 100
    DENIED = 101
    CONSOLE_BUSY = 102
    NOT_ALLOWED = 103
    NO_CONSOLE = 104
    NO_TOKEN = 105


MESSAGES = {
    Code.DONE: "Done",
    Code.NO_VM: "Virtual machine does not exist",
    Code.EXIST: "Virtual machine already exists",
    Code.MISS_PARAM: "Missing or malformed parameter",
    Code.UNEXPECTED: "Unexpected exception",
    Code.NO_IMPL: "Not implemented in this configuration",
    Code.CONSOLE_DOWN: "Console is not connected",
    Code.DENIED: "Permission denied",
    Code.CONSOLE_BUSY: "Guest is not taking input; retry later",
    Code.NOT_ALLOWED: "Console target not allowed by the server's configuration",
    Code.NO_CONSOLE: "The VM has no console of that protocol",
    Code.NO_TOKEN: "Unknown or expired console token",
}


class StatusError(Exception):
    """An RPC fails with a VDSM status code and a message for the caller."""

    def __init__(self, code: Code, message: str | None = None) -> None:
        self.code = code
        self.message = message or MESSAGES[code]
        super().__init__(f"{int(code)}: {self.message}")


def no_vm_message(vm_id: str = "") -> str:
    """The one wording for a vmId that no console has (RPC status, stream 404,
    the client's message): VDSM's, with the vmId when there is one."""
    return f"{MESSAGES[Code.NO_VM]}: {vm_id}" if vm_id else MESSAGES[Code.NO_VM]


def status(code: Code = Code.DONE, message: str | None = None) -> dict[str, Any]:
    return {"status": {"code": int(code), "message": message or MESSAGES[code]}}


def success(**payload: Any) -> dict[str, Any]:
    result = status(Code.DONE)
    result.update(payload)
    return result


def failure(error: StatusError) -> dict[str, Any]:
    return status(error.code, error.message)


def wire_safe(value: Any) -> Any:
    """Drop None values from dicts and lists: XML-RPC has no None on our wire."""
    if isinstance(value, dict):
        return {str(k): wire_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [wire_safe(v) for v in value if v is not None]
    return value
