"""The persistent AWS endpoints of ``make serve``: DynamoDB by dynalite, S3 by s3rver, both on disk.

``make dev`` serves DynamoDB, SQS and S3 from moto's server, in memory: a
restart loses everything.  ``make serve`` keeps its state in a data folder
(``OPENDEVELOP_DATA_DIR``, default ``.opendevelop/data``):

- ``dynamodb/``: dynalite (npm), an independent implementation of DynamoDB's
  API on LevelDB;
- ``s3/``: s3rver (npm), S3's API over plain files, one folder per bucket
  (run by ``s3_server.js``, which mends how it reads a suffix ``Range``).

SQS stays moto's, in memory: a wake-up is only a hint (the row is the truth),
and the reconciler re-sends the wake-ups of ``queued`` rows whose queue lost
them (``chalicelib.reconciler._rewake``).

Both are npm packages pinned below, installed into ``.venv/node`` by
``infra/local/serve-setup.sh`` (``make serve`` and ``make test`` run it): no
global install, no network at run time.  Where they differ from AWS, the
platform does not depend on the difference (``tests/integration/test_backends.py``
says which).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# Pinned: infra/local/serve-setup.sh installs exactly these.
NODE_PACKAGES = {"dynalite": "4.0.0", "s3rver": "3.7.1"}
NODE_PREFIX = Path(sys.executable).parent.parent / "node"

# s3rver checks every request's signature against its one account; the persistent stack signs with it.
S3RVER_KEY = "S3RVER"


def node() -> str:
    found = shutil.which("node") or shutil.which("nodejs")
    if not found:
        raise RuntimeError("node is not installed: run `make serve` (infra/local/serve-setup.sh installs it)")
    return found


def _script(package: str, path: str) -> Path:
    script = NODE_PREFIX / "node_modules" / package / path
    if not script.exists():
        raise RuntimeError(
            f"{package} {NODE_PACKAGES[package]} is not installed in {NODE_PREFIX}: run infra/local/serve-setup.sh"
        )
    return script


def dynamodb_command(port: int, data_dir: Path) -> list[str]:
    """dynalite on 127.0.0.1:``port``, its LevelDB in ``data_dir/dynamodb``.

    Tables are ACTIVE at once (dynalite's default keeps them CREATING for 500 ms).
    """
    (data_dir / "dynamodb").mkdir(parents=True, exist_ok=True)
    return [
        node(),
        str(_script("dynalite", "cli.js")),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--path",
        str(data_dir / "dynamodb"),
        "--createTableMs",
        "0",
        "--updateTableMs",
        "0",
        "--deleteTableMs",
        "0",
    ]


def s3_command(port: int, data_dir: Path) -> list[str]:
    """s3rver on 127.0.0.1:``port``, its objects under ``data_dir/s3`` (path-style URLs only).

    Run through ``s3_server.js``, which mends its reading of suffix ranges (``bytes=-N``).
    """
    (data_dir / "s3").mkdir(parents=True, exist_ok=True)
    _script("s3rver", "package.json")
    return [
        node(),
        str(Path(__file__).with_name("s3_server.js")),
        str(NODE_PREFIX),
        "127.0.0.1",
        str(port),
        str(data_dir / "s3"),
    ]
