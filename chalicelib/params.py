"""The query parameters each call takes: one table, holding each one's parser and documentation.

``check`` refuses a parameter the call does not take (before anything else
happens, as unknown form fields are refused: a typo such as ``?wiat=20`` is a
clear 400, not a silently different request); ``parse`` turns the ones it
takes into values; ``chalicelib.openapi`` documents them from the same table,
so what is documented, what is taken and how it is read cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import InvalidInput

MAX_WAIT_S = 20
MAX_PAGE = 100
DEFAULT_PAGE = 50


def parse_wait(raw: str | None) -> float:
    """``?wait=N``: hold the request until the sandbox is settled or N seconds (at most 20) pass."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput("wait", f"{raw!r} is not a number of seconds") from None
    if math.isnan(value) or not 0 <= value <= MAX_WAIT_S:
        raise InvalidInput("wait", f"must be between 0 and {MAX_WAIT_S} seconds")
    return value


def parse_limit(raw: str | None) -> int:
    """``?limit=N``: the page size."""
    if raw is None:
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("limit", f"{raw!r} is not a whole number") from None
    if not 1 <= value <= MAX_PAGE:
        raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}")
    return value


def parse_detail(raw: str | None) -> bool:
    """``?detail=true``: describe each image, not only its name."""
    value = (raw or "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise InvalidInput("detail", f"{(raw or '')[:20]!r} must be true or false")


def parse_cursor(raw: str | None) -> str | None:
    """``?cursor=...``: opaque here; ``sandboxes.list_page`` decodes it, knowing whose it must be."""
    return raw or None  # an empty cursor is the first page


def parse_offset(raw: str | None) -> int:
    """``?offset=N``: a byte offset into the stream."""
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("offset", f"{raw!r} is not a whole number of bytes") from None
    if value < 0:
        raise InvalidInput("offset", "must be 0 or more")
    return value


MAX_IDS = 100


def parse_ids(raw: str | None) -> list[str] | None:
    """``?ids=a,b,c``: read these sandboxes (at most 100; the app's own only, others simply absent)."""
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) > MAX_IDS:
        raise InvalidInput("ids", f"{len(parts)} ids: at most {MAX_IDS}")
    for part in parts:
        if not part or len(part) > 64 or not part.isascii() or not part.isalnum():
            raise InvalidInput(
                "ids", f"{part[:64]!r} is not a sandbox id (ids are letters and digits, comma-separated)"
            )
    return list(dict.fromkeys(parts))


TAIL_STREAMS = ("logs", "stdout", "stderr")


def parse_stream(raw: str | None) -> str:
    """``?stream=``: which stream the live tail follows (``logs``, the two interleaved, by default)."""
    if raw is None:
        return "logs"
    if raw not in TAIL_STREAMS:  # an empty value too: the documented enum does not hold it
        raise InvalidInput("stream", f"must be one of {', '.join(TAIL_STREAMS)}")
    return raw


@dataclass(frozen=True)
class Param:
    """One query parameter: how it is read, and how it is documented (a JSON schema and a sentence)."""

    parse: Callable[[str | None], Any]
    schema: dict[str, Any]
    description: str


# (route, method) -> the parameters it takes.  Routes are Chalice's, with their {placeholders}.
QUERY: dict[tuple[str, str], dict[str, Param]] = {
    ("/api/images", "GET"): {
        "detail": Param(
            parse_detail,
            {"type": "boolean", "default": False},
            "`true`: each image described (an `Image`), not only its name.",
        ),
    },
    ("/api/sandboxes", "GET"): {
        "limit": Param(
            parse_limit, {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}, "Page size."
        ),
        "cursor": Param(parse_cursor, {"type": "string"}, "The `next` of the previous page."),
        "ids": Param(
            parse_ids,
            {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}(,[A-Za-z0-9]{1,64})*$"},
            f"Read these sandboxes (comma-separated, at most {MAX_IDS}) instead of a page: the app's own, "
            "in the order given; ids of other apps or of none are simply absent.",
        ),
        "wait": Param(
            parse_wait,
            {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
            "With `ids`: hold the request until all of them have finished or this many seconds pass.",
        ),
    },
    ("/api/sandboxes/{sandbox_id}", "GET"): {
        "wait": Param(
            parse_wait,
            {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
            "Hold the request until the sandbox has finished or this many seconds pass.",
        ),
    },
    ("/api/sandboxes/{sandbox_id}/logs", "GET"): {
        "offset": Param(parse_offset, {"type": "integer", "minimum": 0, "default": 0}, "The byte to start from."),
        "wait": Param(
            parse_wait,
            {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
            "Hold the request until there is output past `offset`, the sandbox has settled, or this many seconds pass.",
        ),
        "stream": Param(
            parse_stream,
            {"type": "string", "enum": list(TAIL_STREAMS), "default": "logs"},
            "`logs` (stdout and stderr as they interleaved), `stdout` or `stderr`.",
        ),
    },
}


def check(route: str, method: str, query: Mapping[str, str] | None) -> None:
    """Refuse a query parameter the call does not take, naming it."""
    known = QUERY.get((route, method.upper()), {})
    for name in query or {}:
        if name not in known:
            hint = f"; known: {', '.join(known)}" if known else "; this call takes none"
            raise InvalidInput(name[:64], f"unknown query parameter{hint}")


def parse(route: str, method: str, query: Mapping[str, str] | None) -> dict[str, Any]:
    """Every parameter the call takes, read (an absent one as its default); ``InvalidInput`` names a bad one."""
    check(route, method, query)
    given = query or {}
    return {name: param.parse(given.get(name)) for name, param in QUERY.get((route, method.upper()), {}).items()}
