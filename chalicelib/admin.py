"""What the admin command line (``manage.py``) does, free of argument parsing.

Each function validates everything first and writes only when all is well,
so a bad argument changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from pynamodb.exceptions import DoesNotExist

from chalicelib import aws, image_meta, lifecycle, models, quotas, scheduling, webhook_send
from chalicelib.auth import hash_password, new_id, new_secret, secret_digest
from chalicelib.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from chalicelib.models import App, DockerServer, Image, Sandbox, User
from chalicelib.settings import Settings
from chalicelib.validation import LIMIT_FIELDS, parse_limit

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
DOCKER_URL = re.compile(r"^(unix://.+|tcp://[^/\s]+|ssh://[^/\s]+)$")
RUNTIMES = ("runc", "runsc")
SERVER_STATES = ("active", "draining", "disabled")


def _name(field: str, value: str) -> str:
    if not NAME.match(value or ""):
        raise InvalidInput(
            field, f"{value!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _create(row: Any, what: str, key: str) -> None:
    if not lifecycle.create_only(row):
        raise AlreadyExists(f"{what} {key!r} already exists")


def init(settings: Settings) -> list[str]:
    """Create the stage's tables, bucket and webhooks queue where missing (idempotent)."""
    created = models.create_tables()
    aws.ensure_bucket(settings)
    aws.create_webhook_queue(settings)
    return created


# Users


def user_create(username: str, email: str, password: str, organization: bool = False) -> User:
    _name("username", username)
    if not EMAIL.match(email or ""):
        raise InvalidInput("email", f"{email!r} is not an e-mail address")
    if not password or len(password) < 3:
        raise InvalidInput("passwd", "must be at least 3 characters")
    user = User(username, email=email, password_hash=hash_password(password), organization=organization)
    _create(user, "user", username)
    return user


def user_delete(username: str) -> None:
    user = _get(User, username, "user", field="username")
    owned = list(App.by_owner.query(username, limit=1))
    if owned:
        raise InvalidInput("username", f"user {username!r} still owns apps; delete them first")
    user.delete()


# Apps


def app_create(
    name: str,
    username: str,
    app_id: str | None = None,
    secret: str | None = None,
    settings: Settings | None = None,
    limits: dict[str, Any] | None = None,
    network: bool = False,
) -> tuple[App, str]:
    """Create an app; return it with its secret, which is shown this once and never stored."""
    assert settings is not None
    if not name or not name.strip():
        raise InvalidInput("app_name", "is required")
    _get(User, username, "user", field="username")
    app_id = app_id or new_id()
    if not re.match(r"^[A-Za-z0-9]{8,64}$", app_id):
        raise InvalidInput("app_id", "must be 8-64 letters or digits")
    secret = secret or new_secret()
    if len(secret) < 16:
        raise InvalidInput("secret", "must be at least 16 characters")
    app = App(
        app_id,
        name=name.strip(),
        owner=username,
        secret_hash=secret_digest(settings.hmac_key, secret),
        limits=check_limits(limits or {}, settings),
        network=network,
        webhook_secret=webhook_send.new_secret(),
    )
    _create(app, "app", app_id)
    return app, secret


def check_limits(limits: dict[str, Any], settings: Settings) -> dict[str, float]:
    out = {}
    for name, value in limits.items():
        if value is None:
            continue
        if name not in LIMIT_FIELDS:
            raise InvalidInput(name, f"unknown limit; known limits are {', '.join(LIMIT_FIELDS)}")
        out[name] = parse_limit(name, value, settings)
        if out[name] > settings.limit(name).ceiling:
            raise InvalidInput(name, f"{value} is above the global ceiling {settings.limit(name).ceiling:g}")
    return out


def app_set_limits(
    app_id: str,
    limits: dict[str, Any],
    settings: Settings,
    network: bool | None = None,
    app_quotas: dict[str, Any] | None = None,
) -> App:
    """Set an app's ceilings, network permission and quotas (``concurrency``, ``rate``, ``daily_seconds``)."""
    app = _get(App, app_id, "app", field="app_id")
    merged = {**(app.limits or {}), **check_limits(limits, settings)}
    actions = [App.limits.set(merged)]
    if network is not None:
        actions.append(App.network.set(network))
    new_quotas = quotas.check_quotas(app_quotas or {})
    if new_quotas:
        actions.append(App.quotas.set({**(app.quotas or {}), **new_quotas}))
    app.update(actions=actions)
    return app


def app_usage(app_id: str, settings: Settings) -> dict[str, Any]:
    """What the app's ``GET /api/usage`` answers: running, queued, today's use and the limits."""
    return quotas.usage(_get(App, app_id, "app", field="app_id"), settings)


