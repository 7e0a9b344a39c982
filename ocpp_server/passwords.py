"""Station passwords as salted scrypt hashes (``hashlib``): never stored or logged in clear.

The hash string carries its own cost parameters (``scrypt$n$r$p$salt$hash``) so the cost can
be raised later without invalidating stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

DEFAULT_N = 2**14
_R = 8
_P = 1
_MAXMEM = 64 * 1024 * 1024
# OCPP 2.0.1 BasicAuthPassword is 16..40 characters (A00.FR.205); 1.6 allows any length.
MIN_LENGTH = 8
MAX_LENGTH = 40


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, n: int = DEFAULT_N) -> str:
    """A new salted hash of ``password``; raises ValueError when the length is out of range."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise ValueError(f"password must be {MIN_LENGTH}..{MAX_LENGTH} characters")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; malformed hashes fail."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
            maxmem=_MAXMEM, dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# Password rotation (A09). A stored credential may hold several hashes separated by ",":
# the first is the current password, the others are earlier ones the station may still
# present because it accepted a new password (SetVariables / ChangeConfiguration Accepted)
# but has not yet reconnected with it. They are retired the first time the station logs in
# with the current one, so a station that answers Accepted and keeps its old credentials
# is never locked out. ("," never occurs in a hash: base64 and decimal digits only.)
MAX_PENDING = 3


def rotated(new_hash: str, stored: str | None) -> str:
    """The stored credential after pushing ``new_hash``: new first, earlier ones kept."""
    earlier = [h for h in (stored or "").split(",") if h and h != new_hash]
    return ",".join([new_hash, *earlier[:MAX_PENDING - 1]])


def current_hash(stored: str) -> str:
    """The hash of the current password in a stored credential."""
    return stored.split(",", 1)[0]


def match_password(password: str, stored: str) -> int | None:
    """Index of the hash ``password`` matches (0 = current, >0 = not yet retired), or None."""
    for index, one in enumerate(stored.split(",")):
        if verify_password(password, one):
            return index
    return None
