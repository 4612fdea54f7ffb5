"""The command line's grammar: HOST[:PORT], RPC arguments, escapes."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from vdsmconsole import __version__
from vdsmconsole.client.cli.output import PROG, UsageError
from vdsmconsole.spec import DEFAULT_PORT, METHODS, REMOTE_PROTOCOLS, REQUIRED

DEFAULT_ESCAPE = "^]"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


def parse_host_port(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address, ``0``."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if not match:
            raise UsageError(f"bad HOST[:PORT] {text!r}")
        host = match.group(1)
        port = int(match.group(2)) if match.group(2) else DEFAULT_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise UsageError(f"bad port in {text!r}")
        port = int(port_text)
    if not host or not 0 < port < 65536:
        raise UsageError(f"bad HOST[:PORT] {text!r}")
    return ("localhost" if host == "0" else host), port


def parse_listen(text: str) -> tuple[str, int]:
    """``--listen``: ``PORT``, ``ADDR:PORT`` or ``[v6]:PORT``; port 0 is any
    free one, and a bare port listens on 127.0.0.1."""
    match = re.fullmatch(r"(?:\[([^\]]+)\]:|([^:\[\]]+):)?(\d{1,5})", text)
    port = int(match.group(3)) if match else -1
    if match is None or not 0 <= port < 65536:
        raise UsageError(f"bad --listen {text!r} (ADDR:PORT, e.g. 127.0.0.1:5901)")
    return match.group(1) or match.group(2) or "127.0.0.1", port


# How a word for each XML-RPC type is read (base64 data is sent as a string,
# which the server takes as UTF-8).
KINDS = {
    "boolean": "bool",
    "int": "int",
    "string": "str",
    "base64": "str",
    "array": "list",
    "struct": "struct",
}
# Known methods: (parameter, kind, default) in wire order, from the server's spec.
SIGNATURES: dict[str, list[tuple[str, str, object]]] = {
    method: [(p.name, KINDS[p.type], p.default) for p in params]
    for method, params in METHODS.items()
}
# Struct members that stay strings whatever they look like.
STRING_KEYS = {"vmId", "path", "host", "command", "type", "data"}


KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def coerce(text: str) -> Any:
    """A command-line word as an XML-RPC value (see the module docstring)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text[:1] in ("{", "[", '"'):
        try:
            return json.loads(text)
        except ValueError as e:
            raise UsageError(f"bad JSON {text!r}: {e}") from None
    return text


def coerce_as(kind: str, name: str, text: str) -> Any:
    """A word for a known parameter of type ``kind``."""
    if kind == "str":
        return text
    if kind == "int":
        if not re.fullmatch(r"-?\d+", text):
            raise UsageError(f"{name} must be an integer, not {text!r}")
        return int(text)
    if kind == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise UsageError(f"{name} must be true or false, not {text!r}")
    if kind == "list":
        if text.startswith("["):
            value = coerce(text)
            if isinstance(value, list):
                return value
        return [item for item in text.split(",") if item]
    value = coerce(text)
    if kind == "struct" and not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, not {text!r}")
    return value


def _put(struct: dict[str, Any], key: str, text: str) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        inner = struct.setdefault(part, {})
        if not isinstance(inner, dict):
            raise UsageError(f"{key}: {part} is already a value")
        struct = inner
    last = parts[-1]
    struct[last] = text if last in STRING_KEYS else coerce(text)


def rpc_arguments(method: str, words: Sequence[str]) -> tuple[Any, ...]:
    """The positional XML-RPC arguments for ``method`` from command-line words."""
    signature = SIGNATURES.get(method)
    positional: list[str] = []
    named: dict[str, str] = {}
    struct: dict[str, Any] = {}
    literal = False
    for word in words:
        if word == "--" and not literal:
            literal = True  # what follows is positional, even with a '='
            continue
        key, sep, value = word.partition("=")
        if sep and KEY.fullmatch(key) and not literal:
            if signature is not None and key in [p[0] for p in signature]:
                named[key] = value
            else:
                _put(struct, key, value)
        else:
            positional.append(word)
    if signature is None:
        args: list[Any] = [coerce(w) for w in positional]
        return (*args, struct) if struct else tuple(args)
    struct_params = [p[0] for p in signature if p[1] == "struct"]
    if struct and not struct_params:
        names = ", ".join(p[0] for p in signature) or "none"
        raise UsageError(
            f"{method} has no parameter {next(iter(struct)).split('.')[0]!r} "
            f"(parameters: {names})"
        )
    if len(positional) > len(signature):
        raise UsageError(f"{method} takes at most {len(signature)} arguments")
    values: list[Any] = []
    given: list[bool] = []
    for index, (name, kind, default) in enumerate(signature):
        if index < len(positional):
            if name in named:
                raise UsageError(f"{method}: {name} given twice")
            values.append(coerce_as(kind, name, positional[index]))
        elif name in named:
            values.append(coerce_as(kind, name, named[name]))
        elif kind == "struct" and struct:
            values.append(struct)
        else:
            values.append(default)
            given.append(False)
            continue
        given.append(True)
    # Defaults after the last argument given need not be sent.
    while values and not given[len(values) - 1] and values[-1] is not REQUIRED:
        values.pop()
    for (name, _, _), value in zip(signature, values, strict=False):
        if value is REQUIRED:
            raise UsageError(f"{method} needs {name}")
    return tuple(values)


