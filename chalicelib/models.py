"""DynamoDB tables (pynamodb models).

Table names depend on the stage, so the models are bound to their tables by
``configure(settings)`` when a component starts, not when it is imported.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    JSONAttribute,
    ListAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from chalicelib.settings import Settings

SANDBOX_STATES = ("queued", "running", "terminated", "error", "cancelled")
FINAL_STATES = ("terminated", "error", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


# Set by ``configure`` from ``Settings.retention_days``.
_retention = timedelta(days=30)


def expiry() -> datetime:
    """When a sandbox created now expires: DynamoDB's TTL deletes the row some time after (see infra/aws)."""
    return utcnow() + _retention


class _Base(Model):
    class Meta:
        table_name = "unconfigured"
        billing_mode = "PAY_PER_REQUEST"
        region = "us-east-1"


class User(_Base):
    class Meta(_Base.Meta):
        suffix = "users"

    username = UnicodeAttribute(hash_key=True)
    email = UnicodeAttribute()
    password_hash = UnicodeAttribute()
    organization = BooleanAttribute(default=False)
    created_at = UTCDateTimeAttribute(default=utcnow)


class AppsByOwner(GlobalSecondaryIndex["App"]):
    class Meta:
        index_name = "by_owner"
        projection = AllProjection()

    owner = UnicodeAttribute(hash_key=True)


class App(_Base):
    class Meta(_Base.Meta):
        suffix = "apps"

    app_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    owner = UnicodeAttribute()
    secret_hash = UnicodeAttribute()
    # Per-app ceilings, e.g. {"memory_mb": 512}; a missing key means the global ceiling.
    limits = JSONAttribute(default=dict)
    network = BooleanAttribute(default=False)
    # Signs the app's webhooks (``whsec_...``; see ``chalicelib.webhook_send``).  Kept as it is, since
    # signing needs it: the table is encrypted at rest and only the API's role reads it.
    webhook_secret = UnicodeAttribute(null=True)
    # Per-app quotas, e.g. {"concurrency": 10, "rate": 60, "daily_seconds": 3600}; a missing key
    # means the settings' default, 0 no limit (see ``chalicelib.quotas``).
    quotas = JSONAttribute(default=dict)
    created_at = UTCDateTimeAttribute(default=utcnow)
    by_owner = AppsByOwner()


class Image(_Base):
    class Meta(_Base.Meta):
        suffix = "images"

    name = UnicodeAttribute(hash_key=True)
    description = UnicodeAttribute(default="")
    docker_image = UnicodeAttribute()
    registry_url = UnicodeAttribute(default="")
    enabled = BooleanAttribute(default=True)
    created_at = UTCDateTimeAttribute(default=utcnow)
    # What the image says of itself (``GET /api/images/{name}``; see ``chalicelib.images``).
    language = UnicodeAttribute(default="")
    version = UnicodeAttribute(default="")
    run = UnicodeAttribute(default="")  # a command line for one file: "go run {file}"
    extensions = ListAttribute(of=UnicodeAttribute, default=list)  # [".go"]: the files it claims
    run_by_extension = JSONAttribute(default=dict)  # {".c": "gcc ... {file}"}: where `run` does not fit


