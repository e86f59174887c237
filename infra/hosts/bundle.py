"""What ``server-bootstrap`` installs on a host, rendered on the operator's machine before any connection.

The dispatcher needs ``chalicelib``, ``dispatcher``, its requirements and the
host scripts under ``infra``; this package (``infra/hosts``, the bootstrap
itself) stays behind.  The files go as one tar whose manifest of content
hashes tells a later run whether anything changed; the environment file and
the service unit are rendered from the templates in ``infra/host``.
"""

from __future__ import annotations

import hashlib
import io
import re
import string
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from chalicelib.errors import InvalidInput
from chalicelib.settings import Settings

DEFAULT_PREFIX = "/opt/opendevelop"
UNIT_NAME = "opendevelop-dispatcher"
ENGINE_URL = "unix:///var/run/docker.sock"
# The dispatcher's virtualenv installs the second; it includes the first (`-r requirements.txt`).
REQUIREMENTS = ("requirements.txt", "requirements-dispatcher.txt")
# What the dispatcher needs on the host, relative to the checkout.
SHIPPED = (
    *REQUIREMENTS,
    "chalicelib",
    "dispatcher",
    "infra/host",
    "infra/local/host-setup.sh",
    "infra/images",
)
ENV_TEMPLATE = "infra/host/dispatcher.env.template"
UNIT_TEMPLATE = "infra/host/opendevelop-dispatcher.service"
PREFIX_RE = re.compile(r"^/[A-Za-z0-9_./-]+$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+=,-]*$")
# Set by bootstrap itself: an --env-file may not override which server, stage or tables the host serves.
RESERVED_ENV = frozenset(
    {
        "OPENDEVELOP_SERVER",
        "OPENDEVELOP_STAGE",
        "OPENDEVELOP_TABLE_PREFIX",
        "OPENDEVELOP_BUCKET",
        "OPENDEVELOP_DOCKER_URL",
        "OPENDEVELOP_HMAC_KEY",
        "OPENDEVELOP_HMAC_KEY_SECRET",
        "AWS_DEFAULT_REGION",
    }
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shipped_files(source: Path) -> dict[str, bytes]:
    """Every file of ``SHIPPED`` under ``source`` by its relative path, without bytecode."""
    files: dict[str, bytes] = {}
    for entry in SHIPPED:
        path = source / entry
        if not path.exists():
            raise InvalidInput("source", f"{source} has no {entry}; is it an OpenDevelop checkout?")
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                files[file.relative_to(source).as_posix()] = file.read_bytes()
    return files


def manifest(files: dict[str, bytes]) -> bytes:
    """``sha256sum``'s format, sorted: equal bytes exactly when the files are equal."""
    lines = [f"{sha256(data)}  {name}\n" for name, data in sorted(files.items())]
    return "".join(lines).encode()


def code_tar(files: dict[str, bytes], manifest_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in [*sorted(files.items()), (".manifest", manifest_bytes)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def release_tar(source: Path) -> bytes:
    """The release bundle an Auto Scaling group's host installs at boot (its user-data, infra/aws):
    the same files and manifest ``server-bootstrap`` sends, as one ``.tar.gz``."""
    files = shipped_files(source)
    return code_tar(files, manifest(files))


def render_env(settings: Settings, server: str, extra: dict[str, str], template: str) -> bytes:
    """The host's ``dispatcher.env``; every value is checked so the shell and systemd read it alike."""
    values: dict[str, str] = {}
    if settings.stage == "local" or settings.aws_endpoint_url:
        # The local stack's endpoint and dummy credentials; a real stage's hosts get their own
        # credentials through --env-file (never the operator's).
        if settings.aws_endpoint_url:
            values["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
        if settings.stage == "local" and settings.aws_access_key_id and settings.aws_secret_access_key:
            values["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id
            values["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key
    values.update(extra)
    fixed = {
        "stage": settings.stage,
        "server": server,
        "table_prefix": settings.table_prefix,
        "bucket": settings.bucket,
        "region": settings.region,
    }
    for name, value in [*fixed.items(), *values.items()]:
        if not ENV_VALUE.match(value):
            raise InvalidInput("env-file", f"{name}: {value!r} may hold only letters, digits and _./:@%+=,-")
    lines = "".join(f"{name}={value}\n" for name, value in sorted(values.items()))
    return string.Template(template).substitute(fixed, extra=lines).rstrip("\n").encode() + b"\n"


def read_env_file(path: str | None) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines allowed) for the host's environment."""
    if not path:
        return {}
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidInput("env-file", f"cannot read {path}: {e.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise InvalidInput("env-file", f"{path}:{number}: expected NAME=value")
        out[name] = value
    if RESERVED_ENV & out.keys():
        taken = ", ".join(sorted(RESERVED_ENV & out.keys()))
        raise InvalidInput("env-file", f"{taken}: set by server-bootstrap itself")
    return out


def render_unit(template: str, prefix: str) -> bytes:
    return template.replace("@PREFIX@", prefix).encode()


def check_prefix(prefix: str) -> str:
    """The install prefix, safe to paste into remote scripts unquoted (checked here, once)."""
    prefix = prefix.rstrip("/")
    if not PREFIX_RE.match(prefix) or ".." in prefix.split("/") or prefix in ("", "/usr", "/etc", "/var"):
        raise InvalidInput("prefix", f"{prefix!r} must be an absolute path of letters, digits and _./-")
    return prefix


@dataclass(frozen=True)
class Bundle:
    """Everything one bootstrap installs, rendered and checked before the host is touched."""

    prefix: str
    files: dict[str, bytes]
    manifest: bytes
    env: bytes
    unit: bytes
    requirements_sha: str  # of both requirements files: the virtualenv is rebuilt when either changes

    @classmethod
    def build(cls, settings: Settings, server: str, prefix: str, env_file: str | None, source: Path) -> Bundle:
        prefix = check_prefix(prefix)
        files = shipped_files(source)
        env = render_env(settings, server, read_env_file(env_file), files[ENV_TEMPLATE].decode())
        return cls(
            prefix=prefix,
            files=files,
            manifest=manifest(files),
            env=env,
            unit=render_unit(files[UNIT_TEMPLATE].decode(), prefix),
            requirements_sha=sha256(manifest({name: files[name] for name in REQUIREMENTS})),
        )
