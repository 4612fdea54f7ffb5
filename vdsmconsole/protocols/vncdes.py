"""VNC authentication's challenge response (RFB security type 2).

The viewer proves it knows the password by DES-encrypting the server's
16-byte challenge (ECB, two blocks) with the password as the key: its first
8 bytes, padded with NULs.  RFB's one twist is that each key byte goes in
with its bits reversed (the original VNC code fed the key to a DES routine
that numbers bits from the other end), so a stock DES sees the reversed key.

DES lives in ``cryptography``'s "decrepit" corner since release 43 (before
that beside AES); a three-key TripleDES with K1 = K2 = K3 is single DES, and
it is the form every release accepts without a deprecation warning.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

__all__ = ["CHALLENGE_SIZE", "vnc_auth_response"]

CHALLENGE_SIZE = 16
_KEY_SIZE = 8


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def vnc_key(password: bytes) -> bytes:
    """The DES key RFB derives from ``password``: 8 bytes, bits reversed."""
    padded = password[:_KEY_SIZE].ljust(_KEY_SIZE, b"\0")
    return bytes(_reverse_bits(b) for b in padded)


def vnc_auth_response(password: bytes, challenge: bytes) -> bytes:
    """The 16 bytes a viewer answers ``challenge`` with, knowing ``password``."""
    if len(challenge) != CHALLENGE_SIZE:
        raise ValueError(
            f"a VNC challenge is {CHALLENGE_SIZE} bytes, not {len(challenge)}"
        )
    key = vnc_key(password)
    # ECB and DES are what RFB specifies; nothing else here is protected by them.
    mode = modes.ECB()  # noqa: S305
    encryptor = Cipher(TripleDES(key * 3), mode).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()
