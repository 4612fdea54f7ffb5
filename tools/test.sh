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
    [h2load]=nghttp2-client
)
missing=()
for tool in "${!NEEDS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${NEEDS[$tool]}")
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

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
