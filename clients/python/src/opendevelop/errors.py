"""Errors: the API's own (``{"Code", "Message"}`` and its status) and the client's.

Every error the client raises is an ``OpenDevelopError``; those that come from
an answer of the API carry its ``status``, ``code`` and ``message``, and each
status the API documents has its own class, so callers can write
``except NotFoundError:``.
"""

from __future__ import annotations

from typing import Any


class OpenDevelopError(Exception):
    """Base class: ``status`` (None when no answer came), ``code`` and ``message``."""

    status: int | None = None
    code: str = "OpenDevelopError"

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, response: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.response = response  # the requests.Response, when there was one

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"{self.status} {self.code}: {self.message}"


class BadRequestError(OpenDevelopError):
    """400: bad input.  ``field`` is the field the API named, when it did (``"timeout: must be..."``)."""

    status = 400
    code = "BadRequestError"

    @property
    def field(self) -> str | None:
        name, sep, _ = self.message.partition(": ")
        return name if sep and " " not in name else None


class UnauthorizedError(OpenDevelopError):
    status = 401
    code = "UnauthorizedError"


class NotFoundError(OpenDevelopError):
    status = 404
    code = "NotFoundError"


class ConflictError(OpenDevelopError):
    """409: for example cancelling a sandbox that has already finished."""

    status = 409
    code = "ConflictError"


class PayloadTooLargeError(OpenDevelopError):
    status = 413
    code = "RequestEntityTooLargeError"


class UnsupportedMediaTypeError(OpenDevelopError):
    status = 415
    code = "UnsupportedMediaType"


class QuotaExceeded(OpenDevelopError):
    """429: the app is over a quota (raised once the client's retries are spent).

    The message names the quota (``concurrency``, ``rate``, ``daily_seconds``),
    its limit and when it frees; ``retry_after`` is the API's ``Retry-After``
    in seconds (None when it sent none).
    """

    status = 429
    code = "TooManyRequests"

    @property
    def quota(self) -> str | None:
        name, sep, _ = self.message.partition(": ")
        return name if sep and " " not in name else None

    @property
    def retry_after(self) -> float | None:
        raw = getattr(self.response, "headers", {}).get("Retry-After") if self.response is not None else None
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


TooManyRequestsError = QuotaExceeded  # its earlier name


class ServiceUnavailableError(OpenDevelopError):
    """503: no server can take work now (raised once the client's retries are spent)."""

    status = 503
    code = "ServiceUnavailableError"


class ServerError(OpenDevelopError):
    """Any other answer the client did not expect (a 500, or a body that is not the API's)."""

    code = "InternalError"


class UnreachableError(OpenDevelopError):
    """No answer: the server could not be reached, or did not answer within the timeout."""

    code = "Unreachable"


class WaitTimeoutError(OpenDevelopError):
    """``run``/``wait`` gave up before the sandbox finished; ``sandbox`` is the last one seen."""

    code = "WaitTimeout"

    def __init__(self, message: str, sandbox: Any) -> None:
        super().__init__(message)
        self.sandbox = sandbox


class ConfigurationError(OpenDevelopError):
    """The client lacks what it needs to start; ``setting`` names it (``url``, ``app_id``, ``secret``, ``timeout``)."""

    code = "ConfigurationError"

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


BY_STATUS: dict[int, type[OpenDevelopError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        QuotaExceeded,
        ServiceUnavailableError,
    )
}


def from_response(response: Any) -> OpenDevelopError:
    """The error an answer of the API stands for."""
    code, message = None, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("Message"), str):
        code = str(body.get("Code") or "") or None
        message = body["Message"]
    if message is None:
        text = (response.text or "").strip()
        message = text[:300] or response.reason or "no message"
    cls = BY_STATUS.get(response.status_code, ServerError)
    return cls(message, status=response.status_code, code=code, response=response)


BY_CODE: dict[str, type[OpenDevelopError]] = {cls.code: cls for cls in BY_STATUS.values()}


def from_item(error: Any) -> OpenDevelopError:
    """The error one item of a batch got (``{"Code", "Message"}``)."""
    code = str((error or {}).get("Code") or "OpenDevelopError")
    cls = BY_CODE.get(code, ServerError)
    return cls(str((error or {}).get("Message") or "no message"), status=cls.status, code=code)


class WebhookVerificationError(OpenDevelopError):
    """A webhook's signature does not match its body, or its headers are missing or too old."""

    code = "WebhookVerificationError"