class DockerServer(_Base):
    class Meta(_Base.Meta):
        suffix = "servers"

    name = UnicodeAttribute(hash_key=True)
    url = UnicodeAttribute()
    buckets = UnicodeAttribute(default="")
    queue_url = UnicodeAttribute()
    dlq_url = UnicodeAttribute(default="")
    slots = NumberAttribute(default=2)
    runtime = UnicodeAttribute(default="runc")
    state = UnicodeAttribute(default="active")  # active | draining | disabled | stopping (asked to warm-stop)
    network = BooleanAttribute(default=False)
    last_heartbeat = UTCDateTimeAttribute(null=True)
    running = NumberAttribute(default=0)
    images = ListAttribute(of=UnicodeAttribute, default=list)
    # Where the dispatcher runs, for a host set up by ``manage.py server-bootstrap``: ssh://user@host:port.
    host = UnicodeAttribute(null=True)
    # The sandboxes its dispatcher had in hand at the last heartbeat; None from a
    # dispatcher that does not report them (the reconciler then does not judge by it).
    inflight = ListAttribute(of=UnicodeAttribute, null=True)
    # Liveness without comparing clocks (see ``chalicelib.liveness``): the dispatcher adds one to
    # ``beat`` per heartbeat and names itself in ``instance``; the reconciler notes, by its own
    # clock, when it saw ``beat`` change (``seen_beat``, ``seen_at``) and gives its verdict in ``dead``.
    beat = NumberAttribute(default=0)
    instance = UnicodeAttribute(null=True)
    seen_beat = NumberAttribute(null=True)
    seen_at = UTCDateTimeAttribute(null=True)
    dead = BooleanAttribute(default=False)
    # How long after its last acknowledged heartbeat the dispatcher has surely killed what it ran.
    fence_s = NumberAttribute(null=True)
    # False while the engine cannot make containers (disk full, image store broken): no new work.
    engine_ok = BooleanAttribute(default=True)
    engine_error = UnicodeAttribute(null=True)
    # Being retired by its Auto Scaling group (chalicelib.scale_in): the lifecycle action, and since when.
    retiring = JSONAttribute(null=True)
    retiring_since = UTCDateTimeAttribute(null=True)
    created_at = UTCDateTimeAttribute(default=utcnow)


