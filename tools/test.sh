#!/usr/bin/env bash
# The whole suite from a fresh Debian machine: install what the tests need
# (Debian packages when missing, a virtual environment with the test extra),
# then lint, type-check and run pytest.  README.rst gives this command and
# .ci/run runs it.  Extra arguments go to pytest (e.g. -k ring, -m "not qemu").
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# command -> Debian package that provides it
declare -A NEEDS=(
    [qemu-system-x86_64]=qemu-system-x86
    [busybox]=busybox-static
    [curl]=curl
    [wget]=wget
    [tmux]=tmux
    [socat]=socat
    [openssl]=openssl
    [script]=bsdutils
    [prlimit]=util-linux
    [h2load]=nghttp2-client
    [chromium]=chromium
    [chromedriver]=chromium-driver
    [npm]=npm
    [promtool]=prometheus
    [systemd-analyze]=systemd
    # tests/test_e2e_libvirt.py starts a real libvirtd (as root).
    [libvirtd]=libvirt-daemon-driver-qemu
    [virtlogd]=libvirt-daemon
    [virsh]=libvirt-clients
)
# Perl module -> Debian package: Perl's RPC::XML is the strict XML-RPC client
# of another language that tests/test_e2e_wire.py reads the server with.
declare -A PERL_NEEDS=(
    [RPC::XML::Client]=librpc-xml-perl
    [LWP::Protocol::https]=liblwp-protocol-https-perl
)
missing=()
for tool in "${!NEEDS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${NEEDS[$tool]}")
done
# libvirt-python (the test extra) builds against libvirt's headers.
pkg-config --exists libvirt 2>/dev/null || missing+=(libvirt-dev pkg-config)
for module in "${!PERL_NEEDS[@]}"; do
    perl "-M$module" -e 1 >/dev/null 2>&1 || missing+=("${PERL_NEEDS[$module]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "== installing vdsmconsole with its test extra into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q ".[test]"

echo "== browser assets (npm, as web/package-lock.json pins them)"
./tools/assets.sh >/dev/null

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
