"""The configuration file, its example in contrib/, and how the CLI reports errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from tests.serverproc import run_to_exit, serve_flags
from vdsmconsole.pki import PkiPaths
from vdsmconsole.server.config import (
    DEFAULT_PORT,
    FIELDS,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "contrib" / "vdsmconsole.conf.example"

# Keys whose value must be a positive, finite number (sizes and times).
POSITIVE_KEYS = [
    ("server", "rpc_max_body"),
    ("server", "shutdown_timeout"),
    ("console", "ring_bytes"),
    ("console", "log_file_bytes"),
    ("console", "reconnect_initial"),
    ("console", "reconnect_max"),
    ("console", "client_buffer_bytes"),
]


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(text))


def write(tmp_path: Path, text: str | bytes, name: str = "c.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


# -- defaults and parsing -------------------------------------------------------


def test_defaults():
    """Without a file the server uses VDSM's port, all addresses and /etc/pki/vdsm."""
    config = load_config(None)
    assert config == Config()
    assert config.port == DEFAULT_PORT == 54321
    assert config.bind == "0.0.0.0"
    assert config.state_dir == Path("/var/lib/vdsmconsole")
    assert config.ca_file == Path("/etc/pki/vdsm/certs/cacert.pem")
    assert config.cert_file == Path("/etc/pki/vdsm/certs/vdsmcert.pem")
    assert config.key_file == Path("/etc/pki/vdsm/keys/vdsmkey.pem")
    assert dict(config.spawn_commands) == {}


def test_every_field_is_a_config_attribute_of_its_type():
    """Each FIELDS entry names a Config attribute whose default has its type."""
    defaults = Config()
    for (section, key), (attr, kind) in FIELDS.items():
        assert isinstance(getattr(defaults, attr), kind), f"{section}.{key}"


def test_empty_file_gives_defaults(tmp_path):
    """An empty file changes nothing."""
    assert load_config(write(tmp_path, "")) == Config()


def test_file_sets_every_section():
    """Values from [server], [tls] and [console] land on the right attributes."""
    config = parse(
        """
        [server]
        bind = "127.0.0.1"
        port = 12345
        state_dir = "/srv/consoles"
        rpc_max_body = 4096
        shutdown_timeout = 2
        [tls]
        ca = "/p/ca.pem"
        cert = "/p/cert.pem"
        key = "/p/key.pem"
        [console]
        ring_bytes = 65536
        log_file_bytes = 100000
        log_keep_files = 0
        reconnect_initial = 1
        reconnect_max = 2.5
        client_buffer_bytes = 1024
        """
    )
    assert config.bind == "127.0.0.1"
    assert config.port == 12345
    assert config.state_dir == Path("/srv/consoles")
    assert config.rpc_max_body == 4096
    assert config.shutdown_timeout == 2.0
    assert isinstance(config.shutdown_timeout, float)
    assert (config.ca_file, config.cert_file, config.key_file) == (
        Path("/p/ca.pem"),
        Path("/p/cert.pem"),
        Path("/p/key.pem"),
    )
    assert config.ring_bytes == 65536
    assert config.log_file_bytes == 100000
    assert config.log_keep_files == 0
    assert config.reconnect_initial == 1.0
    assert config.reconnect_max == 2.5
    assert config.client_buffer_bytes == 1024


def test_partial_file_keeps_other_defaults():
    """Setting one key leaves every other key at its default."""
    assert parse("[server]\nport = 0\n") == Config(port=0)


def test_file_applies_on_top_of_a_base():
    """parse_config starts from the given base, not from the defaults."""
    base = Config(bind="::1", port=1)
    assert parse_config({"server": {"port": 2}}, base) == Config(bind="::1", port=2)


def test_with_pki_points_at_vdsm_layout(tmp_path):
    """with_pki sets the CA, certificate and key to VDSM's layout under DIR only."""
    config = Config(port=7).with_pki(tmp_path)
    assert config.ca_file == tmp_path / "certs/cacert.pem"
    assert config.cert_file == tmp_path / "certs/vdsmcert.pem"
    assert config.key_file == tmp_path / "keys/vdsmkey.pem"
    assert config.port == 7
    paths = PkiPaths(tmp_path)
    assert (config.ca_file, config.cert_file, config.key_file) == (
        paths.ca_cert,
        paths.server_cert,
        paths.server_key,
    )


def test_spawn_commands_parsed_as_argv_tuples():
    """[spawn.commands] maps each name to its argv as a tuple of strings."""
    config = parse(
        """
        [spawn.commands]
        demo = ["/usr/bin/python3", "-m", "vdsmconsole.demoguest"]
        shell = ["/bin/sh"]
        """
    )
    assert dict(config.spawn_commands) == {
        "demo": ("/usr/bin/python3", "-m", "vdsmconsole.demoguest"),
        "shell": ("/bin/sh",),
    }


