"""The ``vdsmconsole`` command: serve, pki init, demo.

Every failure a user can cause (a bad flag, a bad configuration file, a
missing certificate, a busy port) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    FileLogObserver,
    Logger,
    formatEventAsClassicLogText,
    formatTime,
    globalLogBeginner,
)

from vdsmconsole import __version__
from vdsmconsole.demoscreen import DemoScreen, start_demo_screen
from vdsmconsole.pki import init_pki
from vdsmconsole.server.config import Config, ConfigError, check_values, load_config
from vdsmconsole.server.policy import DEFAULT_UNIX_PATHS
from vdsmconsole.server.service import ConsoleService, StartupError
from vdsmconsole.server.tls.files import TLSConfigError
from vdsmconsole.server.web.demo import browser_urls, find_assets
from vdsmconsole.spec import DEFAULT_PORT, RPC_PATH, STREAM_PATH, ConsoleSpec

EXIT_USAGE = 2


def fail(message: str) -> None:
    print(f"vdsmconsole: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--bind", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help=f"TLS port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--pki",
        type=Path,
        help="directory in VDSM's layout: certs/cacert.pem, certs/vdsmcert.pem, "
        "keys/vdsmkey.pem",
    )
    parser.add_argument("--state-dir", type=Path, help="registry and console logs")


def config_from_args(args: argparse.Namespace) -> Config:
    """The file first, flags on top."""
    config = load_config(args.config)
    if args.pki is not None:
        config = config.with_pki(args.pki)
    changes: dict[str, Any] = {}
    if args.bind is not None:
        changes["bind"] = args.bind
    if args.port is not None:
        changes["port"] = args.port
    if args.state_dir is not None:
        changes["state_dir"] = args.state_dir
    return check_values(replace(config, **changes))


class _SecondStamps:
    """Twisted's log timestamps (whole seconds), made once a second rather
    than once a line: a burst of creates logs three lines each."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._second, self._text = second, formatTime(second)
        return self._text


def start_logging() -> None:
    stamps = _SecondStamps()
    observer = FileLogObserver(
        sys.stderr, lambda event: formatEventAsClassicLogText(event, stamps)
    )
    globalLogBeginner.beginLoggingTo(
        [observer],  # type: ignore[list-item]
        redirectStandardIO=False,
    )


def run_service(config: Config, after_start: Any = None) -> int:
    """Start the server, run the reactor until SIGTERM/SIGINT, stop gracefully."""
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor  # the zope interfaces confuse mypy here
    service = ConsoleService(config, reactor)
    try:
        service.startService()
    except (StartupError, TLSConfigError, ConfigError) as e:
        fail(str(e))
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    install_stop_signals(reactor)
    # Twisted sets its own SIGTERM handler as the reactor starts: ours again.
    reactor.callWhenRunning(install_stop_signals, reactor)
    install_reload_signal(service, reactor)
    if after_start is not None:
        reactor.callWhenRunning(after_start, service)
    reactor.run()
    return 0


def install_stop_signals(reactor: Any) -> None:
    """SIGINT and SIGTERM stop the reactor, and so the service, gracefully.

    Set here, not left to Twisted: a program started by a script as a
    background job, or by some service managers, inherits SIGINT ignored;
    Python then installs no KeyboardInterrupt handler, and Twisted, which
    replaces only that one, none of its own, so Ctrl-C would do nothing.
    """

    def stop(signum: int) -> None:
        Logger(namespace="vdsmconsole").info(
            "received {name}, shutting down", name=signal.Signals(signum).name
        )
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while already stopping

    def on_signal(signum: int, frame: Any) -> None:
        # Between two bytecodes of anything: hand the work to the reactor.
        reactor.callFromThread(stop, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)


def install_reload_signal(service: Any, reactor: Any) -> None:
    """SIGHUP re-reads the TLS files (``service.reload()``), connections stay.

    The handler runs between two bytecodes of whatever the main thread was
    doing, so it only hands the work to the reactor; callFromThread is the
    reactor's one entry point that is safe from there, and it wakes the loop.
    """

    def on_sighup(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.reload)

    signal.signal(signal.SIGHUP, on_sighup)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as e:
        fail(str(e))
    start_logging()
    return run_service(config)


def cmd_pki_init(args: argparse.Namespace) -> int:
    try:
        paths = init_pki(args.dir, hostname=args.hostname, force=args.force)
    except (FileExistsError, OSError) as e:
        fail(str(e))
    print(f"CA:     {paths.ca_cert}")
    print(f"server: {paths.server_cert} (key {paths.server_key})")
    print(f"client: {paths.client_cert} (key {paths.client_key})")
    return 0


