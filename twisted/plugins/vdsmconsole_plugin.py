"""``twistd -n vdsmconsole [--config FILE] [--port N] ...``: the same server."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", None, None, "TOML configuration file"],
        ["bind", None, None, "address to listen on"],
        ["port", None, None, "TLS port", int],
        ["pki", None, None, "directory in VDSM's PKI layout"],
        ["state-dir", None, None, "registry and console logs"],
    ]


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "vdsmconsole"
    description = "Guest consoles and VDSM-style XML-RPC on one TLS port."
    options = Options

    def makeService(self, options: Any) -> Any:
        import argparse
        from pathlib import Path

        from vdsmconsole.cli import config_from_args, fail, install_reload_signal
        from vdsmconsole.server.config import ConfigError
        from vdsmconsole.server.service import (
            ConsoleService,
            StartupError,
            prepare_state_dir,
        )
        from vdsmconsole.server.tls.files import TLSConfigError, server_options

        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        args = argparse.Namespace(
            config=path(options["config"]),
            bind=options["bind"],
            port=options["port"],
            pki=path(options["pki"]),
            state_dir=path(options["state-dir"]),
        )
        try:
            config = config_from_args(args)
            # Check the TLS files now, before twistd starts logging: a bad
            # file or value is one line and exit 2, as with `vdsmconsole serve`,
            # not a traceback from startService.
            server_options(
                config.ca_file, config.cert_file, config.key_file, config.crl_path
            )
            prepare_state_dir(config.state_dir)
        except (ConfigError, TLSConfigError, StartupError) as e:
            fail(str(e))

        class TwistdService(ConsoleService):
            """A listener that cannot listen: one line and exit 2, as `serve`
            says it, not twistd's traceback of startService."""

            def startService(self) -> None:
                try:
                    super().startService()
                except StartupError as e:
                    fail(str(e))

        service = TwistdService(config)
        install_reload_signal(service, service.reactor)  # SIGHUP: TLS files
        return service


serviceMaker = ServiceMaker()