def parse_escape(text: str) -> int:
    """``^]``, ``^A``, ``^?`` or one ASCII character, as a byte value."""
    if len(text) == 2 and text[0] == "^":
        char = text[1].upper()
        if char == "?":
            return 0x7F
        if 0x40 <= ord(char) <= 0x5F:
            return ord(char) ^ 0x40
    if len(text) == 1 and ord(text) < 0x80:
        return ord(text)
    raise UsageError(f"bad escape character {text!r} (try '^]' or '^A')")


def escape_name(byte: int) -> str:
    if byte == 0x7F:
        return "^?"
    return f"^{chr(byte ^ 0x40)}" if byte < 0x20 else chr(byte)


EPILOG = """\
commands:
  list [table]                          the consoles
  console VMID [-e CHAR] [--read-only]  interactive (^] leaves)
  tail VMID [-f] [--offset N|--tail N]  retained output; -f follows
  send VMID TEXT... | send VMID -       type TEXT and a newline, or stdin
  tunnel VMID --protocol P [--listen ADDR:PORT]
                                        a local port for a native viewer
  remote-console VMID --protocol P [--ttl N] [--single-use] [--role R]
                                        a console token and its URL
  METHOD [ARG|key=value ...]            any XML-RPC method

environment: VDSMCONSOLE_CA, VDSMCONSOLE_CERT, VDSMCONSOLE_KEY, VDSMCONSOLE_PKI
exit status: the RPC's status code; 1 unknown console; 2 bad arguments;
255 server unreachable or TLS refused."""


def add_global_options(parser: argparse.ArgumentParser, after: bool = False) -> None:
    """The options that go before HOST (or, for convenience, after COMMAND)."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    parser.add_argument(
        "-s",
        "--ssl",
        action="store_true",
        **default,
        help="TLS (always on; accepted for vdsClient's sake)",
    )
    parser.add_argument(
        "--pki", type=Path, metavar="DIR", **default, help="a pki init directory"
    )
    parser.add_argument(
        "--ca", type=Path, metavar="FILE", **default, help="CA certificate"
    )
    parser.add_argument(
        "--cert", type=Path, metavar="FILE", **default, help="client certificate"
    )
    parser.add_argument(
        "--key", type=Path, metavar="FILE", **default, help="client key"
    )
    parser.add_argument(
        "--json", action="store_true", **default, help="print the raw struct"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS if after else 30.0,
        metavar="SECONDS",
        help="for connecting and answers (default 30; 0: wait forever)",
    )


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [options] [-s] HOST[:PORT] COMMAND [ARGS...]",
        description="vdsClient-style client for vdsmconsole.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("hostport", metavar="HOST[:PORT]")
    parser.add_argument("command", metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def _start_options(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--offset", type=int, metavar="N", help="from absolute offset N")
    start.add_argument("--tail", type=int, metavar="N", help="the last N bytes")


def command_parser(command: str) -> _Parser:
    parser = _Parser(prog=f"{PROG} HOST {command}")
    parser.add_argument("vm_id", metavar="VMID")
    if command == "console":
        parser.add_argument("-e", "--escape", default=DEFAULT_ESCAPE, metavar="CHAR")
        parser.add_argument("--read-only", action="store_true")
        _start_options(parser)
    elif command == "tail":
        parser.add_argument("-f", "--follow", action="store_true")
        _start_options(parser)
    elif command == "send":
        parser.add_argument("-n", "--no-newline", action="store_true")
        parser.add_argument("text", nargs="+", metavar="TEXT")
    elif command in ("tunnel", "remote-console"):
        parser.add_argument("--protocol", required=True, choices=REMOTE_PROTOCOLS)
    if command == "tunnel":
        parser.add_argument(
            "--listen",
            type=parse_listen,
            default=("127.0.0.1", 0),
            metavar="ADDR:PORT",
            help="where the local port listens (default 127.0.0.1, a free port)",
        )
        parser.add_argument("--token", help="a console token (remote-console)")
    elif command == "remote-console":
        parser.add_argument("--ttl", type=int, metavar="SECONDS")
        parser.add_argument("--single-use", action="store_true")
        parser.add_argument("--role", choices=("viewer", "operator"))
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    after = _Parser(add_help=False)
    add_global_options(after, after=True)
    late, args.args = after.parse_known_args(args.args)
    vars(args).update(vars(late))
    args.host, args.port = parse_host_port(args.hostport)
    if args.timeout < 0:
        raise UsageError("--timeout must not be negative")
    if args.command in ("console", "tail", "send", "tunnel", "remote-console"):
        sub = command_parser(args.command).parse_args(args.args)
        for name in ("offset", "tail"):
            if getattr(sub, name, None) is not None and getattr(sub, name) < 0:
                raise UsageError(f"--{name} must not be negative")
        if args.command == "console":
            sub.escape_byte = parse_escape(sub.escape)
        if getattr(sub, "ttl", None) is not None and sub.ttl <= 0:
            raise UsageError("--ttl must be a positive number of seconds")
        args.sub = sub
    elif args.command == "list" and args.args in ([], ["table"]):
        args.sub = None
    elif not METHOD.fullmatch(args.command):
        raise UsageError(f"unknown command {args.command!r}")
    else:
        args.rpc_args = rpc_arguments(args.command, args.args)
    return args
