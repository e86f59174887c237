"""App credentials (random ids and secrets, HMAC digests, HTTP Basic) and user password hashes."""

from __future__ import annotations

import base64
import re

import pytest

from chalicelib.auth import (
    hash_password,
    new_id,
    new_secret,
    parse_basic,
    password_matches,
    secret_digest,
    secret_matches,
)
from chalicelib.errors import Unauthorized

KEY = b"k" * 32


def basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def test_ids_are_64_random_bits_in_hex():
    ids = {new_id() for _ in range(1000)}

    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_secrets_are_at_least_128_random_bits():
    secrets = {new_secret() for _ in range(1000)}

    assert len(secrets) == 1000
    for secret in secrets:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)  # safe in a URL, a header and a shell
        assert len(secret) * 6 >= 128


def test_a_secret_is_stored_as_a_keyed_digest():
    digest = secret_digest(KEY, "s3cret")

    assert re.fullmatch(r"[0-9a-f]{64}", digest)  # HMAC-SHA-256
    assert digest == secret_digest(KEY, "s3cret")
    assert digest != secret_digest(b"another key of thirty-two bytes!", "s3cret")
    assert digest != secret_digest(KEY, "s3cret ")


def test_a_secret_matches_only_its_own_digest():
    digest = secret_digest(KEY, "s3cret")

    assert secret_matches(KEY, "s3cret", digest)
    assert not secret_matches(KEY, "s3creT", digest)
    assert not secret_matches(KEY, "", digest)
    assert not secret_matches(b"another key of thirty-two bytes!", "s3cret", digest)


def test_passwords_get_a_slow_salted_hash():
    password = "correct-horse"  # not hex: it cannot turn up inside the hex salt or digest by chance
    first, second = hash_password(password), hash_password(password)

    assert first != second  # salted
    assert first.startswith("scrypt$16384$8$1$") and password not in first  # the functional tests lower N
    assert password_matches(password, first) and password_matches(password, second)
    assert not password_matches(password + "!", first)


@pytest.mark.parametrize(
    "stored",
    ["", "plain-text", "md5$abc", "pbkdf2$1$2$3$00$00", "scrypt$16384$8$1$not-hex$00", "scrypt$3$8$1$00$00"],
)
def test_a_malformed_stored_hash_matches_nothing(stored):
    assert password_matches("123", stored) is False


@pytest.mark.parametrize(
    ("header", "credentials"),
    [
        (basic(b"a326efb1fe1f980a:s3cret"), ("a326efb1fe1f980a", "s3cret")),
        ("basic " + base64.b64encode(b"id:s3cret").decode(), ("id", "s3cret")),  # the scheme is case-insensitive
        ("  " + basic(b"id:s3cret") + "  ", ("id", "s3cret")),
        (basic(b"id:with:colons"), ("id", "with:colons")),  # only the first colon separates
        (basic("id:pässword".encode()), ("id", "pässword")),
    ],
)
def test_basic_credentials_are_id_and_secret(header, credentials):
    assert parse_basic(header) == credentials


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic    ",
        "Basic !!!",
        basic(b"no colon"),
        basic(b":secret"),
        basic(b"id:"),
        basic(b"\xff\xfe:\xfd"),
    ],
)
def test_anything_else_is_unauthorized(header):
    with pytest.raises(Unauthorized):
        parse_basic(header)
