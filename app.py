"""OpenDevelop's HTTP API: Chalice wiring only.  The work is in ``chalicelib``.

What the API keeps between requests (settings, cached rows, AWS clients, the
wait reader) is one ``Context``, built from the environment on the first
request by ``get_context()`` (``chalicelib.context``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from chalice import Chalice, Rate, Response
from pynamodb.exceptions import PynamoDBException

from chalicelib import artifacts, images, models, openapi, params, quotas, reconciler, sandboxes
from chalicelib.context import get_context
from chalicelib.errors import OpenDevelopError, QuotaExceeded, Unavailable
from chalicelib.logs import log, log_exception
from chalicelib.validation import parse_request

app = Chalice(app_name="opendevelop")
# API Gateway must hand uploads over as bytes, untouched.
app.api.binary_types.append("multipart/form-data")
# Downloads answer bytes, untouched (the output, the artifacts).
app.api.binary_types.extend(["application/octet-stream", "application/x-tar"])
logger = logging.getLogger("opendevelop.api")


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    headers = {"Content-Type": "application/json"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="opendevelop"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(body=json.dumps({"Code": code, "Message": message}), status_code=status, headers=headers)


def api_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to HTTP in one place; an unexpected fault is logged and shown briefly."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = app.current_request
        where = {"method": request.method, "path": request.path} if request is not None else {}
        try:
            if request is not None:  # the call's query parameters, and no others
                params.check(request.path, request.method, request.query_params)
            return view(*args, **kwargs)
        except Unavailable as e:
            log(logger, "api.unavailable", logging.WARNING, **where, error=e.message)
            return _error(503, e.code, "the service is unavailable right now; try again shortly")
        except QuotaExceeded as e:
            return _error(e.status, e.code, e.message, retry_after=e.retry_after)
        except OpenDevelopError as e:
            return _error(e.status, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - the boundary: logged in full here, once, and shown briefly
            log_exception(logger, "api.internal_error", e, **where)
            return _error(500, "InternalError", "internal error")

    return wrapper


def current_app() -> models.App:
    request = app.current_request
    assert request is not None
    return sandboxes.authenticate(get_context(), request.headers.get("authorization"))


def query() -> dict[str, Any]:
    """The current call's query parameters, read by ``chalicelib.params``."""
    request = app.current_request
    assert request is not None
    return params.parse(request.path, request.method, request.query_params)


@app.route("/api/openapi.json", methods=["GET"])
@api_view
def openapi_document() -> Any:
    """The API described (OpenAPI 3.1), without credentials: tools and clients read it first."""
    return openapi.document(get_context().settings)


@app.route("/api/images", methods=["GET"])
@api_view
def list_images() -> Any:
    current_app()
    if query()["detail"]:
        return images.enabled_details()
    return sandboxes.enabled_images()


@app.route("/api/images/{name}", methods=["GET"])
@api_view
def show_image(name: str) -> Any:
    current_app()
    return images.detail(name)


@app.route("/api/usage", methods=["GET"])
@api_view
def usage() -> Any:
    """The app's own use and quotas: running, queued, today's sandboxes and run seconds, the limits."""
    owner = current_app()
    try:
        return quotas.usage(owner, get_context().settings)
    except PynamoDBException as e:
        raise Unavailable(f"reading the app's usage: {e}") from e


@app.route("/api/sandboxes", methods=["GET"])
@api_view
def list_sandboxes() -> Any:
    owner = current_app()
    given = query()
    items, cursor = sandboxes.list_page(owner, given["limit"], given["cursor"])
    return {"sandboxes": sandboxes.show_many(get_context().settings, items), "next": cursor}


@app.route("/api/sandboxes/{sandbox_id}", methods=["GET"])
@api_view
def show_sandbox(sandbox_id: str) -> Any:
    owner = current_app()
    ctx = get_context()
    sandbox = sandboxes.wait_settled(ctx, owner, sandbox_id, query()["wait"])
    return sandboxes.show(ctx.settings, sandbox)