class SandboxesByApp(GlobalSecondaryIndex["Sandbox"]):
    """An app's sandboxes, newest first: query with ``scan_index_forward=False``."""

    class Meta:
        index_name = "by_app"
        projection = AllProjection()

    app_id = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class SandboxesByStatus(GlobalSecondaryIndex["Sandbox"]):
    """Sandboxes in one state, oldest first: the reconciler's view of ``queued`` and ``running``.

    Only what the reconciler needs is projected, so finished rows (with their
    output) cost the index little.
    """

    class Meta:
        index_name = "by_status"
        projection = IncludeProjection(
            [
                "server",
                "attempts",
                "started_at",
                "woken_at",
                "app_id",
                "docker_image",
                "token",
                "holder",
                "network",
                "suspect_at",
                "limits",
                "parked_app",
            ]
        )

    status = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class SandboxesByCallback(GlobalSecondaryIndex["Sandbox"]):
    """Sandboxes whose webhook is still to be delivered (sparse: ``callback_pending`` is set only then).

    The reconciler reads it to send again what a lost enqueue or a crashed
    delivery left (``chalicelib.webhooks.rederive``).
    """

    class Meta:
        index_name = "by_callback"
        projection = IncludeProjection(["status", "finished_at", "callback_attempts", "callback_due_at"])

    callback_pending = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class SandboxesByRelease(GlobalSecondaryIndex["Sandbox"]):
    """Settled sandboxes whose quotas are still to be freed (sparse: ``release_pending`` is set by the
    settling write and removed once the release is done).  The reconciler frees what a process
    that died between the two left (``chalicelib.releases.rederive_releases``)."""

    class Meta:
        index_name = "by_release"
        projection = IncludeProjection(["finished_at"])

    release_pending = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class SandboxesParked(GlobalSecondaryIndex["Sandbox"]):
    """An app's parked sandboxes, oldest first (sparse: only rows holding ``parked_app``; see ``quotas``)."""

    class Meta:
        index_name = "parked"
        projection = IncludeProjection(["status", "server"])

    parked_app = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class Sandbox(_Base):
    class Meta(_Base.Meta):
        suffix = "sandboxes"

    sandbox_id = UnicodeAttribute(hash_key=True)
    app_id = UnicodeAttribute()
    created_at = UTCDateTimeAttribute(default=utcnow)
    image = UnicodeAttribute()
    docker_image = UnicodeAttribute()
    cmd = ListAttribute(of=UnicodeAttribute)
    # Resource limits of this run: timeout, memory_mb, cpus, pids, disk_mb, output_kb, artifacts_kb.
    limits = JSONAttribute(default=dict)
    env = JSONAttribute(default=dict)
    network = BooleanAttribute(default=False)
    files_key = UnicodeAttribute(null=True)  # S3 key of the tar of uploaded files (+ stdin), when large
    files_inline = BinaryAttribute(null=True, legacy_encoding=False)  # the same bytes, when small (no S3 trip)
    files_bytes = NumberAttribute(default=0)  # size of the tar part
    stdin_bytes = NumberAttribute(default=0)
    file_count = NumberAttribute(default=0)
    status = UnicodeAttribute(default="queued")
    server = UnicodeAttribute(null=True)
    attempts = NumberAttribute(default=0)
    # The fence of the run in progress: written by the claim, required by every later write of
    # that run (see ``chalicelib.lifecycle``); ``holder`` is the claiming dispatcher's instance.
    token = UnicodeAttribute(null=True)
    holder = UnicodeAttribute(null=True)
    started_at = UTCDateTimeAttribute(null=True)
    finished_at = UTCDateTimeAttribute(null=True)
    return_code = NumberAttribute(null=True)
    # Each stream's first 64 KiB as text, its full size, and the streams stored as S3 objects
    # because the text does not hold them exactly (see ``chalicelib.output``).
    stdout = UnicodeAttribute(null=True)
    stderr = UnicodeAttribute(null=True)
    logs = UnicodeAttribute(null=True)
    stdout_bytes = NumberAttribute(null=True)
    stderr_bytes = NumberAttribute(null=True)
    logs_bytes = NumberAttribute(null=True)
    output_objects = JSONAttribute(null=True)  # a list of stream names
    # The run whose objects those are: their keys hold its token, so an upload by a run that lost the
    # sandbox (its result refused) never replaces the recorded run's.  None: keys without it (older rows).
    output_token = UnicodeAttribute(null=True)
    inline_truncated = BooleanAttribute(default=False)  # some stream is longer than its inline text
    output_gone = BooleanAttribute(default=False)  # a download found a stored stream missing
    output_key = UnicodeAttribute(null=True)  # rows written before per-stream output: one JSON object
    # The files the program left in out/ (see ``chalicelib.artifacts``): the totals, the first
    # entries ``[name, size, offset]``, and the S3 prefix of the run that stored them.
    artifacts = JSONAttribute(null=True)
    artifacts_count = NumberAttribute(null=True)
    artifacts_bytes = NumberAttribute(null=True)
    artifacts_truncated = BooleanAttribute(default=False)
    artifacts_skipped = NumberAttribute(null=True)
    artifacts_key = UnicodeAttribute(null=True)
    timed_out = BooleanAttribute(default=False)
    oom_killed = BooleanAttribute(default=False)
    output_truncated = BooleanAttribute(default=False)
    error = UnicodeAttribute(null=True)
    # DynamoDB's TTL attribute (the AWS template enables it): the row goes away after this.
    expires_at = TTLAttribute(null=True, default_for_new=expiry)
    woken_at = UTCDateTimeAttribute(null=True)  # when the reconciler last re-sent its wake-up
    dead_letters = NumberAttribute(default=0)  # how often its wake-up reached the dead-letter queue
    # Run seconds this sandbox reserved of its app's day (its timeout; ``chalicelib.quotas``);
    # None on rows from before quotas, which hold and release nothing.
    quota_seconds = NumberAttribute(null=True)
    # The app's id while the sandbox waits parked (queued, no wake-up sent: its app had its fair
    # share woken already); removed when it is woken (``releases.unpark``) or settled.
    parked_app = UnicodeAttribute(null=True)
    # When the reconciler first found this running row held by nobody (its clock; see ``reconciler``).
    suspect_at = UTCDateTimeAttribute(null=True)
    # The webhook (``callback_url``; see ``chalicelib.webhooks``): pending, delivered or failed; the
    # attempts made; the last one's error; when the next attempt is due (or a claimed one times out).
    callback_url = UnicodeAttribute(null=True)
    callback_status = UnicodeAttribute(null=True)
    callback_attempts = NumberAttribute(null=True)
    callback_error = UnicodeAttribute(null=True)
    callback_due_at = UTCDateTimeAttribute(null=True)
    callback_pending = UnicodeAttribute(null=True)  # "1" while pending: the by_callback index's key
    release_pending = UnicodeAttribute(null=True)  # "1" from the settle until its quotas are freed: by_release's key
    by_app = SandboxesByApp()
    by_status = SandboxesByStatus()
    by_callback = SandboxesByCallback()
    by_release = SandboxesByRelease()
    parked = SandboxesParked()


