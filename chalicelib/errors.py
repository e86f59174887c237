"""Domain errors.  The API maps them to HTTP in one place (``chalicelib.api``).

Three kinds are kept apart: bad input (``InvalidInput``: the caller's fault, a
4xx naming the field), an infrastructure fault (``Unavailable``: logged in full,
shown as a short 503), and the user's program failing, which is a *result*
recorded on the sandbox and never an error here.
"""

from __future__ import annotations


class OpenDevelopError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(OpenDevelopError):
    status = 400
    code = "BadRequestError"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Unauthorized(OpenDevelopError):
    status = 401
    code = "UnauthorizedError"


class NotFound(OpenDevelopError):
    status = 404
    code = "NotFoundError"


class Conflict(OpenDevelopError):
    status = 409
    code = "ConflictError"


class Gone(OpenDevelopError):
    """What was stored is no longer (expired or deleted), though the sandbox is still there."""

    status = 410
    code = "GoneError"


class RangeNotSatisfiable(OpenDevelopError):
    status = 416
    code = "RangeNotSatisfiable"


class PayloadTooLarge(OpenDevelopError):
    status = 413
    code = "RequestEntityTooLargeError"


class UnsupportedMediaType(OpenDevelopError):
    status = 415
    code = "UnsupportedMediaType"


class QuotaExceeded(OpenDevelopError):
    """Over a per-app quota (``chalicelib.quotas``); ``retry_after``: seconds until it frees, or a guess."""

    status = 429
    code = "TooManyRequests"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(OpenDevelopError):
    """The platform cannot take the request now (no server, AWS endpoint down)."""

    status = 503
    code = "ServiceUnavailableError"


class AlreadyExists(OpenDevelopError):
    """An admin tried to create something whose key is taken."""

    status = 409
    code = "ConflictError"
