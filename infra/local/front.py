"""The front of ``make serve``: Debian's nginx as the reverse proxy before ``chalice local``.

``chalice local`` is Chalice's development server (Python's ``http.server``,
a thread per connection): it reads any declared body before the route runs,
never times an idle client out, takes any number of connections and answers
TRACE with an HTML 501.  Users it does not know reach it only through nginx,
which:

- refuses a body over the API's own limit (``OPENDEVELOP_MAX_UPLOAD_BYTES``)
  with 413 from its ``Content-Length`` alone, before reading a byte of it, and
  buffers an accepted body whole before passing it on, so a slow sender holds
  an nginx connection (cheap) and never an API thread;
- drops a client that sends its header or body too slowly
  (``client_header_timeout``, ``client_body_timeout``: 10 s) or idles
  between requests (``keepalive_timeout``);
- limits each client address to ``OPENDEVELOP_FRONT_CONNS`` (64) requests in
  progress (``limit_conn``: 503 beyond);
- answers 405 to any method the API does not route (TRACE, CONNECT, made-up ones);
- terminates TLS when given a certificate and key (``OPENDEVELOP_TLS_CERT``,
  ``OPENDEVELOP_TLS_KEY``).

Errors it answers itself are JSON in Chalice's shape (``{"Code", "Message"}``),
like the API's own.  The configuration is written into the state folder on
every start (``front/nginx.conf``), so it always matches the settings.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")  # what app.py routes (HEAD: GET without a body)
TIMEOUT_S = 10  # a client's header, or its body between two reads, or an idle keep-alive


@dataclass(frozen=True)
class Front:
    port: int  # where users connect (127.0.0.1)
    upstream_port: int  # chalice local
    max_body_bytes: int
    conns_per_client: int = 64
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"


def nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise RuntimeError("nginx is not installed: run `make serve` (infra/local/serve-setup.sh installs it)")
    return found


def _error(status: int, code: str, message: str) -> str:
    body = '{"Code": "%s", "Message": "%s"}' % (code, message)  # noqa: UP031 - nginx's own braces follow
    return f"""        location = /__error_{status} {{
            internal;
            default_type application/json;
            return {status} '{body}';
        }}"""


def config(front: Front, work_dir: Path, log_dir: Path, pid_file: Path) -> str:
    """nginx.conf for ``front``; ``work_dir`` holds its body buffers."""
    user = ""
    if os.geteuid() == 0:
        # Workers never run as root.  Their body buffers are theirs alone.
        user = "user nobody nogroup;"
    tls = ""
    listen = f"listen 127.0.0.1:{front.port}"
    if front.tls_cert:
        listen += " ssl"
        tls = (
            f"ssl_certificate {front.tls_cert};\n        ssl_certificate_key {front.tls_key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    allowed = "|".join(METHODS)
    return f"""# Written by infra/local/front.py on every start of `make serve`: edit that, not this.
{user}
worker_processes 1;
worker_rlimit_nofile 8192;
pid {pid_file};
error_log {log_dir}/front.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {work_dir}/body;
    proxy_temp_path {work_dir}/proxy;
    fastcgi_temp_path {work_dir}/fastcgi;
    uwsgi_temp_path {work_dir}/uwsgi;
    scgi_temp_path {work_dir}/scgi;

    client_max_body_size {front.max_body_bytes};
    client_body_buffer_size 64k;
    client_header_timeout {TIMEOUT_S}s;
    client_body_timeout {TIMEOUT_S}s;
    send_timeout 30s;
    keepalive_timeout {TIMEOUT_S}s;
    reset_timedout_connection on;
    limit_conn_zone $binary_remote_addr zone=per_client:10m;
    limit_conn_status 503;

    upstream api {{
        server 127.0.0.1:{front.upstream_port};
        keepalive 16;
    }}
    server {{
        {listen};
        {tls}
        limit_conn per_client {front.conns_per_client};
        error_page 413 /__error_413;
        error_page 405 /__error_405;
        error_page 503 /__error_503;
        error_page 502 504 /__error_502;
        error_page 408 /__error_408;

        location / {{
            if ($request_method !~ ^({allowed})$) {{
                add_header Allow "{", ".join(METHODS)}" always;
                return 405;
            }}
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_request_buffering on;
            proxy_buffering off;  # the live tail and downloads stream as the API writes them
            proxy_read_timeout 60s;  # > the longest hold (?wait=20)
            proxy_intercept_errors off;
        }}
{_error(413, "RequestEntityTooLargeError", f"the body is larger than the limit of {front.max_body_bytes} bytes")}
{_error(405, "MethodNotAllowedError", "the method is not allowed; the API takes " + ", ".join(METHODS))}
{_error(503, "ServiceUnavailableError", "too many requests in progress from this address; try again")}
{_error(502, "ServiceUnavailableError", "the API did not answer; try again")}
{_error(408, "RequestTimeoutError", "the request was not sent in time")}
    }}
}}
"""


def end_leftovers(state_dir: Path) -> list[int]:
    """Kill what a front killed with -9 left: its master's workers keep the port when the master dies.

    The master (whose pid the pid file names) led its own process group; only
    nginx processes still in that group are killed.
    """
    try:
        group = int((state_dir / "front" / "nginx.pid").read_text().strip())
    except (OSError, ValueError):
        return []
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pgrp = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
            is_nginx = (entry / "cmdline").read_bytes().startswith(b"nginx")
        except (OSError, IndexError, ValueError):
            continue
        if pgrp == group and is_nginx:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def prepare(front: Front, state_dir: Path, log_dir: Path) -> tuple[list[str], Path]:
    """Write the configuration; the command that runs nginx in the foreground with it, and its work folder."""
    conf_dir = state_dir / "front"
    conf_dir.mkdir(parents=True, exist_ok=True)
    # Body buffers in a private folder of /tmp the workers own (a checkout may sit where `nobody` cannot reach).
    work_dir = Path(tempfile.mkdtemp(prefix="opendevelop-nginx-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(work_dir, nobody.pw_uid, nobody.pw_gid)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "nginx.conf"
    path.write_text(config(front, work_dir, log_dir, conf_dir / "nginx.pid"))
    command = [nginx(), "-p", str(conf_dir), "-c", str(path), "-e", str(log_dir / "front.log"), "-g", "daemon off;"]
    return command, work_dir
