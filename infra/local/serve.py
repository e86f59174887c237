"""``make serve``: the one-machine installation, its state kept on disk, behind nginx.

The same system as ``make dev`` (``infra/local/dev.py``), for use rather than
development:

- DynamoDB is dynalite and S3 is s3rver, both keeping their state in the data
  folder (``OPENDEVELOP_DATA_DIR``, default ``.opendevelop/data``; see
  ``infra/local/persistent.py``); SQS is moto's, in memory.  Stop it and start
  it again: users, apps, images, servers, sandboxes, outputs and artifacts are
  all still there, the demo app is the same one, and the reconciler re-sends the
  wake-ups of the sandboxes still ``queued`` (their queue was lost with moto),
  at its first pass;
- users reach the API through nginx on 127.0.0.1:8000 (``infra/local/front.py``);
  ``chalice local`` listens on a private port behind it;
- it supervises what it started (a process that exits is started again), and
  its children die with it, so a supervisor of its own (systemd's unit
  ``infra/local/opendevelop.service``, or ``infra/local/serve-supervise.sh``)
  can restart it whole.

Environment (all optional), beside ``make dev``'s: ``OPENDEVELOP_DATA_DIR``,
``OPENDEVELOP_DYNAMODB_PORT`` (5001), ``OPENDEVELOP_S3_PORT`` (5002),
``OPENDEVELOP_UPSTREAM_PORT`` (8001: ``chalice local``), ``OPENDEVELOP_FRONT_CONNS``
(64: requests in progress per client address), ``OPENDEVELOP_TLS_CERT`` and
``OPENDEVELOP_TLS_KEY`` (PEM files: the front speaks HTTPS on the same port).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from infra.local.dev import keep_running
from infra.local.front import Front
from infra.local.stack import ROOT, Stack

BANNER = """
OpenDevelop is serving.
  API         {url}   (nginx, before chalice local on {api})
  data        {data}/   (dynalite: DynamoDB; s3rver: S3; kept across restarts)
  AWS         DynamoDB {dynamodb}, S3 {s3}, SQS {aws} (moto, in memory)
  dispatcher  server "{server}" on unix:///var/run/docker.sock
  reconciler  a pass every 10 s (it re-sends the wake-ups a restart lost)
  webhooks    delivers callback_url webhooks from the webhooks queue
  logs        {logs}/

Demo app:   id {app_id}   secret {secret}
  export OPENDEVELOP_URL={url} OPENDEVELOP_APP_ID={app_id} OPENDEVELOP_SECRET={secret}

SIGTERM or Ctrl-C stops everything; the data stays.
"""


def build(environ: dict[str, str] | None = None) -> Stack:
    env = dict(os.environ if environ is None else environ)
    state_dir = Path(env.get("OPENDEVELOP_STATE_DIR") or ROOT / ".opendevelop")
    from chalicelib.settings import Settings

    limits = Settings.from_env({**env, "OPENDEVELOP_STAGE": "local"}, require_hmac_key=False)
    front = Front(
        port=int(env.get("OPENDEVELOP_API_PORT", "8000")),
        upstream_port=int(env.get("OPENDEVELOP_UPSTREAM_PORT", "8001")),
        max_body_bytes=limits.max_upload_bytes,
        conns_per_client=int(env.get("OPENDEVELOP_FRONT_CONNS", "64")),
        tls_cert=env.get("OPENDEVELOP_TLS_CERT") or None,
        tls_key=env.get("OPENDEVELOP_TLS_KEY") or None,
    )
    if bool(front.tls_cert) != bool(front.tls_key):
        raise RuntimeError("OPENDEVELOP_TLS_CERT and OPENDEVELOP_TLS_KEY go together")
    return Stack(
        aws_port=int(env.get("OPENDEVELOP_AWS_PORT", "5000")),
        api_port=front.upstream_port,
        state_dir=state_dir,
        log_dir=state_dir / "logs",
        data_dir=Path(env.get("OPENDEVELOP_DATA_DIR") or state_dir / "data"),
        dynamodb_port=int(env.get("OPENDEVELOP_DYNAMODB_PORT", "5001")),
        s3_port=int(env.get("OPENDEVELOP_S3_PORT", "5002")),
        front=front,
        die_with_parent=True,
        # The operator's settings reach every process (Stack.env() passes on none by itself).
        extra_env={
            # The queues are new at each start: a queued row's wake-up is re-sent at the first pass
            # that finds it this old (the reconciler sends only as many as a queue is short of).
            "OPENDEVELOP_RESEND_AFTER": "5",
            **{k: v for k, v in env.items() if k.startswith("OPENDEVELOP_") and k != "OPENDEVELOP_STAGE"},
        },
    )


def main() -> int:
    server = os.environ.get("OPENDEVELOP_SERVER") or "local"
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    stack: Stack | None = None
    try:
        stack = build()
        stack.start_aws()
        demo = stack.bootstrap(servers=(server,))
        # The dispatcher and the reconciler need only the stores: they start while the API does.
        stack.start_dispatcher(server, name="dispatcher")
        stack.start_reconciler()
        stack.start_webhooks()
        stack.start_api()
        stack.start_front()
        print(
            BANNER.format(
                url=stack.url,
                api=stack.api_url,
                data=stack.data_dir,
                dynamodb=stack.dynamodb_port,
                s3=stack.s3_port,
                aws=stack.aws_url,
                logs=stack.log_dir,
                server=server,
                **demo,
            ),
            flush=True,
        )
        print(f"ready in {time.monotonic() - started:.1f} s", flush=True)
        keep_running(stack, server, lambda: stopping)
    except RuntimeError as e:
        print(f"make serve: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        if stack is not None:
            stack.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
