"""Setting up a Docker host over SSH: ``manage.py server-bootstrap`` and ``server-shutdown``.

Deployment tooling, kept out of ``chalicelib`` so that neither this code nor
paramiko ride along in the Lambda bundle Chalice builds from ``chalicelib/``
and ``requirements.txt``.  ``bootstrap`` makes a Debian machine an OpenDevelop
Docker server from the checkout it runs in, over one paramiko connection:

- ``transport``: the checked SSH connection (``connect``, ``Remote``, ``SSHTarget``);
- ``bundle``: what is shipped (``chalicelib``, ``dispatcher``, the requirements,
  the host scripts), its manifest and tar, the rendered environment and unit;
- ``steps``: ``bootstrap`` and ``shutdown``, one function per step.

Only ``manage.py`` (and the tests) import it; ``chalicelib`` never does.
"""

from infra.hosts.bundle import (
    DEFAULT_PREFIX,
    REQUIREMENTS,
    SHIPPED,
    UNIT_NAME,
    manifest,
    read_env_file,
    render_env,
    shipped_files,
)
from infra.hosts.steps import Report, Step, bootstrap, shutdown
from infra.hosts.transport import HostError, SSHTarget

__all__ = [
    "DEFAULT_PREFIX",
    "REQUIREMENTS",
    "SHIPPED",
    "UNIT_NAME",
    "HostError",
    "Report",
    "SSHTarget",
    "Step",
    "bootstrap",
    "manifest",
    "read_env_file",
    "render_env",
    "shipped_files",
    "shutdown",
]
