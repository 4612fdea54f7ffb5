"""Make sure the peers' programs are there: Debian packages, installed if missing."""

from __future__ import annotations

import os
import shutil
import subprocess

from bench.peers import NEEDS


class MissingPeer(RuntimeError):
    """A peer's program is missing and cannot be installed here."""


def missing_packages(peers: list[str]) -> dict[str, list[str]]:
    """peer -> Debian packages whose commands are not on PATH."""
    out: dict[str, list[str]] = {}
    for peer in peers:
        packages = sorted(
            {pkg for cmd, pkg in NEEDS.get(peer, {}).items() if not shutil.which(cmd)}
        )
        if packages:
            out[peer] = packages
    return out


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, env=env, check=False
    )


def ensure_peers(peers: list[str], install: bool = True) -> dict[str, str]:
    """Install what is missing (as root); peer -> why it is skipped otherwise.

    With ``install`` true a peer that cannot be installed is an error naming
    the packages; with it false the peer is skipped with that note.
    """
    missing = missing_packages(peers)
    if not missing:
        return {}
    packages = sorted({p for pkgs in missing.values() for p in pkgs})
    hint = f"apt-get install -y {' '.join(packages)}"
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: installing {' '.join(packages)} from Debian", flush=True)
        result = _apt_get("install", "-y", "--no-install-recommends", *packages)
        if result.returncode != 0:
            _apt_get("update", "-qq")
            result = _apt_get("install", "-y", "--no-install-recommends", *packages)
        if result.returncode != 0:
            raise MissingPeer(
                f"could not install {' '.join(packages)}: "
                f"{result.stderr.strip().splitlines()[-1:] or result.returncode}"
            )
        missing = missing_packages(peers)
        if not missing:
            return {}
    if install:
        raise MissingPeer(
            f"peers {', '.join(sorted(missing))} need Debian packages "
            f"{' '.join(packages)}: run '{hint}' as root, or pass --no-install "
            "to skip them"
        )
    return {
        peer: f"not installed ({' '.join(pkgs)}); skipped"
        for peer, pkgs in missing.items()
    }