@app.route("/api/sandboxes/{sandbox_id}/stdout", methods=["GET"])
@api_view
def download_stdout(sandbox_id: str) -> Any:
    """The program's stdout, its exact bytes (or a redirect to them); honours ``Range``."""
    return _download(sandbox_id, "stdout")


@app.route("/api/sandboxes/{sandbox_id}/stderr", methods=["GET"])
@api_view
def download_stderr(sandbox_id: str) -> Any:
    """The program's stderr, its exact bytes (or a redirect to them); honours ``Range``."""
    return _download(sandbox_id, "stderr")


@app.route("/api/sandboxes/{sandbox_id}/logs", methods=["GET"])
@api_view
def tail_logs(sandbox_id: str) -> Any:
    """The live tail: the output's text from byte ``offset``, held up to ``wait`` s for something new."""
    owner = current_app()
    given = query()
    return sandboxes.tail(get_context().settings, owner, sandbox_id, given["stream"], given["offset"], given["wait"])


@app.route("/api/sandboxes/{sandbox_id}/artifacts", methods=["GET"])
@api_view
def download_artifacts(sandbox_id: str) -> Any:
    """The files the program left in out/, as one tar (or a redirect to it)."""
    return _answer(sandboxes.artifacts_tar(get_context().settings, current_app(), sandbox_id))


def _artifact_route(depth: int) -> None:
    """``/artifacts/{p1}/.../{pN}``: Chalice's local server has no greedy ``{path+}``, so a route per depth."""
    names = [f"p{i}" for i in range(1, depth + 1)]

    def download_artifact(sandbox_id: str, **parts: str) -> Any:
        request = app.current_request
        assert request is not None
        name = artifacts.file_name([parts[n] for n in names])
        owner = current_app()
        got = sandboxes.artifact_file(get_context().settings, owner, sandbox_id, name, request.headers.get("range"))
        return _answer(got)

    download_artifact.__name__ = f"download_artifact_{depth}"
    path = "/api/sandboxes/{sandbox_id}/artifacts/" + "/".join("{" + n + "}" for n in names)
    app.route(path, methods=["GET"])(api_view(download_artifact))


for _depth in range(1, artifacts.MAX_DEPTH + 1):
    _artifact_route(_depth)


def _download(sandbox_id: str, stream: str) -> Response:
    request = app.current_request
    assert request is not None
    owner = current_app()
    return _answer(sandboxes.download(get_context().settings, owner, sandbox_id, stream, request.headers.get("range")))


def _answer(got: Any) -> Response:
    if got.location is not None:
        return Response(body="", status_code=got.status, headers={"Location": got.location})
    return Response(body=got.body, status_code=got.status, headers=got.headers)


@app.route("/api/sandboxes/{sandbox_id}", methods=["DELETE"])
@api_view
def cancel_sandbox(sandbox_id: str) -> Any:
    owner = current_app()
    return sandboxes.show(get_context().settings, sandboxes.cancel(owner, sandbox_id))


@app.route("/api/sandboxes", methods=["POST"], content_types=["*/*"])
@api_view
def create_sandbox() -> Any:
    request = app.current_request
    assert request is not None
    owner = current_app()
    ctx = get_context()
    req = parse_request(request.headers.get("content-type"), request.raw_body or b"", ctx.settings)
    sandbox = sandboxes.create(ctx, owner, req)
    headers = {"Location": f"/api/sandboxes/{sandbox.sandbox_id}"}
    if _wants_plain_text(request.headers.get("accept")):
        return Response(body=sandbox.sandbox_id, status_code=201, headers={**headers, "Content-Type": "text/plain"})
    headers["Content-Type"] = "application/json"
    return Response(body=json.dumps(sandboxes.to_json(sandbox)), status_code=201, headers=headers)  # no output yet


def _wants_plain_text(accept: str | None) -> bool:
    """The original API answered a bare id; a client that asks for text/plain still gets it."""
    if not accept:
        return False
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/plain" in types and "application/json" not in types


@app.schedule(Rate(1, unit=Rate.MINUTES))
def reconcile(event: Any) -> dict[str, Any]:
    """Every accepted sandbox reaches a final state: see ``chalicelib.reconciler``."""
    return reconciler.reconcile(get_context().settings)
