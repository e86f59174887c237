"""App credentials: random ids and secrets, HMAC digests, HTTP Basic parsing.

An app secret is 128+ random bits, shown once and stored only as an
HMAC-SHA-256 digest keyed by a server-side key; comparing digests in constant
time is enough for a random key, and a slow hash would cost every request.
User passwords, chosen by people, get salted scrypt instead (``SCRYPT_N``:
16 MiB and ~60 ms a hash; the parameters are stored with each hash, so a
change applies to new hashes and old ones still match).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from chalicelib.errors import Unauthorized


def new_id(nbytes: int = 8) -> str:
    """A random, unguessable hex id (64 bits by default)."""
    return secrets.token_hex(nbytes)


def new_secret() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def secret_digest(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(key: bytes, secret: str, digest: str) -> bool:
    return hmac.compare_digest(secret_digest(key, secret), digest)


SCRYPT_N = 2**14  # scrypt's cost: OWASP's recommended minimum with r=8, p=1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    n, r, p = SCRYPT_N, 8, 1
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${dk.hex()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    try:
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except ValueError:  # a corrupt stored hash (bad hex, bad parameters) matches nothing
        return False
    return hmac.compare_digest(got.hex(), dk)


def parse_basic(header: str | None) -> tuple[str, str]:
    """``Authorization: Basic base64(id:secret)`` -> (id, secret), or Unauthorized."""
    if not header:
        raise Unauthorized("missing Authorization header (Basic base64(<app_id>:<secret>))")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise Unauthorized("Authorization must use the Basic scheme")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("Authorization: malformed Basic credentials") from None
    app_id, sep, secret = decoded.partition(":")
    if not sep or not app_id or not secret:
        raise Unauthorized("Authorization: expected <app_id>:<secret>")
    return app_id, secret
