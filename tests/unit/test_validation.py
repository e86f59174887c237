"""Turning what a client sent into a SandboxRequest, or an InvalidInput naming the field."""

from __future__ import annotations

import json
import re

import pytest

from chalicelib.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from chalicelib.settings import Settings
from chalicelib.validation import parse_cmd, parse_limit, parse_request, resolve_limits

SETTINGS = Settings.from_env({"OPENDEVELOP_HMAC_KEY": "k" * 32})


def refused(field: str):
    """``with refused("cmd"):`` the call raises InvalidInput for that field."""
    return pytest.raises(InvalidInput, match=f"^{re.escape(field)}: ")


# cmd


@pytest.mark.parametrize(
    ("raw", "lines"),
    [
        (["python test.py"], ["python test.py"]),
        (["pip list", "python test.py"], ["pip list", "python test.py"]),
        ('["python test.py"]', ["python test.py"]),  # the original's form field
        ('  ["a", "b"]  ', ["a", "b"]),
        ("python test.py", ["python test.py"]),  # one command line
        ("echo [x]", ["echo [x]"]),  # only a leading "[" means JSON
        ('{"not": "json to us"}', ['{"not": "json to us"}']),
        ('"python test.py"', ['"python test.py"']),  # a JSON string is a (quoted) command line
        (["  indented  "], ["  indented  "]),  # lines are kept as given
    ],
)
def test_cmd_is_a_list_of_command_lines(raw, lines):
    assert parse_cmd(raw, 1024) == lines


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "is required"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("[]", "non-empty JSON list"),
        ([], "non-empty JSON list"),
        ('["python test.py"', "not a JSON list"),
        ('["a", 1]', "item 1 is not a string"),
        ([["python", "test.py"]], "item 0 is not a string"),
        (["ok", "  "], "item 1 is empty"),
        (["echo \x00"], "NUL"),
        ({"cmd": "ls"}, "non-empty JSON list"),
        (42, "non-empty JSON list"),
    ],
)
def test_bad_cmd_names_the_field_and_why(raw, reason):
    with refused("cmd") as error:
        parse_cmd(raw, 1024)
    assert reason in str(error.value)


def test_cmd_has_a_size_limit():
    assert parse_cmd(["x" * 10], 10) == ["x" * 10]
    with refused("cmd"):
        parse_cmd(["x" * 6, "y" * 5], 10)


def test_cmd_must_be_valid_unicode():
    with refused("cmd"):
        parse_cmd(["echo \ud800"], 1024)  # a lone surrogate, as a JSON "\ud800" escape decodes


# Limits


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("timeout", "10", 10.0),
        ("timeout", " 2.5 ", 2.5),
        ("timeout", 10, 10.0),
        ("timeout", 1, 1.0),  # the minimum
        ("memory_mb", "512", 512),
        ("memory_mb", 512.0, 512),
        ("cpus", "0.5", 0.5),
    ],
)
def test_a_limit_is_a_positive_number(name, raw, value):
    parsed = parse_limit(name, raw, SETTINGS)
    assert parsed == value
    assert isinstance(parsed, int) == SETTINGS.limit(name).integer


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("timeout", "ten"),
        ("timeout", ""),
        ("timeout", "-1"),
        ("timeout", "0"),
        ("timeout", 0),
        ("timeout", -0.5),
        ("timeout", 0.5),  # below the minimum of 1 s
        ("timeout", "nan"),
        ("timeout", "inf"),
        ("timeout", float("inf")),
        ("timeout", True),
        ("timeout", None),
        ("timeout", [10]),
        ("memory_mb", "256.5"),
        ("memory_mb", 256.5),
        ("memory_mb", "8"),  # below the minimum of 16
        ("pids", "1e3"),
    ],
)
def test_a_bad_limit_names_itself(name, raw):
    with refused(name):
        parse_limit(name, raw, SETTINGS)


def test_unrequested_limits_get_the_defaults():
    limits = resolve_limits({}, {}, SETTINGS)

    assert limits == {name: SETTINGS.limit(name).default for name in limits}
    assert set(limits) == {"timeout", "memory_mb", "cpus", "pids", "disk_mb", "output_kb", "artifacts_kb"}
    assert limits["artifacts_kb"] == 1024


def test_a_request_may_ask_for_more_than_the_default_up_to_the_ceiling():
    assert resolve_limits({"timeout": 60}, {}, SETTINGS)["timeout"] == 60
    assert resolve_limits({"timeout": 2}, {}, SETTINGS)["timeout"] == 2
    with refused("timeout") as error:
        resolve_limits({"timeout": 60.5}, {}, SETTINGS)
    assert str(error.value) == "timeout: 60.5 is above the ceiling of 60"


