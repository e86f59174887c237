"""Settings shared by the API, the admin command line and the dispatcher.

Everything is read from the environment by ``Settings.from_env()``, once, when
a component starts -- never at import time.  A bad value fails fast with a
message naming the variable.

Decisions worth knowing:

* The ``local`` stage is the default.  In it, the AWS endpoint defaults to the
  moto server that ``make dev`` runs on 127.0.0.1:5000, the credentials to
  moto's dummy ones, and the HMAC key for app secrets to a random key kept in
  ``.opendevelop/hmac.key`` in the checkout (generated on first use, never
  committed).  Any other stage must be given ``OPENDEVELOP_HMAC_KEY``, or
  ``OPENDEVELOP_HMAC_KEY_SECRET``: the id or ARN of a Secrets Manager secret
  holding it, read once at start-up (the AWS template generates that secret,
  so the key is never typed, committed, or visible in the Lambda's
  configuration).  A component that never checks app secrets (the
  dispatcher) asks for no key at all: ``from_env(require_hmac_key=False)``.
* ``OPENDEVELOP_AWS_ENDPOINT_URL`` wins over boto3's ``AWS_ENDPOINT_URL``.  The
  value ``none`` means "pass no endpoint": boto3 resolves it the usual way
  (real AWS, or an in-process mock such as ``moto.mock_aws`` in the functional
  tests), even in the local stage.
* Limits come as a default and a ceiling.  A request may ask for less or more
  than the default, but never above the ceiling (a 400, never a clamp).
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_ENDPOINT = "http://127.0.0.1:5000"


# Per-app quotas: sandboxes queued or running at once, creates per minute, run seconds per UTC day.
QUOTA_DEFAULTS = {"concurrency": 1000, "rate": 600, "daily_seconds": 24 * 3600}


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Limit:
    """A per-sandbox resource limit: what a run gets by default and the most it may ask for."""

    name: str
    default: float
    ceiling: float
    minimum: float
    integer: bool = True


@dataclass(frozen=True)
class Settings:
    stage: str = "local"
    region: str = "us-east-1"
    aws_endpoint_url: str | None = LOCAL_ENDPOINT
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    # Per-service endpoints from boto3's own AWS_ENDPOINT_URL_DYNAMODB / _SQS / _S3, which win
    # over the shared one for that service (an operator can put S3 elsewhere; a drill can cut one).
    service_endpoints: Mapping[str, str] = field(default_factory=dict)
    table_prefix: str = "opendevelop-local"
    bucket: str = "opendevelop-local-files"
    hmac_key: bytes = field(default=b"", repr=False)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_files: int = 1000
    max_cmd_bytes: int = 16 * 1024
    max_stdin_bytes: int = 1024 * 1024
    heartbeat_ttl_s: int = 30
    retention_days: int = 30  # sandbox rows expire (DynamoDB TTL ``expires_at``) this long after creation
    limits: Mapping[str, Limit] = field(default_factory=dict)
    # Webhooks (``callback_url``; see ``chalicelib.webhooks``): what the operator allows beyond public
    # addresses (CIDRs, host:port), the first retry's delay (each next one 3x), how many attempts.
    webhook_allow: tuple[str, ...] = ()
    webhook_backoff_s: float = 30.0
    webhook_attempts: int = 6
    webhook_rederive_s: float = 60.0
    # Per-app quotas when the app has none of its own (``manage.py app-set-limits``); 0 is no limit.
    quotas: Mapping[str, int] = field(default_factory=lambda: dict(QUOTA_DEFAULTS))
    # Fair share: the most sandboxes of one app woken (in a server's queue, or running) at once;
    # the rest wait parked and are woken as the app's own settle.  0: the active servers' slots.
    fair_share: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, require_hmac_key: bool = True) -> Settings:
        env = os.environ if environ is None else environ
        stage = env.get("OPENDEVELOP_STAGE", "local").strip() or "local"
        if not stage.replace("-", "").replace("_", "").isalnum():
            raise SettingsError(f"OPENDEVELOP_STAGE: {stage!r} may hold only letters, digits, '-' and '_'")
        local = stage == "local"
        endpoint_var = "OPENDEVELOP_AWS_ENDPOINT_URL" if env.get("OPENDEVELOP_AWS_ENDPOINT_URL") else "AWS_ENDPOINT_URL"
        endpoint = env.get(endpoint_var) or None
        if endpoint is not None and endpoint.strip().lower() == "none":
            endpoint = None  # boto3's own resolution: real AWS, or an in-process mock
        elif endpoint is None and local:
            endpoint = LOCAL_ENDPOINT
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"{endpoint_var}: {endpoint!r} is not an http(s) URL")
        key_id = env.get("AWS_ACCESS_KEY_ID") or ("testing" if local else None)
        key_secret = env.get("AWS_SECRET_ACCESS_KEY") or ("testing" if local else None)
        prefix = env.get("OPENDEVELOP_TABLE_PREFIX", f"opendevelop-{stage}")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        aws_kwargs = {"region_name": region, "endpoint_url": endpoint}
        if key_id and key_secret:
            aws_kwargs.update(aws_access_key_id=key_id, aws_secret_access_key=key_secret)
        return cls(
            stage=stage,
            region=region,
            aws_endpoint_url=endpoint,
            service_endpoints=_service_endpoints(env),
            aws_access_key_id=key_id,
            aws_secret_access_key=key_secret,
            table_prefix=prefix,
            bucket=env.get("OPENDEVELOP_BUCKET", f"{prefix}-files"),
            hmac_key=_hmac_key(env, local, aws_kwargs) if require_hmac_key else b"",
            max_upload_bytes=_int(env, "OPENDEVELOP_MAX_UPLOAD_BYTES", 10 * 1024 * 1024, 1),
            max_files=_int(env, "OPENDEVELOP_MAX_FILES", 1000, 1),
            max_cmd_bytes=_int(env, "OPENDEVELOP_MAX_CMD_BYTES", 16 * 1024, 1),
            max_stdin_bytes=_int(env, "OPENDEVELOP_MAX_STDIN_BYTES", 1024 * 1024, 0),
            heartbeat_ttl_s=_int(env, "OPENDEVELOP_HEARTBEAT_TTL", 30, 5),
            retention_days=_int(env, "OPENDEVELOP_RETENTION_DAYS", 30, 1),
            limits=_limits(env),
            webhook_allow=webhook_allow(env.get("OPENDEVELOP_WEBHOOK_ALLOW", "")),
            webhook_backoff_s=env_float(env, "OPENDEVELOP_WEBHOOK_BACKOFF", 30.0, 0.1, 3600.0),
            webhook_attempts=env_int(env, "OPENDEVELOP_WEBHOOK_ATTEMPTS", 6, 1, 20),
            webhook_rederive_s=env_float(env, "OPENDEVELOP_WEBHOOK_REDERIVE", 60.0, 1.0, 3600.0),
            fair_share=_int(env, "OPENDEVELOP_FAIR_SHARE", 0, 0),
            quotas={
                name: _int(env, f"OPENDEVELOP_QUOTA_{name.upper()}", default, 0)
                for name, default in QUOTA_DEFAULTS.items()
            },
        )

    @property
    def webhook_queue(self) -> str:
        """The webhooks queue's name (the AWS template's ``WebhooksQueue``; the local stack makes it)."""
        return f"{self.table_prefix}-webhooks"

    def own_endpoints(self) -> set[tuple[str, int]]:
        """(host, port) of the platform's own endpoints (the AWS ones configured): never a webhook's target."""
        own = set()
        for url in {self.aws_endpoint_url, *self.service_endpoints.values()} - {None}:
            parts = urlsplit(str(url))
            if parts.hostname:
                own.add((parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)))
        return own

    def limit(self, name: str) -> Limit:
        return self.limits[name]

    def endpoint(self, service: str | None = None) -> str | None:
        """The endpoint URL for ``service`` ("dynamodb", "sqs", "s3"); None: boto3's own resolution."""
        return self.service_endpoints.get(service or "") or self.aws_endpoint_url

    def boto_kwargs(self, service: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client``: region, endpoint (``service``'s own, if set) and credentials."""
        kwargs: dict[str, Any] = {"region_name": self.region}
        endpoint = self.endpoint(service)
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        if self.aws_access_key_id and self.aws_secret_access_key:
            kwargs["aws_access_key_id"] = self.aws_access_key_id
            kwargs["aws_secret_access_key"] = self.aws_secret_access_key
        return kwargs


SERVICES = ("dynamodb", "sqs", "s3")


def _service_endpoints(env: Mapping[str, str]) -> dict[str, str]:
    endpoints = {}
    for service in SERVICES:
        var = f"AWS_ENDPOINT_URL_{service.upper()}"
        value = (env.get(var) or "").strip()
        if not value:
            continue
        if not value.startswith(("http://", "https://")):
            raise SettingsError(f"{var}: {value!r} is not an http(s) URL")
        endpoints[service] = value
    return endpoints


# name: (default, ceiling, minimum, integer)
_LIMIT_DEFAULTS: dict[str, tuple[float, float, float, bool]] = {
    "timeout": (10, 60, 1, False),  # seconds, wall clock
    "memory_mb": (256, 2048, 16, True),
    "cpus": (1.0, 2.0, 0.1, False),
    "pids": (128, 1024, 16, True),
    "disk_mb": (64, 1024, 1, True),  # the working folder's tmpfs
    "output_kb": (64, 10240, 1, True),  # per stream
    "artifacts_kb": (1024, 10240, 1, True),  # the content of the files kept from out/
}


def _limits(env: Mapping[str, str]) -> dict[str, Limit]:
    limits = {}
    for name, (default, ceiling, minimum, integer) in _LIMIT_DEFAULTS.items():
        var = f"OPENDEVELOP_{name.upper()}"
        dflt = _number(env, f"{var}_DEFAULT", default, minimum, integer)
        ceil = _number(env, f"{var}_MAX", ceiling, minimum, integer)
        if dflt > ceil:
            raise SettingsError(f"{var}_DEFAULT: {dflt} is above {var}_MAX ({ceil})")
        limits[name] = Limit(name, dflt, ceil, minimum, integer)
    return limits


def _number(env: Mapping[str, str], var: str, default: float, minimum: float, integer: bool) -> float:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise SettingsError(f"{var}: {raw!r} is not {kind}") from None
    if not math.isfinite(value):  # float() takes "nan" and "inf"; neither is a usable limit
        raise SettingsError(f"{var}: {raw!r} is not a finite number")
    if value < minimum:
        raise SettingsError(f"{var}: {raw!r} is below the minimum {minimum}")
    return value


def _int(env: Mapping[str, str], var: str, default: int, minimum: int) -> int:
    return int(_number(env, var, default, minimum, True))


def _hmac_key(env: Mapping[str, str], local: bool, aws_kwargs: Mapping[str, Any]) -> bytes:
    raw = env.get("OPENDEVELOP_HMAC_KEY")
    if not raw and env.get("OPENDEVELOP_HMAC_KEY_SECRET"):
        raw = _secret_string("OPENDEVELOP_HMAC_KEY_SECRET", env["OPENDEVELOP_HMAC_KEY_SECRET"], aws_kwargs)
    if raw:
        if len(raw) < 32:
            raise SettingsError("OPENDEVELOP_HMAC_KEY: must be at least 32 characters")
        return raw.encode()
    if not local:
        raise SettingsError(
            "OPENDEVELOP_HMAC_KEY: required outside the local stage "
            "(or OPENDEVELOP_HMAC_KEY_SECRET: a Secrets Manager secret holding it)"
        )
    path = Path(env.get("OPENDEVELOP_STATE_DIR") or PROJECT_ROOT / ".opendevelop") / "hmac.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic: the first writer wins, the others read its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def _secret_string(var: str, secret_id: str, aws_kwargs: Mapping[str, Any]) -> str:
    """A Secrets Manager secret's string, read once when a component starts."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    kwargs = {k: v for k, v in aws_kwargs.items() if v is not None}
    try:
        value = boto3.session.Session().client("secretsmanager", **kwargs).get_secret_value(SecretId=secret_id)
    except (BotoCoreError, ClientError) as e:
        raise SettingsError(f"{var}: cannot read secret {secret_id!r}: {e}") from e
    text = value.get("SecretString")
    if not text:
        raise SettingsError(f"{var}: secret {secret_id!r} holds no string")
    return str(text).strip()


def webhook_allow(raw: str) -> tuple[str, ...]:
    """``OPENDEVELOP_WEBHOOK_ALLOW``: comma- or space-separated CIDRs (``10.1.0.0/16``) and ``host:port`` pairs."""
    entries = []
    for entry in raw.replace(",", " ").split():
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"OPENDEVELOP_WEBHOOK_ALLOW: {entry!r} is neither a CIDR nor host:port") from None
        entries.append(entry.lower())
    return tuple(entries)


def env_int(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    """A whole number from ``var``, or ``default`` when unset; a bad value names the variable."""
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{var}: {raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise SettingsError(f"{var}: {value} is not between {low} and {high}")
    return value


def env_float(env: Mapping[str, str], var: str, default: float, low: float, high: float) -> float:
    """A number from ``var``, or ``default`` when unset; a bad value names the variable."""
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{var}: {raw!r} is not a number") from None
    if not low <= value <= high:  # also refuses nan
        raise SettingsError(f"{var}: {value} is not between {low:g} and {high:g}")
    return value
