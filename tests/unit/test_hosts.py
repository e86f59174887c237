"""The pure parts of ``manage.py server-bootstrap``: targets, the environment file, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.errors import InvalidInput
from chalicelib.settings import Settings
from infra.hosts import Report, SSHTarget, manifest, read_env_file, render_env, shipped_files

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "infra" / "host" / "dispatcher.env.template").read_text()


@pytest.mark.parametrize(
    "spec, user, host, port, url",
    [
        ("root@web1.example.com", "root", "web1.example.com", 22, "ssh://root@web1.example.com:22"),
        ("admin@10.0.0.5:2222", "admin", "10.0.0.5", 2222, "ssh://admin@10.0.0.5:2222"),
        ("root@[::1]:2200", "root", "::1", 2200, "ssh://root@[::1]:2200"),
    ],
)
def test_an_ssh_target_is_user_at_host_and_an_optional_port(spec, user, host, port, url):
    target = SSHTarget.parse(spec)
    assert (target.user, target.host, target.port, target.url) == (user, host, port, url)


@pytest.mark.parametrize("spec", ["web1", "@web1", "root@", "root@web1:0", "root@web1:70000", "root@web 1", "a;b@c"])
def test_anything_else_is_refused_naming_the_flag(spec):
    with pytest.raises(InvalidInput, match="^ssh: "):
        SSHTarget.parse(spec)


def test_the_env_file_takes_names_and_plain_values(tmp_path):
    path = tmp_path / "web1.env"
    path.write_text("# the dispatcher user's key\nAWS_ACCESS_KEY_ID=AKIAEXAMPLE\n\nOPENDEVELOP_POLL_WAIT=2\n")
    assert read_env_file(str(path)) == {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "OPENDEVELOP_POLL_WAIT": "2"}


@pytest.mark.parametrize(
    "line, reason",
    [("not a line", "expected NAME=value"), ("OPENDEVELOP_SERVER=other", "set by server-bootstrap itself")],
)
def test_a_bad_env_file_line_is_refused(tmp_path, line, reason):
    path = tmp_path / "bad.env"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInput, match=reason):
        read_env_file(str(path))


def test_the_rendered_environment_names_the_server_and_never_the_hmac_key():
    settings = Settings.from_env({"OPENDEVELOP_STAGE": "prod", "OPENDEVELOP_BUCKET": "b-123"}, require_hmac_key=False)
    env = render_env(settings, "web1", {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}, TEMPLATE).decode()
    values = dict(line.split("=", 1) for line in env.splitlines() if line and not line.startswith("#"))
    assert values["OPENDEVELOP_SERVER"] == "web1"
    assert values["OPENDEVELOP_STAGE"] == "prod"
    assert values["OPENDEVELOP_TABLE_PREFIX"] == "opendevelop-prod"
    assert values["OPENDEVELOP_BUCKET"] == "b-123"
    assert values["OPENDEVELOP_DOCKER_URL"] == "unix:///var/run/docker.sock"
    assert values["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert "AWS_ENDPOINT_URL" not in values and "AWS_SECRET_ACCESS_KEY" not in values  # never the operator's
    assert not [name for name in values if "HMAC" in name]


def test_a_value_that_a_shell_would_interpret_is_refused():
    settings = Settings.from_env({"OPENDEVELOP_STAGE": "prod"}, require_hmac_key=False)
    with pytest.raises(InvalidInput, match="may hold only"):
        render_env(settings, "web1", {"OPENDEVELOP_POLL_WAIT": "$(reboot)"}, TEMPLATE)


def test_the_manifest_changes_with_any_shipped_byte():
    files = shipped_files(ROOT)
    assert "dispatcher/__main__.py" in files and "infra/host/supervise.sh" in files
    assert "requirements-dispatcher.txt" in files and not [n for n in files if n.startswith("infra/hosts/")]
    assert not [name for name in files if "__pycache__" in name]
    changed = {**files, "dispatcher/__main__.py": files["dispatcher/__main__.py"] + b"\n"}
    assert manifest(files) == manifest(dict(files)) != manifest(changed)


def test_the_report_reads_as_one_line_per_step():
    report = Report("web1", "root@web1:22")
    report.add("code", False, "unchanged")
    report.add("service", False, "unchanged (supervise.sh, running 42)")
    assert report.as_text() == (
        "server web1 on root@web1:22:\n"
        "  code         unchanged\n"
        "  service      unchanged (supervise.sh, running 42)\n"
        "nothing changed"
    )
    assert report.as_json()["changed"] is False
