"""moto's server (``moto_server``), without a log line per request.

The local stack's AWS endpoint answers thousands of small requests a minute;
werkzeug logging each one (``"POST / HTTP/1.1" 200``, which says nothing of
what was asked) cost moto about a sixth of its CPU, on a machine where that
CPU is shared with the Docker engine.  Warnings and errors are still logged.
``python -m infra.local.moto_local -H 127.0.0.1 -p PORT`` takes exactly
``moto_server``'s arguments.  Its DynamoDB writes are made atomic as
DynamoDB's are (``moto_atomic``), and it counts the calls it answers, per
service and action (``moto_calls``: ``GET /_opendevelop/calls``).  Its S3
moves one large body at a time (``moto_bodies``): moto holds each whole in
memory.
"""

from __future__ import annotations

import logging

from moto.server import main

from infra.local.moto_atomic import serialize_writes
from infra.local.moto_bodies import one_large_body_at_a_time
from infra.local.moto_calls import count_calls

if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serialize_writes()  # conditional writes atomic per item, as DynamoDB's are
    count_calls()
    one_large_body_at_a_time()  # bounds moto's memory: it holds each S3 body whole
    main()