@pytest.mark.parametrize("text", ["", "[spawn]\n", "[spawn.commands]\n"])
def test_no_spawn_commands_by_default(text):
    """Without named commands no spawn command is allowed."""
    assert dict(parse(text).spawn_commands) == {}


# -- errors name the key --------------------------------------------------------


BAD = [
    ("[nosuch]\nx = 1\n", "nosuch"),
    ("server = 1\n", "server"),
    ("[server]\nprot = 1\n", "server.prot"),
    ("[tls]\ncafile = '/x'\n", "tls.cafile"),
    ("[server]\nport = '54321'\n", "server.port"),
    ("[server]\nport = true\n", "server.port"),
    ("[server]\nport = 1.5\n", "server.port"),
    ("[server]\nport = 65536\n", "server.port"),
    ("[server]\nport = -1\n", "server.port"),
    ("[server]\nbind = 1\n", "server.bind"),
    ("[server]\nstate_dir = ''\n", "server.state_dir"),
    ("[server]\nstate_dir = 5\n", "server.state_dir"),
    ("[tls]\nkey = ['/x']\n", "tls.key"),
    ("[console]\nlog_keep_files = -1\n", "console.log_keep_files"),
    ("[console]\nring_bytes = 1.5\n", "console.ring_bytes"),
    ("[server]\nshutdown_timeout = nan\n", "server.shutdown_timeout"),
    ("[server]\nshutdown_timeout = inf\n", "server.shutdown_timeout"),
    ("[console]\nreconnect_max = 'soon'\n", "console.reconnect_max"),
    ("[console]\ncoalesce_delay = 0.026\n", "console.coalesce_delay"),
    ("[console]\ncoalesce_delay = 3\n", "console.coalesce_delay"),
    ("[console]\ncoalesce_delay = -0.001\n", "console.coalesce_delay"),
    ("[console]\ncoalesce_delay = nan\n", "console.coalesce_delay"),
    ("[console]\ninteractive_window = -1\n", "console.interactive_window"),
    ("[console]\ninteractive_window = inf\n", "console.interactive_window"),
    ("[console]\ninteractive_window = nan\n", "console.interactive_window"),
    ("[spawn]\nfoo = 1\n", "spawn.foo"),
    ("[spawn]\ncommands = 1\n", "spawn.commands"),
    ("[spawn.commands]\ndemo = []\n", "spawn.commands.demo"),
    ("[spawn.commands]\ndemo = '/bin/sh'\n", "spawn.commands.demo"),
    ("[spawn.commands]\ndemo = ['/bin/sh', 1]\n", "spawn.commands.demo"),
    ("[spawn.commands]\ndemo = ['']\n", "spawn.commands.demo"),
]
BAD += [(f"[{s}]\n{k} = 0\n", f"{s}.{k}") for s, k in POSITIVE_KEYS]
BAD += [(f"[{s}]\n{k} = -1\n", f"{s}.{k}") for s, k in POSITIVE_KEYS]


@pytest.mark.parametrize("text,key", BAD)
def test_bad_value_raises_config_error_naming_the_key(text, key):
    """Unknown sections/keys, wrong types and out-of-range values name the key."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith(f"{key}:"), str(info.value)


@pytest.mark.parametrize("section,key", sorted(FIELDS))
def test_wrong_type_for_every_key(section, key):
    """Every key refuses a value of the wrong TOML type."""
    _attr, kind = FIELDS[section, key]
    wrong = "'text'" if kind in (int, float) else "[1]"
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}:"):
        parse(f"[{section}]\n{key} = {wrong}\n")


@pytest.mark.parametrize(
    "content",
    [b"[server\n", b"port = = 1\n", b"[server]\nport = \xff\n"],
    ids=["unclosed", "syntax", "not-utf8"],
)
def test_unreadable_file_raises_config_error_naming_it(tmp_path, content):
    """A file that is not valid UTF-8 TOML is a ConfigError naming the file."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


def test_missing_file_raises_config_error_naming_it(tmp_path):
    """A configuration path that does not exist is a ConfigError naming it."""
    path = tmp_path / "absent.conf"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


# -- the example file in contrib/ ------------------------------------------------


def test_example_documents_exactly_the_fields_with_defaults():
    """contrib's example sets every FIELDS key, and only those, to its default."""
    data = tomllib.loads(EXAMPLE.read_text())
    documented = {(s, k) for s, table in data.items() for k in table}
    assert documented == set(FIELDS)
    defaults = Config()
    for (section, key), (attr, kind) in FIELDS.items():
        value = data[section][key]
        assert kind(value) == getattr(defaults, attr), f"{section}.{key}"
    assert load_config(EXAMPLE) == defaults


