"""OpenDevelop's Python client: run code in a fresh, locked-down sandbox as if calling a function.

from opendevelop import Client
sandbox = Client().run("python test.py", files=["test.py"])
print(sandbox.stdout, end="")
"""

from opendevelop.artifacts import UnsafeArtifactError
from opendevelop.client import DEFAULT_URL, Client
from opendevelop.errors import (
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    OpenDevelopError,
    PayloadTooLargeError,
    QuotaExceeded,
    ServerError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
    UnreachableError,
    UnsupportedMediaTypeError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from opendevelop.models import FINAL_STATES, Artifact, Image, Sandbox
from opendevelop.webhooks import verify_webhook

__version__ = "1.0.0"

__all__ = [
    "DEFAULT_URL",
    "Artifact",
    "FINAL_STATES",
    "BadRequestError",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "Image",
    "NotFoundError",
    "OpenDevelopError",
    "PayloadTooLargeError",
    "QuotaExceeded",
    "Sandbox",
    "ServerError",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnreachableError",
    "UnsafeArtifactError",
    "UnsupportedMediaTypeError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
