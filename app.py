"""OpenDevelop's HTTP API: Chalice wiring only.  The work is in ``chalicelib``.

What the API keeps between requests (settings, cached rows, AWS clients, the
wait reader) is one ``Context``, built from the environment on the first
request by ``get_context()`` (``chalicelib.context``).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from chalice import Chalice, Rate, Response
from pynamodb.exceptions import PynamoDBException

from chalicelib import (
    artifacts,
    batches,
    images,
    models,
    openapi,
    params,
    playground,
    quotas,
    reconciler,
    sandboxes,
    scale_in,
    webhooks,
)
from chalicelib.context import get_context
from chalicelib.errors import InvalidInput, OpenDevelopError, QuotaExceeded, Unavailable
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
        headers["WWW-Authenticate"] = f'{_challenge_scheme()} realm="opendevelop"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(body=json.dumps({"Code": code, "Message": message}), status_code=status, headers=headers)


def _challenge_scheme() -> str:
    """``Basic``, except to a script that says it is one (the playground): a browser meeting a
    ``Basic`` challenge holds the script's request open behind its own sign-in dialog."""
    request = app.current_request
    headers = request.headers if request is not None else {}
    return "xBasic" if headers.get("x-requested-with", "").lower() == "xmlhttprequest" else "Basic"


def api_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to HTTP in one place; an unexpected fault is logged and shown briefly."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        answer = _answer(*args, **kwargs)
        request = app.current_request
        if request is not None:
            status = answer.status_code if isinstance(answer, Response) else 200
            # One line per request: the route (Chalice's path is the route), the ids in it (the keys
            # logged everywhere: ``sandbox_id``), its status and its latency.
            log(
                logger,
                "api.request",
                method=request.method,
                path=request.path,
                **(request.uri_params or {}),
                status=status,
                latency_ms=round((time.monotonic() - started) * 1000, 1),
            )
        return answer

    def _answer(*args: Any, **kwargs: Any) -> Any:
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


@app.route("/", methods=["GET"])
@api_view
def playground_page() -> Response:
    """The playground (``chalicelib.playground``): one page, no credentials; it signs in from the browser."""
    query()  # ?embed=1 is read by the page itself; anything else is refused like any call's
    page = playground.page()
    return Response(body=page.body, status_code=200, headers=page.headers)


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
    if given["ids"] is not None:
        return {"sandboxes": batches.show_many(get_context(), owner, given["ids"], given["wait"]), "next": None}
    if given["wait"]:
        raise InvalidInput("wait", "is taken with ids= (a page is never held)")
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


@app.route("/api/sandboxes/batch", methods=["POST"], content_types=["*/*"])
@api_view
def create_sandboxes() -> Any:
    """Up to 100 creates in one request: 201, or 207 when some items failed (each answered in its place)."""
    request = app.current_request
    assert request is not None
    owner = current_app()
    ctx = get_context()
    items = batches.parse(request.headers.get("content-type"), request.raw_body or b"", ctx.settings.max_upload_bytes)
    answers, some_failed = batches.create(ctx, owner, items)
    return Response(
        body=json.dumps({"sandboxes": answers}),
        status_code=207 if some_failed else 201,
        headers={"Content-Type": "application/json"},
    )


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


# The webhooks queue's name in the deployed stage (the AWS template's WebhooksQueue, TablePrefix
# opendevelop-prod): Chalice needs it as a literal here.  Locally infra/local/webhooks.py polls the
# stack's own queue and calls this same function.
WEBHOOK_QUEUE = "opendevelop-prod-webhooks"


@app.on_sqs_message(queue=WEBHOOK_QUEUE, batch_size=1)
def deliver_webhook(event: Any) -> None:
    """One delivery attempt per message (``chalicelib.webhooks.handle``): a slow receiver holds no dispatcher."""
    settings = get_context().settings
    for record in event:
        outcome = webhooks.handle(settings, json.loads(record.body))
        log(logger, "webhook.handled", outcome=outcome)


@app.on_cw_event({"source": ["aws.autoscaling"], "detail-type": [scale_in.EVENT_TYPE]})
def host_terminating(event: Any) -> dict[str, Any] | None:
    """The Docker hosts' group is terminating an instance: retire its server (``chalicelib.scale_in``)."""
    settings = get_context().settings
    hooks = scale_in.AwsAutoscaling(settings)
    scale_in.begin(settings, event.detail, hooks)
    # Then on within this invocation while its time lasts; the schedule below carries on after.
    return {"steps": scale_in.advance(settings, hooks, budget_s=SCALE_IN_BUDGET_S)}


@app.schedule(Rate(1, unit=Rate.MINUTES))
def scale_in_steps(event: Any) -> dict[str, Any]:
    """Each retiring server one step further, every minute, until it is gone and its instance released."""
    settings = get_context().settings
    return {"steps": scale_in.advance(settings, scale_in.AwsAutoscaling(settings), budget_s=SCALE_IN_BUDGET_S)}


SCALE_IN_BUDGET_S = 20.0  # of the functions' 30 s (.chalice/config.json's lambda_timeout)
