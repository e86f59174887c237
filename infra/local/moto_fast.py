"""moto's DynamoDB item answers, written as JSON without walking the botocore model.

moto builds every DynamoDB answer as a dict already in DynamoDB's wire form
(``{"Item": {"k": {"S": "v"}}}``; binaries as bytes, which JSON has as base64) and then hands it
to a generic serializer that walks the operation's output shape member by
member, trying up to four attribute aliases for each of the ten members of
every attribute value.  For the item operations the platform makes on every
run that walk was the largest single cost of the local AWS endpoint (about a
quarter of its CPU per request, and of the functional tests' time) and it
changes nothing: the dict is the answer, once the keys the answer's shape does not name (moto
keeps a few of its own) are left out.

``fast_item_answers()`` answers those operations (``FAST``) with the dict as
JSON, headers as moto's serializer gives them; anything else (other
operations, errors, a dict JSON cannot write) goes through moto's own path.
``OPENDEVELOP_MOTO_FAST_CHECK=1`` in the environment (or ``check = True``)
makes every fast answer also run moto's serializer and raise if the two
differ in status, headers (but the date) or body.
``tests/unit/test_moto_fast.py`` makes every kind of item answer with it on;
``OPENDEVELOP_MOTO_FAST_CHECK=1 make functional`` checks all the tests' traffic.

``fast_item_answers()`` also remembers, per handler class, the action names
moto looks up with ``inspect.getmembers`` on every request of every service,
and spares three more costs moto pays on every request that change nothing
(``_fast_internals``; measured with a profile of the endpoint over 48 bench
runs, ~20 % of its CPU): the list of its own service folders, read from the
disk to route each request; the parse of an update expression, made twice
per ``UpdateItem`` (its tree is only read, or deep-copied before it is
changed); and the check that an update has at most one clause of each kind,
made again at every node of the expression's tree (quadratic in its
clauses), where the root's count covers them all.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from typing import Any

FAST = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)
CONTENT_TYPE = "application/x-amz-json-1.0"
check = os.environ.get("OPENDEVELOP_MOTO_FAST_CHECK") == "1"


class AnswersDiffer(AssertionError):
    """The fast answer is not the one moto's serializer gives (only with the check on)."""


def fast_item_answers() -> None:
    """Idempotent: DynamoDB's item operations answered without moto's model walk."""
    from moto.core import responses
    from moto.dynamodb.responses import DynamoHandler

    if not hasattr(responses.method_names_from_class, "cache_info"):
        # A class's functions do not change while moto runs; moto lists them anew on every request.
        responses.method_names_from_class = functools.cache(responses.method_names_from_class)

    _fast_internals()
    original = DynamoHandler.serialized
    if getattr(original, "_fast", False):
        return

    def serialized(self: Any, action_result: Any) -> Any:
        result = action_result.result
        action = self._get_action()
        if isinstance(result, dict) and action in FAST:
            members = _members(action)
            try:
                body = json.dumps({k: v for k, v in result.items() if k in members and v is not None}, default=_blob)
            except (TypeError, ValueError):  # not already wire form: moto's serializer knows what to do
                return original(self, action_result)
            headers = {"Content-Type": CONTENT_TYPE, **self.response_headers}
            if check:
                _check(original(self, action_result), (200, headers, body))
            return 200, headers, body
        return original(self, action_result)

    functools.update_wrapper(serialized, original)
    serialized._fast = True  # type: ignore[attr-defined]
    DynamoHandler.serialized = serialized  # type: ignore[method-assign]


def _fast_internals() -> None:
    """Idempotent: moto's per-request costs that change no answer, paid once (see the module's docstring)."""
    from moto import backends
    from moto.dynamodb.parsing.ast_nodes import UpdateExpression
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import ActionCountValidator

    if not getattr(backends.list_of_moto_modules, "_fast", False):
        modules = tuple(backends.list_of_moto_modules())  # moto's own folders: fixed while it runs

        def list_of_moto_modules() -> tuple[str, ...]:
            return modules

        list_of_moto_modules._fast = True  # type: ignore[attr-defined]
        backends.list_of_moto_modules = list_of_moto_modules

    if not getattr(UpdateExpressionParser.make, "_fast", False):
        parse = functools.lru_cache(maxsize=1024)(UpdateExpressionParser.make)
        parse._fast = True  # type: ignore[attr-defined]
        UpdateExpressionParser.make = parse  # type: ignore[method-assign]

    original_traverse = ActionCountValidator.traverse
    if not getattr(original_traverse, "_fast", False):

        def traverse(self: Any, node: Any) -> Any:
            if isinstance(node, UpdateExpression):
                return self.verify_action_counts(node)  # all the expression's clauses, counted once
            return original_traverse(self, node)

        traverse._fast = True  # type: ignore[attr-defined]
        ActionCountValidator.traverse = traverse  # type: ignore[method-assign]


def _blob(value: Any) -> str:
    """Bytes in an item answer are a binary attribute's value (``B``, ``BS``): base64, as the wire has them."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON: {type(value).__name__}")


@functools.cache
def _members(action: str) -> frozenset[str]:
    """The top-level members of the action's answer: moto's dict may hold others, which its serializer drops."""
    from moto.core.responses import get_service_model

    return frozenset(get_service_model("dynamodb").operation_model(action).output_shape.members)


def _check(slow: tuple[int, dict[str, Any], Any], fast: tuple[int, dict[str, Any], str]) -> None:
    def comparable(answer: tuple[int, dict[str, Any], Any]) -> tuple[int, dict[str, Any], Any]:
        status, headers, body = answer
        return status, {k: v for k, v in headers.items() if k.lower() != "date"}, json.loads(body or "{}")

    if comparable(slow) != comparable(fast):
        raise AnswersDiffer(f"moto's serializer: {slow!r}; fast: {fast!r}")
