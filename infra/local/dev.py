"""``make dev``: the whole system on this machine, until Ctrl-C.

Starts moto's server (DynamoDB, SQS, S3) on 127.0.0.1:5000, creates the
tables, queues and bucket, registers the ``base`` image, the ``local`` server
and a demo app, then serves the API with ``chalice local`` on 127.0.0.1:8000
and runs the dispatcher and the reconciler (a pass every 10 s).  It
supervises what it started: a process that dies is restarted.  Ctrl-C (or
SIGTERM) stops every process it started.

moto keeps its data in memory, so each ``make dev`` starts with empty tables;
the demo app keeps the same id and secret (``.opendevelop/demo-app.json``) so
the printed curl command keeps working.

Environment (all optional): ``OPENDEVELOP_AWS_PORT`` (5000),
``OPENDEVELOP_API_PORT`` (8000), ``OPENDEVELOP_STATE_DIR`` (``.opendevelop``:
demo app, HMAC key, logs) and ``OPENDEVELOP_SERVER`` (``local``: the Docker
server's name, which labels its containers).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from infra.local.stack import ROOT, Stack

BANNER = """
OpenDevelop is running.
  API         {api}   (chalice local, stage "local")
  AWS         {aws}   (moto: DynamoDB, SQS, S3)
  dispatcher  server "{server}" on unix:///var/run/docker.sock
  reconciler  a pass every 10 s (settles what crashes leave; the cloud runs it every minute)
  webhooks    delivers callback_url webhooks from the webhooks queue (on AWS a Lambda)
  logs        {logs}/

Demo app:   id {app_id}   secret {secret}
            webhook secret {webhook_secret}   (verifies its callback_url webhooks)
For the Python client and the `opendevelop` command (in .venv):
  export OPENDEVELOP_URL={api} OPENDEVELOP_APP_ID={app_id} OPENDEVELOP_SECRET={secret}

Run a file:
  printf 'print("hello opendevelop!")\\n' > test.py
  curl -s -u {app_id}:{secret} -F image=base -F 'cmd=["python test.py"]' -F timeout=10 \\
       -F file=@test.py {api}/api/sandboxes
  curl -s -u {app_id}:{secret} '{api}/api/sandboxes/<id>?wait=20'

Ctrl-C stops everything.
"""


def main() -> int:
    # The defaults are what the README shows; the variables let a second stack (the
    # integration tests' smoke run) live beside a running `make dev` without sharing
    # its ports, its state (demo app, logs) or its server's containers.
    stack = Stack(
        aws_port=int(os.environ.get("OPENDEVELOP_AWS_PORT", "5000")),
        api_port=int(os.environ.get("OPENDEVELOP_API_PORT", "8000")),
        state_dir=Path(os.environ.get("OPENDEVELOP_STATE_DIR") or ROOT / ".opendevelop"),
    )
    server = os.environ.get("OPENDEVELOP_SERVER") or "local"
    stack.log_dir = stack.state_dir / "logs"
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        stack.start_aws()
        demo = stack.bootstrap(servers=(server,))
        stack.start_api()
        stack.start_dispatcher(server, name="dispatcher")
        stack.start_reconciler()
        stack.start_webhooks()
        print(
            BANNER.format(api=stack.api_url, aws=stack.aws_url, logs=stack.log_dir, server=server, **demo), flush=True
        )
        print(f"ready in {time.monotonic() - started:.1f} s", flush=True)
        while not stopping:
            time.sleep(0.5)
            for name, proc in list(stack.procs.items()):
                if proc.poll() is not None and not stopping:
                    print(
                        f"{name} exited with {proc.returncode}; restarting it (see {stack.log_dir}/{name}.log)",
                        flush=True,
                    )
                    stack.procs.pop(name)
                    if name == "aws":
                        stack.start_aws()
                        stack.bootstrap(servers=(server,))
                    elif name == "api":
                        stack.start_api()
                    elif name == "reconciler":
                        stack.start_reconciler()
                    elif name == "webhooks":
                        stack.start_webhooks()
                    else:
                        stack.start_dispatcher(server, name=name)
    except RuntimeError as e:
        print(f"make dev: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        stack.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
