"""moto's server (``moto_server``), without a log line per request.

The local stack's AWS endpoint answers thousands of small requests a minute;
werkzeug logging each one (``"POST / HTTP/1.1" 200``, which says nothing of
what was asked) cost moto about a sixth of its CPU, on a machine where that
CPU is shared with the Docker engine.  Warnings and errors are still logged.
``python -m infra.local.moto_local -H 127.0.0.1 -p PORT`` takes exactly
``moto_server``'s arguments.  Its DynamoDB writes are made atomic as
DynamoDB's are (``moto_atomic``), and it counts the calls it answers, per
service and action (``moto_calls``: ``GET /_opendevelop/calls``).  Its
DynamoDB item answers skip moto's model walk (``moto_fast``), and its S3
keeps bodies on disk in bounded memory (``moto_bounded``).
"""

from __future__ import annotations

import logging

from moto.server import main

from infra.local.moto_atomic import serialize_writes
from infra.local.moto_bounded import bounded_s3_memory
from infra.local.moto_calls import count_calls
from infra.local.moto_fast import fast_item_answers

if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serialize_writes()  # conditional writes atomic per item, as DynamoDB's are
    count_calls()
    fast_item_answers()  # DynamoDB's item answers written as the JSON they already are
    bounded_s3_memory()  # S3 bodies on disk, large ones one at a time
    main()
