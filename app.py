"""OpenDevelop's HTTP API: Chalice wiring only.  The work is in ``chalicelib``."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from chalice import Chalice, Rate, Response

from chalicelib import images, logs, models, openapi, reconciler, sandboxes
from chalicelib.errors import OpenDevelopError, Unavailable
from chalicelib.settings import Settings
from chalicelib.validation import parse_request

app = Chalice(app_name="opendevelop")
# API Gateway must hand uploads over as bytes, untouched.
app.api.binary_types.append("multipart/form-data")
logger = logging.getLogger("opendevelop.api")


@functools.lru_cache(maxsize=1)
def settings() -> Settings:
    """Read once, on the first request (never at import time)."""
    logs.setup()
    current = Settings.from_env()
    models.configure(current)
    return current


def _error(status: int, code: str, message: str) -> Response:
    headers = {"Content-Type": "application/json"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="opendevelop"'
    return Response(body=json.dumps({"Code": code, "Message": message}), status_code=status, headers=headers)


def api_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to HTTP in one place; an unexpected fault is logged and shown briefly."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            request = app.current_request
            if request is not None:  # the documented query parameters, and no others
                openapi.check_query(request.path, request.method, request.query_params)
            return view(*args, **kwargs)
        except Unavailable as e:
            logger.warning(json.dumps({"event": "api.unavailable", "error": e.message}))
            return _error(503, e.code, "the service is unavailable right now; try again shortly")
        except OpenDevelopError as e:
            return _error(e.status, e.code, e.message)
        except Exception:
            logger.exception("api.internal_error")
            return _error(500, "InternalError", "internal error")

    return wrapper


def current_app() -> models.App:
    request = app.current_request
    assert request is not None
    return sandboxes.authenticate(settings(), request.headers.get("authorization"))


@app.route("/api/openapi.json", methods=["GET"])
@api_view
def openapi_document() -> Any:
    """The API described (OpenAPI 3.1), without credentials: tools and clients read it first."""
    return openapi.document(settings())


@app.route("/api/images", methods=["GET"])
@api_view
def list_images() -> Any:
    current_app()
    params = app.current_request.query_params or {}  # type: ignore[union-attr]
    if images.parse_detail(params.get("detail")):
        return images.enabled_details()
    return sandboxes.enabled_images()


@app.route("/api/images/{name}", methods=["GET"])
@api_view
def show_image(name: str) -> Any:
    current_app()
    return images.detail(name)


@app.route("/api/sandboxes", methods=["GET"])
@api_view
def list_sandboxes() -> Any:
    owner = current_app()
    params = app.current_request.query_params or {}  # type: ignore[union-attr]
    limit = sandboxes.parse_page_size(params.get("limit"))
    items, cursor = sandboxes.list_page(owner, limit, params.get("cursor"))
    return {"sandboxes": [sandboxes.to_json(s, settings()) for s in items], "next": cursor}


@app.route("/api/sandboxes/{sandbox_id}", methods=["GET"])
@api_view
def show_sandbox(sandbox_id: str) -> Any:
    owner = current_app()
    params = app.current_request.query_params or {}  # type: ignore[union-attr]
    wait_s = sandboxes.parse_wait(params.get("wait"))
    return sandboxes.to_json(sandboxes.wait_settled(owner, sandbox_id, wait_s), settings())


@app.route("/api/sandboxes/{sandbox_id}", methods=["DELETE"])
@api_view
def cancel_sandbox(sandbox_id: str) -> Any:
    owner = current_app()
    return sandboxes.to_json(sandboxes.cancel(owner, sandbox_id), settings())


@app.route("/api/sandboxes", methods=["POST"], content_types=["*/*"])
@api_view
def create_sandbox() -> Any:
    request = app.current_request
    assert request is not None
    owner = current_app()
    req = parse_request(request.headers.get("content-type"), request.raw_body or b"", settings())
    sandbox = sandboxes.create(settings(), owner, req)
    headers = {"Location": f"/api/sandboxes/{sandbox.sandbox_id}"}
    if _wants_plain_text(request.headers.get("accept")):
        return Response(body=sandbox.sandbox_id, status_code=201, headers={**headers, "Content-Type": "text/plain"})
    headers["Content-Type"] = "application/json"
    return Response(body=json.dumps(sandboxes.to_json(sandbox)), status_code=201, headers=headers)


def _wants_plain_text(accept: str | None) -> bool:
    """The original API answered a bare id; a client that asks for text/plain still gets it."""
    if not accept:
        return False
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/plain" in types and "application/json" not in types


@app.schedule(Rate(1, unit=Rate.MINUTES))
def reconcile(event: Any) -> dict[str, Any]:
    """Every accepted sandbox reaches a final state: see ``chalicelib.reconciler``."""
    return reconciler.reconcile(settings())
