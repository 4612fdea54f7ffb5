#!/bin/sh
# Install the browser assets of the [web] listener (xterm.js, its fit addon,
# noVNC) from npm, exactly as pinned by web/package-lock.json (versions and
# integrity hashes), into web/node_modules (ignored by git).  Nothing is
# fetched at run time; point [web] assets at the directory this prints.
#   tools/assets.sh
set -eu
cd "$(dirname "$0")/../web"
command -v npm >/dev/null || { echo "assets.sh: npm is needed (apt-get install npm)" >&2; exit 2; }
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$(pwd)/node_modules"