def test_an_apps_ceiling_lowers_the_global_one_and_the_default_with_it():
    app_ceilings = {"timeout": 5, "memory_mb": 128}

    limits = resolve_limits({}, app_ceilings, SETTINGS)

    assert (limits["timeout"], limits["memory_mb"]) == (5, 128)  # the defaults (10, 256) do not fit
    assert resolve_limits({"timeout": 5}, app_ceilings, SETTINGS)["timeout"] == 5
    with refused("memory_mb"):
        resolve_limits({"memory_mb": 129}, app_ceilings, SETTINGS)


def test_an_app_ceiling_cannot_raise_the_global_one():
    with refused("timeout"):
        resolve_limits({"timeout": 61}, {"timeout": 3600}, SETTINGS)


# Whole requests


def form_body(*parts: bytes) -> bytes:
    return b"".join(b"--XX\r\n" + part + b"\r\n" for part in parts) + b"--XX--\r\n"


def test_the_original_multipart_form():
    body = form_body(
        b'Content-Disposition: form-data; name="image"\r\n\r\nbase',
        b'Content-Disposition: form-data; name="cmd"\r\n\r\n["python test.py"]',
        b'Content-Disposition: form-data; name="timeout"\r\n\r\n10',
        b'Content-Disposition: form-data; name="0"; filename="test.py"\r\nContent-Type: text/x-python\r\n\r\nprint(1)',
        b'Content-Disposition: form-data; name="1"; filename="lib/util.py"\r\n\r\n',
    )

    req = parse_request("multipart/form-data; boundary=XX", body, SETTINGS)

    assert (req.image, req.cmd, req.limits) == ("base", ["python test.py"], {"timeout": 10.0})
    assert [(f.name, f.content) for f in req.files] == [("test.py", b"print(1)"), ("lib/util.py", b"")]
    assert (req.stdin, req.env, req.network) == (b"", {}, False)


def test_a_json_request_with_every_field():
    body = json.dumps(
        {
            "image": " base ",
            "cmd": ["./run"],
            "timeout": 3,
            "memory_mb": "128",
            "stdin": "42\n",
            "env": {"NAME": "value"},
            "files": [{"name": "run", "content": "IyEvYmluL3NoCg==", "encoding": "base64", "executable": True}],
        }
    ).encode()

    req = parse_request("application/json; charset=utf-8", body, SETTINGS)

    assert (req.image, req.cmd, req.limits) == ("base", ["./run"], {"timeout": 3.0, "memory_mb": 128})
    assert (req.stdin, req.env) == (b"42\n", {"NAME": "value"})
    assert [(f.name, f.content, f.executable) for f in req.files] == [("run", b"#!/bin/sh\n", True)]


def test_a_urlencoded_form_has_fields_and_no_files():
    req = parse_request("application/x-www-form-urlencoded", b"image=base&cmd=ls+-la&timeout=5", SETTINGS)

    assert (req.image, req.cmd, req.limits, req.files) == ("base", ["ls -la"], {"timeout": 5.0}, [])


@pytest.mark.parametrize(
    ("content_type", "body", "error", "field"),
    [
        ("text/plain", b"image=base", UnsupportedMediaType, "Content-Type"),
        (None, b"{}", UnsupportedMediaType, "Content-Type"),
        ("application/json", b" \n", InvalidInput, "body"),
        ("application/json", b'"base"', InvalidInput, "body"),
        ("application/json", b"{", InvalidInput, "body"),
        ("application/json", b'{"image": "base", "cmd": "ls", "timout": 1}', InvalidInput, "timout"),
        ("application/json", b'{"cmd": "ls"}', InvalidInput, "image"),
        ("application/json", b'{"image": "base", "cmd": "ls", "network": "maybe"}', InvalidInput, "network"),
        ("application/json", b'{"image": "base", "cmd": "ls", "stdin": 1}', InvalidInput, "stdin"),
        ("application/json", b'{"image": "base", "cmd": "ls", "env": "A=1"}', InvalidInput, "env"),
        ("multipart/form-data", b"--XX--\r\n", InvalidInput, "Content-Type"),
        ("multipart/form-data; boundary=XX", b"garbage", InvalidInput, "body"),
        ("application/x-www-form-urlencoded", b"image=base&image=base&cmd=ls", InvalidInput, "image"),
        ("application/x-www-form-urlencoded", b"image=%ff&cmd=ls", InvalidInput, "body"),
    ],
)
def test_a_bad_request_says_which_part_is_wrong(content_type, body, error, field):
    with pytest.raises(error, match=f"^{field}: "):
        parse_request(content_type, body, SETTINGS)


def test_the_body_size_is_checked_first():
    small = Settings.from_env({"OPENDEVELOP_HMAC_KEY": "k" * 32, "OPENDEVELOP_MAX_UPLOAD_BYTES": "10"})

    with pytest.raises(PayloadTooLarge, match="^body: "):
        parse_request("text/plain", b"x" * 11, small)
    with pytest.raises(UnsupportedMediaType):
        parse_request("text/plain", b"x" * 10, small)