def test_example_has_a_comment_for_every_key():
    """Each key in the example is preceded by a comment line saying what it does."""
    lines = EXAMPLE.read_text().splitlines()
    for section, key in FIELDS:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        assert lines[index - 1].startswith("# "), f"{section}.{key} has no comment"


def test_example_spawn_block_parses_when_uncommented():
    """Uncommenting the [spawn.commands] example allows exactly the demo command."""
    text = EXAMPLE.read_text()
    assert "# [spawn.commands]" in text
    uncommented = re.sub(
        r"^# (\[spawn\.commands\]|\w+ = \[.*\])$", r"\1", text, flags=re.M
    )
    config = parse(uncommented)
    # The demo guest's console script, found beside this interpreter.
    script = Path(sys.executable).parent.absolute() / "vdsmconsole-demoguest"
    assert dict(config.spawn_commands) == {"demo": (str(script),)}


def test_bare_spawn_program_is_found_beside_the_interpreter():
    """A bare argv[0] beside the server's Python is made absolute; others stay."""
    beside = Path(sys.executable).parent.absolute()
    config = parse(
        textwrap.dedent(
            """
            [spawn.commands]
            guest = ["vdsmconsole-demoguest", "--fast"]
            python = ["python3", "-m", "vdsmconsole.demoguest"]
            cat = ["/bin/cat"]
            other = ["no-such-program-anywhere", "x"]
            """
        )
    )
    assert dict(config.spawn_commands) == {
        "guest": (str(beside / "vdsmconsole-demoguest"), "--fast"),
        "python": (str(beside / "python3"), "-m", "vdsmconsole.demoguest"),
        "cat": ("/bin/cat",),
        "other": ("no-such-program-anywhere", "x"),
    }


# -- through the command line ----------------------------------------------------


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"[server]\nprot = 1\n", "server.prot"),
        (b"[server]\nport = 'x'\n", "server.port"),
        (b"[console]\nring_bytes = 0\n", "console.ring_bytes"),
        (b"[server]\nport = \xff\n", "c.toml"),
        (b"[server\n", "c.toml"),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range", "not-utf8", "not-toml"],
)
@pytest.mark.e2e  # runs the real program
def test_cli_bad_config_is_one_line_exit_2(tmp_path, content, needle):
    """serve --config BAD prints one line naming the key (or file) and exits 2."""
    result = run_to_exit("serve", "--config", str(write(tmp_path, content)))
    assert_one_line_exit_2(result, needle)


@pytest.mark.e2e  # runs the real program
def test_cli_nonexistent_config_is_one_line_exit_2(tmp_path):
    """serve --config with a path that does not exist: one line naming it, exit 2."""
    path = tmp_path / "absent.conf"
    assert_one_line_exit_2(run_to_exit("serve", "--config", str(path)), str(path))


@pytest.mark.e2e  # runs the real program
def test_cli_out_of_range_flag_is_one_line_exit_2():
    """--port 70000 is one line naming server.port, exit 2."""
    assert_one_line_exit_2(run_to_exit("serve", "--port", "70000"), "server.port")


@pytest.mark.e2e  # runs the real program
def test_cli_missing_certificate_is_one_line_exit_2(tmp_path, pki):
    """serve with a PKI missing the server certificate: one line naming it, exit 2."""
    root = tmp_path / "pki"
    shutil.copytree(pki.root, root)
    missing = PkiPaths(root).server_cert
    missing.unlink()
    result = run_to_exit("serve", *serve_flags(root, tmp_path / "state"))
    assert_one_line_exit_2(result, str(missing))


def test_coalescing_keys_reach_every_console_source(tmp_path):
    """[console] coalesce_delay and interactive_window are what sources use."""
    from twisted.internet.testing import MemoryReactorClock

    from vdsmconsole.server.libvirt.setup import source_factory
    from vdsmconsole.server.service import make_console_factory
    from vdsmconsole.spec import ConsoleSpec

    config = parse_config(
        {"console": {"coalesce_delay": 0.02, "interactive_window": 0.5}},
        Config(state_dir=tmp_path),
    )
    assert (config.coalesce_delay, config.interactive_window) == (0.02, 0.5)
    spec = ConsoleSpec(type="unix", path=str(tmp_path / "never.sock"))
    reactor = MemoryReactorClock()  # the unix source never connects
    made = make_console_factory(config, reactor)("vm-1", spec, fresh=True).source
    moved = source_factory(config, reactor)(spec, None)
    for source in (made, moved):
        assert source._coalesceDelay == 0.02
        assert source._interactiveWindow == 0.5