def app_rotate_secret(app_id: str, settings: Settings) -> tuple[App, str]:
    app = _get(App, app_id, "app", field="app_id")
    secret = new_secret()
    app.update(actions=[App.secret_hash.set(secret_digest(settings.hmac_key, secret))])
    return app, secret


def app_rotate_webhook_secret(app_id: str) -> tuple[App, str]:
    """A new webhook secret (``whsec_...``): webhooks signed from now on use it, the old one stops."""
    app = _get(App, app_id, "app", field="app_id")
    secret = webhook_send.new_secret()
    app.update(actions=[App.webhook_secret.set(secret)])
    return app, secret


def app_delete(app_id: str) -> None:
    _get(App, app_id, "app", field="app_id").delete()


# Images


def image_create(
    name: str,
    docker_image: str,
    description: str = "",
    url: str = "",
    enabled: bool = True,
    replace: bool = False,
    **meta: Any,
) -> Image:
    """Register an image; ``meta`` describes it (``language``, ``version``, ``run``, ``extensions``,
    ``run_by_extension``: see ``chalicelib.image_meta``)."""
    _name("name", name)
    if not docker_image or any(c.isspace() for c in docker_image):
        raise InvalidInput("docker-image", f"{docker_image!r} is not a Docker image reference")
    unknown = sorted(set(meta) - {"language", "version", "run", "extensions", "run_by_extension"})
    if unknown:
        raise InvalidInput(unknown[0], "not a field of an image")
    described = image_meta.check({**meta, "description": description})
    image = Image(
        name,
        docker_image=docker_image,
        registry_url=url or "",
        enabled=enabled,
        **described,
    )
    if replace:
        image.save()
    else:
        _create(image, "image", name)
    return image


def image_delete(name: str) -> None:
    _get(Image, name, "image", field="name").delete()


# Docker servers


def server_create(
    settings: Settings,
    name: str,
    url: str,
    buckets: str = "",
    slots: int = 2,
    runtime: str = "runc",
    network: bool = False,
    replace: bool = False,
) -> DockerServer:
    _name("name", name)
    if not DOCKER_URL.match(url or ""):
        raise InvalidInput("url", f"{url!r} must be unix:///path, tcp://host:port or ssh://user@host[:port]")
    if runtime not in RUNTIMES:
        raise InvalidInput("runtime", f"{runtime!r} must be one of {', '.join(RUNTIMES)}")
    if not 1 <= int(slots) <= 256:
        raise InvalidInput("slots", "must be between 1 and 256")
    if not replace and _exists(DockerServer, name):
        raise AlreadyExists(f"server {name!r} already exists")
    queue_url, dlq_url = aws.create_server_queue(settings, name)
    server = DockerServer(
        name,
        url=url,
        buckets=buckets or "",
        queue_url=queue_url,
        dlq_url=dlq_url,
        slots=int(slots),
        runtime=runtime,
        network=network,
        state="active",
    )
    if replace:
        server.save()
    else:
        _create(server, "server", name)
    scheduling.forget()
    return server


def server_set_state(name: str, state: str) -> DockerServer:
    if state not in SERVER_STATES:
        raise InvalidInput("state", f"{state!r} must be one of {', '.join(SERVER_STATES)}")
    server = _get(DockerServer, name, "server", field="name")
    server.update(actions=[DockerServer.state.set(state)])
    return server


def server_delete(settings: Settings, name: str) -> None:
    """Delete a server and its queues; refused while sandboxes run there (drain it first).

    Deleting a server under running work would let the reconciler start that
    work again elsewhere while its containers may still run.
    """
    server = _get(DockerServer, name, "server", field="name")
    running = [s.sandbox_id for s in Sandbox.by_status.query("running", filter_condition=Sandbox.server == name)]
    if running or server.inflight:
        held = sorted(set(running) | set(server.inflight or []))
        raise Conflict(
            f"server {name!r} is running {len(held)} sandbox(es) ({', '.join(held[:5])}); "
            f"drain it (./manage.py server-drain --name={name}), wait until it runs nothing, then delete it"
        )
    aws.delete_server_queue(settings, server.queue_url, server.dlq_url)
    server.delete()
    scheduling.forget()


def _exists(model: Any, key: str) -> bool:
    try:
        model.get(key)
        return True
    except DoesNotExist:
        return False


def _get(model: Any, key: str, what: str, field: str | None = None) -> Any:
    try:
        return model.get(key)
    except DoesNotExist:
        raise NotFound(f"{field or what}: no {what} {key!r}") from None


def describe(row: Any) -> dict[str, Any]:
    """A row as plain JSON-able data, never with a secret digest or password hash."""
    data = {}
    for name in row.get_attributes():
        if name in ("secret_hash", "password_hash", "webhook_secret"):
            continue
        value = getattr(row, name)
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        data[name] = value
    return data