class Counter(_Base):
    """A quota's counter, changed only by atomic conditional updates (see ``chalicelib.quotas``).

    ``app#<id>`` holds ``active`` (sandboxes queued or running); ``app#<id>#m#<minute>`` the
    creates of one minute (``n``); ``app#<id>#d#<YYYY-MM-DD>`` one UTC day's ``sandboxes``,
    ``run_seconds`` and ``charged`` (run seconds reserved by unsettled sandboxes plus those used).
    """

    class Meta(_Base.Meta):
        suffix = "counters"

    key = UnicodeAttribute(hash_key=True)
    active = NumberAttribute(null=True)
    n = NumberAttribute(null=True)
    sandboxes = NumberAttribute(null=True)
    run_seconds = NumberAttribute(null=True)
    charged = NumberAttribute(null=True)
    woken = NumberAttribute(null=True)  # the app's sandboxes with a wake-up out, or running (fair share)
    parked = NumberAttribute(null=True)  # the app's parked sandboxes (a hint: ``unpark`` reads the index)
    cap = NumberAttribute(null=True)  # the fair share the last create saw, for the releases to use
    expires_at = TTLAttribute(null=True)


MODELS: tuple[type[Model], ...] = (User, App, Image, DockerServer, Sandbox, Counter)


_bound: Settings | None = None


def bound_settings() -> Settings:
    """The settings the models were bound with (``configure``): what a settle needs to send a wake-up."""
    if _bound is None:
        raise RuntimeError("models.configure(settings) was not called")
    return _bound


def configure(settings: Settings) -> None:
    """Bind every model to its stage's table and endpoint.

    Binding a model again to the same table keeps its open connection: a new
    one costs a botocore client (about 50 ms), and a process may configure more
    than once (the admin command line per command, the functional tests per test).
    The API binds them when it builds its ``Context`` (``chalicelib.context``).
    """
    global _retention, _bound
    _retention = timedelta(days=settings.retention_days)
    _bound = settings
    for model in MODELS:
        meta: Any = model.Meta
        binding = {
            "table_name": f"{settings.table_prefix}-{meta.suffix}",
            "region": settings.region,
            "host": settings.endpoint("dynamodb"),  # AWS_ENDPOINT_URL_DYNAMODB wins, as for boto3's clients
            "aws_access_key_id": settings.aws_access_key_id,
            "aws_secret_access_key": settings.aws_secret_access_key,
            "connect_timeout_seconds": 5,
            "read_timeout_seconds": 10,
            "max_retry_attempts": 3,
        }
        if model._connection is not None and all(getattr(meta, k, None) == v for k, v in binding.items()):
            continue
        for name, value in binding.items():
            setattr(meta, name, value)
        model._connection = None


def create_tables() -> list[str]:
    """Create the tables that do not exist yet, and the indexes an existing table lacks; return the names created."""
    created = []
    for model in MODELS:
        if not model.exists():
            # dynalite (``make serve``) has no UpdateTimeToLive: the TTL is a clean-up AWS does
            # (its template enables it); nothing here waits for it (tests/integration/test_backends.py).
            model.create_table(wait=True, ignore_update_ttl_errors=True)
            created.append(model.Meta.table_name)
        else:
            created += [f"{model.Meta.table_name}/{name}" for name in _add_missing_indexes(model)]
    return created


def _add_missing_indexes(model: type[Model]) -> list[str]:
    """A table made by an older version gets the global secondary indexes added since (DynamoDB builds them online)."""
    present = {i["IndexName"] for i in model.describe_table().get("GlobalSecondaryIndexes", [])}
    schema: Any = model._get_schema()
    added = []
    for index in schema["global_secondary_indexes"]:
        if index["index_name"] in present:
            continue
        model._get_connection().connection.client.update_table(
            TableName=model.Meta.table_name,
            AttributeDefinitions=index["attribute_definitions"],
            GlobalSecondaryIndexUpdates=[
                {
                    "Create": {
                        "IndexName": index["index_name"],
                        "KeySchema": sorted(index["key_schema"], key=lambda k: k["KeyType"] != "HASH"),
                        "Projection": index["projection"],
                    }
                }
            ],
        )
        added.append(index["index_name"])
    if added:
        model._connection = None  # it caches the table's description, without the new index
    return added