def demo_commands(
    pki: Path, port: int, vm_id: str, screen: bool = False
) -> list[tuple[str, str]]:
    """Copy-paste commands that work as printed against the demo server
    (``screen``: the demo guest has a VNC screen, else only its serial)."""
    ca = shlex.quote(str(pki / "certs/cacert.pem"))
    cert = shlex.quote(str(pki / "certs/enginecert.pem"))
    key = shlex.quote(str(pki / "keys/enginekey.pem"))
    base = f"https://127.0.0.1:{port}"
    body = "<?xml version='1.0'?><methodCall><methodName>ping</methodName></methodCall>"
    python = (
        "import ssl, xmlrpc.client as x; "
        f"c = ssl.create_default_context(cafile={str(pki / 'certs/cacert.pem')!r}); "
        f"c.load_cert_chain({str(pki / 'certs/enginecert.pem')!r}, "
        f"{str(pki / 'keys/enginekey.pem')!r}); "
        f"print(x.ServerProxy({base + RPC_PATH!r}, context=c).list(True))"
    )
    client = (
        f"{installed_command('vdsmconsole-client', 'vdsmconsole.client.cli')} "
        f"--pki {shlex.quote(str(pki))} 127.0.0.1:{port}"
    )
    protocol, what = ("vnc", "screen") if screen else ("serial", "serial console")
    return [
        (
            "XML-RPC ping with curl (HTTP/2)",
            f"curl --cacert {ca} --cert {cert} --key {key} "
            f"-H 'Content-Type: text/xml' --data {shlex.quote(body)} {base}{RPC_PATH}",
        ),
        (
            "list the consoles with Python's xmlrpc.client",
            f"python3 -c {shlex.quote(python)}",
        ),
        (
            "follow the demo guest's console with wget",
            f"wget -q -O - --certificate={cert} --private-key={key} "
            f"--ca-certificate={ca} '{base}{STREAM_PATH}{vm_id}?tail=4096'",
        ),
        (
            "attach to the demo guest's console (^] leaves)",
            f"{client} console {vm_id}",
        ),
        (
            "type a command into it with curl",
            f"printf 'count 5\\n' | curl --cacert {ca} --cert {cert} --key {key} "
            f"-T - {base}{STREAM_PATH}{vm_id}",
        ),
        (
            f"a local port for a viewer of the demo guest's {what} (^C stops it)",
            f"{client} tunnel {vm_id} --protocol {protocol}",
        ),
        (
            f"a console token for its {what}",
            f"{client} remote-console {vm_id} --protocol {protocol}",
        ),
    ]


def installed_command(script: str, module: str) -> str:
    """How a new shell runs one of our console scripts: by its absolute path.

    pip puts console scripts beside the interpreter (a venv's ``bin/``), which
    a new shell's PATH does not have.  Without the script (running from a
    source tree), the interpreter runs the module, with the tree on its path.
    """
    beside = Path(sys.executable).parent / script
    if beside.is_file() and os.access(beside, os.X_OK):
        return shlex.quote(str(beside.absolute()))
    found = shutil.which(script)
    if found:
        return shlex.quote(os.path.abspath(found))
    tree = Path(__file__).resolve().parent.parent
    return (
        f"PYTHONPATH={shlex.quote(str(tree))} "
        f"{shlex.quote(os.path.abspath(sys.executable))} -m {module}"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vdsmconsole-demo-"))
    pki = workdir / "pki"
    init_pki(pki, hostname="localhost")
    assets = find_assets(args.assets)
    config = Config(
        web_enabled=assets is not None,
        web_any_port_if_busy=True,  # 6100, or any free port (two demos)
        web_assets=str(assets or ""),
        bind=args.bind,
        port=args.port if args.port is not None else DEFAULT_PORT,
        any_port_if_busy=args.port is None,
        state_dir=workdir / "state",
        spawn_commands={"demo": (sys.executable, "-m", "vdsmconsole.demoguest")},
        # The demo screen's VNC socket (demoscreen.py) lives there.
        unix_paths=(*DEFAULT_UNIX_PATHS, f"{workdir}/**"),
    ).with_pki(pki)
    vm_id = "demo"
    screen = start_demo_screen(workdir)

    def after_start(service: Any) -> None:
        graphics = (screen.endpoint,) if isinstance(screen, DemoScreen) else ()
        service.context.registry.create(
            vm_id, ConsoleSpec(type="spawn", command="demo"), graphics=graphics
        )
        port = service.context.port
        print(f"vdsmconsole {__version__} demo on https://127.0.0.1:{port}")
        print(f"throwaway PKI and state in {workdir} (removed on exit)")
        if isinstance(screen, str):
            print(screen)
        else:
            pid = screen.process.pid
            print(f"the demo guest's screen is qemu's BIOS over VNC (qemu pid {pid})")
        print(f"a demo guest runs as console {vm_id!r}. Try, in another terminal:\n")
        for title, command in demo_commands(pki, port, vm_id, bool(graphics)):
            print(f"# {title}\n{command}\n")
        if assets is None:
            print(
                "no browser consoles: their assets are not installed (tools/assets.sh)"
            )
        else:
            print("In a browser (accept the throwaway CA's certificate warning):\n")
            for title, url in browser_urls(
                service.context, "127.0.0.1", vm_id, bool(graphics)
            ):
                print(f"# {title}\n{url}\n")
        print("Ctrl-C stops the demo.", flush=True)

    start_logging() if args.verbose else None
    try:
        return run_service(config, after_start)
    finally:
        if isinstance(screen, DemoScreen):
            screen.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdsmconsole", description="Console server for hypervisor hosts."
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    add_server_flags(serve)
    serve.set_defaults(func=cmd_serve)

    pki = commands.add_parser("pki", help="certificates")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_commands.add_parser(
        "init", help="make a CA, a server and an engine certificate in DIR"
    )
    init.add_argument("dir", type=Path)
    init.add_argument("--hostname", help="server name (default: this host's name)")
    init.add_argument("--force", action="store_true", help="overwrite an existing PKI")
    init.set_defaults(func=cmd_pki_init)

    demo = commands.add_parser("demo", help="a throwaway server with a demo guest")
    demo.add_argument("--bind", default="127.0.0.1")
    demo.add_argument("--port", type=int, help=f"default {DEFAULT_PORT}, or a free one")
    demo.add_argument(
        "--assets", type=Path, help="browser assets (default: tools/assets.sh's)"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="show the log")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))
