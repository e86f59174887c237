"""The admin command line, ``manage.py``, called in-process as ``manage.main([...])``."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from chalicelib import aws
from chalicelib.auth import password_matches, secret_digest
from chalicelib.models import App, DockerServer, Image, Sandbox, User

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

# manage.py re-executes itself under .venv/bin/python unless it already runs there.
# OPENDEVELOP_NO_VENV makes sure this import never replaces the test process,
# whatever interpreter runs pytest.
with pytest.MonkeyPatch.context() as _mp:
    _mp.setenv("OPENDEVELOP_NO_VENV", "1")
    import manage


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(settings, capsys):
    """``cli("user-list --json")`` runs ``./manage.py user-list --json`` against the mocked stage."""

    def run(command_line: str) -> Run:
        try:
            code = manage.main(shlex.split(command_line))
        except SystemExit as e:  # argparse: -h, or bad arguments
            code = e.code
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def api_get(client, path, app_id, secret):
    token = base64.b64encode(f"{app_id}:{secret}".encode()).decode()
    return client.http.get(path, headers={"Authorization": f"Basic {token}"})


def queue_names(settings) -> list[str]:
    """The servers' queues (``init`` makes the stage's webhooks queue too: it is not a server's)."""
    urls = aws.sqs(settings).list_queues().get("QueueUrls", [])
    return sorted(name for name in (url.rsplit("/", 1)[-1] for url in urls) if name != settings.webhook_queue)


# The original commands, as documented


def test_the_documented_commands_with_equals_signs(cli, settings):
    runs = [
        cli("server-create --name=name_of_your_server --url=unix:///var/run/docker.sock --buckets=/var/tmp/buckets"),
        cli("user-create --username=sourcelair --email=opendevelop@sourcelair.com --passwd=123 --orga"),
        cli("app-create --app_name=myapp --username=sourcelair"),
        cli(
            "image-create --name=my_image --description=what_my_image_does --url=docker_index_url "
            "--docker-image=opendevelop/base:latest"
        ),
    ]

    assert [run.code for run in runs] == [0, 0, 0, 0], [run.err for run in runs]
    server = DockerServer.get("name_of_your_server")
    assert (server.url, server.buckets, server.state) == ("unix:///var/run/docker.sock", "/var/tmp/buckets", "active")
    user = User.get("sourcelair")
    assert (user.email, user.organization) == ("opendevelop@sourcelair.com", True)
    [app] = list(App.scan())
    assert (app.name, app.owner) == ("myapp", "sourcelair")
    assert f"app id: {app.app_id}" in runs[2].out
    image = Image.get("my_image")
    assert (image.description, image.registry_url, image.docker_image) == (
        "what_my_image_does",
        "docker_index_url",
        "opendevelop/base:latest",
    )
    assert image.enabled


def test_the_same_commands_with_flags_and_values_apart(cli):
    runs = [
        cli("server-create --name local --url tcp://10.0.0.5:2375 --buckets /srv/b"),
        cli("user-create --username ada --email ada@example.com --passwd s3cret"),
        cli("app-create --app_name analytics --username ada"),
        cli('image-create --name base --description "Debian 12 + Python 3" --url "" --docker-image opendevelop/base:1'),
    ]

    assert [run.code for run in runs] == [0, 0, 0, 0], [run.err for run in runs]
    assert DockerServer.get("local").url == "tcp://10.0.0.5:2375"
    assert User.get("ada").organization is False
    assert [a.name for a in App.scan()] == ["analytics"]
    assert (Image.get("base").description, Image.get("base").registry_url) == ("Debian 12 + Python 3", "")


def test_user_create_stores_a_salted_password_hash(cli):
    password = "correct-horse-battery"  # not hex: it cannot turn up inside the hex salt or digest by chance
    assert cli(f"user-create --username=ada --email=ada@example.com --passwd={password}").code == 0

    stored = User.get("ada").password_hash
    assert password not in stored and stored.startswith("scrypt$")
    assert password_matches(password, stored)
    assert not password_matches(password + "!", stored)


def test_app_create_prints_the_id_and_secret_once_and_stores_only_a_digest(cli, settings, api_client):
    cli("user-create --username=ada --email=ada@example.com --passwd=123")

    run = cli("app-create --app_name=myapp --username=ada --json")

    assert run.code == 0
    printed = run.json()
    app_id, secret = printed["app_id"], printed["secret"]
    assert "secret_hash" not in printed
    row = App.get(app_id)
    assert row.secret_hash == secret_digest(settings.hmac_key, secret)
    assert secret not in json.dumps(row.serialize())
    assert len(secret) >= 22  # 128+ random bits, URL-safe base64
    # the printed credentials work on the API
    assert api_get(api_client, "/api/images", app_id, secret).status_code == 200


def test_app_create_text_output(cli, settings):
    cli("user-create --username=ada --email=ada@example.com --passwd=123")

    run = cli("app-create --app_name=myapp --username=ada")

    [app] = list(App.scan())
    lines = run.out.splitlines()
    assert f"app id: {app.app_id}" in lines
    [secret_line] = [line for line in lines if line.startswith("secret: ")]
    assert app.secret_hash == secret_digest(settings.hmac_key, secret_line.removeprefix("secret: "))


def test_app_rotate_webhook_secret_prints_the_new_one(cli, settings):
    cli("user-create --username=ada --email=ada@example.com --passwd=123")
    made = cli("app-create --app_name=myapp --username=ada --json").json()
    assert made["webhook_secret"].startswith("whsec_")
    listed = cli("app-list --json").json()
    assert all("webhook_secret" not in row for row in listed)

    rotated = cli(f"app-rotate-webhook-secret --app_id={made['app_id']} --json")

    assert rotated.code == 0
    assert rotated.json()["webhook_secret"].startswith("whsec_")
    assert rotated.json()["webhook_secret"] != made["webhook_secret"]
    assert App.get(made["app_id"]).webhook_secret == rotated.json()["webhook_secret"]


def test_app_rotate_secret_replaces_the_old_secret(cli, settings, api_client, new_api_process):
    cli("user-create --username=ada --email=ada@example.com --passwd=123")
    old = cli("app-create --app_name=myapp --username=ada --json").json()
    app_id = old["app_id"]
    assert api_get(api_client, "/api/images", app_id, old["secret"]).status_code == 200

    rotated = cli(f"app-rotate-secret --app_id={app_id} --json")

    assert rotated.code == 0
    new_secret = rotated.json()["secret"]
    assert new_secret != old["secret"]
    # the new secret works at once, even in an API process that has the app cached
    assert api_get(api_client, "/api/images", app_id, new_secret).status_code == 200
    # the old one no longer works (in an API process whose cache has expired, or a new one)
    new_api_process()
    assert api_get(api_client, "/api/images", app_id, old["secret"]).status_code == 401
    assert api_get(api_client, "/api/images", app_id, new_secret).status_code == 200


# Listing and deleting


@pytest.fixture
def populated(cli):
    assert cli("server-create --name=local --url=unix:///var/run/docker.sock").code == 0
    assert cli("user-create --username=ada --email=ada@example.com --passwd=123").code == 0
    assert cli("user-create --username=bob --email=bob@example.com --passwd=123 --organization").code == 0
    app_ids = {
        name: cli(f"app-create --app_name={name} --username={owner} --json").json()["app_id"]
        for name, owner in [("one", "ada"), ("two", "ada"), ("three", "bob")]
    }
    assert cli("image-create --name=base --docker-image=opendevelop/base:latest").code == 0
    return app_ids


@pytest.mark.parametrize(
    ("command", "key", "expected", "first_column"),
    [
        ("server-list", "name", ["local"], "NAME"),
        ("user-list", "username", ["ada", "bob"], "USERNAME"),
        ("app-list", "name", ["one", "three", "two"], "APP_ID"),
        ("app-list --username=ada", "name", ["one", "two"], "APP_ID"),
        ("app-list --username bob", "name", ["three"], "APP_ID"),
        ("image-list", "name", ["base"], "NAME"),
    ],
)
def test_list_commands_print_json_and_a_table(cli, populated, command, key, expected, first_column):
    as_json = cli(f"{command} --json")
    as_text = cli(command)

    assert as_json.code == as_text.code == 0
    rows = as_json.json()
    assert sorted(row[key] for row in rows) == expected
    assert not any("secret_hash" in row or "password_hash" in row for row in rows)
    header, *lines = as_text.out.splitlines()
    assert header.split()[0] == first_column
    assert sorted(line.split()[0] for line in lines) == sorted(str(row[first_column.lower()]) for row in rows)


def test_list_commands_with_nothing_to_list(cli):
    assert cli("user-list").out.strip() == "(none)"
    assert cli("server-list --json").json() == []


def test_every_command_can_answer_in_json(cli, populated):
    runs = [
        cli("server-drain --name=local --json"),
        cli("server-activate --name=local --json"),
        cli(f"app-set-limits --app_id={populated['one']} --timeout=5 --json"),
        cli(f"app-rotate-secret --app_id={populated['one']} --json"),
        cli(f"app-delete --app_id={populated['three']} --json"),
        cli("user-delete --username=bob --json"),
        cli("image-delete --name=base --json"),
        cli("server-delete --name=local --json"),
        cli("init --json"),
    ]

    for run in runs:
        assert run.code == 0, run.err
        assert isinstance(run.json(), dict)


def test_server_drain_and_activate(cli, populated):
    assert cli("server-drain --name=local").code == 0
    assert DockerServer.get("local").state == "draining"
    assert cli("server-activate --name local").code == 0
    assert DockerServer.get("local").state == "active"


def test_app_set_limits_lowers_an_apps_ceilings(cli, populated):
    run = cli(f"app-set-limits --app_id={populated['one']} --timeout=5 --memory-mb 512")

    assert run.code == 0
    assert App.get(populated["one"]).limits == {"timeout": 5.0, "memory_mb": 512}


def test_app_set_limits_sets_quotas_and_app_usage_shows_them(cli, populated, settings):
    run = cli(f"app-set-limits --app_id={populated['one']} --concurrency 3 --rate=20 --daily_seconds 600")

    assert run.code == 0, run.err
    assert App.get(populated["one"]).quotas == {"concurrency": 3, "rate": 20, "daily_seconds": 600}
    assert cli(f"app-set-limits --app_id={populated['one']} --daily-seconds 0").code == 0  # 0: no limit
    usage = cli(f"app-usage --app_id={populated['one']} --json").json()
    assert usage == {
        "running": 0,
        "queued": 0,
        "today": {"sandboxes": 0, "run_seconds": 0},
        "limits": {"concurrency": 3, "rate": 20, "daily_seconds": 0},
    }
    text = cli(f"app-usage --app_id={populated['one']}").out
    assert "running: 0  queued: 0" in text and "concurrency 3, rate 20/min, daily_seconds 0" in text
    refused = cli(f"app-set-limits --app_id={populated['one']} --concurrency=-1")
    assert refused.code != 0 and "concurrency" in refused.err


def test_server_delete_is_refused_while_work_runs_there(cli, populated, settings):
    Sandbox(
        "0123456789abcdef", app_id=populated["one"], image="base", docker_image="opendevelop/base", cmd=["true"]
    ).save()
    Sandbox("0123456789abcdef").update(actions=[Sandbox.status.set("running"), Sandbox.server.set("local")])

    run = cli("server-delete --name=local")

    assert run.code == 1
    assert "0123456789abcdef" in run.err and "server-drain" in run.err
    assert DockerServer.get("local").name == "local"  # nothing changed
    assert len(queue_names(settings)) == 2


def test_delete_commands(cli, populated, settings):
    assert cli("image-delete --name=base").code == 0
    assert cli(f"app-delete --app_id={populated['three']}").code == 0
    assert cli("user-delete --username=bob").code == 0
    assert cli("server-delete --name=local").code == 0

    assert list(Image.scan()) == []
    assert sorted(a.name for a in App.scan()) == ["one", "two"]
    assert [u.username for u in User.scan()] == ["ada"]
    assert list(DockerServer.scan()) == []
    assert queue_names(settings) == []


def test_a_user_who_owns_apps_cannot_be_deleted(cli, populated):
    run = cli("user-delete --username=ada")

    assert run.code == 1
    assert "still owns apps" in run.err
    assert User.get("ada").email == "ada@example.com"


def test_a_deleted_app_can_no_longer_call_the_api(cli, api_client, new_api_process):
    cli("user-create --username=ada --email=ada@example.com --passwd=123")
    created = cli("app-create --app_name=myapp --username=ada --json").json()

    assert cli(f"app-delete --app_id {created['app_id']}").code == 0

    new_api_process()
    assert api_get(api_client, "/api/images", created["app_id"], created["secret"]).status_code == 401


def test_server_create_makes_the_queue_and_a_dead_letter_queue(cli, settings):
    run = cli("server-create --name=local --url=unix:///var/run/docker.sock --slots=4 --runtime=runsc --json")

    assert run.code == 0
    server = DockerServer.get("local")
    assert run.json()["queue_url"] == server.queue_url
    assert (server.slots, server.runtime) == (4, "runsc")
    prefix = settings.table_prefix
    assert queue_names(settings) == [f"{prefix}-server-local", f"{prefix}-server-local-dlq"]
    sqs = aws.sqs(settings)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=server.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=server.queue_url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert policy["deadLetterTargetArn"] == dlq_arn
    assert int(policy["maxReceiveCount"]) == aws.MAX_RECEIVES


# Bad arguments: a clear message, a non-zero exit, nothing written


def everything(settings) -> dict[str, list[str]]:
    return {
        "servers": sorted(s.name for s in DockerServer.scan()),
        "users": sorted(u.username for u in User.scan()),
        "apps": sorted(a.name for a in App.scan()),
        "images": sorted(i.name for i in Image.scan()),
        "queues": queue_names(settings),
    }


@pytest.mark.parametrize(
    ("command_line", "code", "message"),
    [
        ("server-create --name=two --url=http://10.0.0.5:2375", 1, "url"),
        ("server-create --name=two --url=unix://", 1, "url"),
        ("server-create --name='bad name' --url=unix:///var/run/docker.sock", 1, "name"),
        ("server-create --name=two --url=unix:///var/run/docker.sock --slots=0", 1, "slots"),
        ("server-create --name=two --url=unix:///var/run/docker.sock --slots=many", 2, "--slots"),
        ("server-create --name=two --url=unix:///d.sock --runtime=kata", 2, "--runtime"),
        ("server-create --name=two", 2, "--url"),
        ("server-create --name=local --url=unix:///var/run/docker.sock", 1, "already exists"),
        ("user-create --username=eve --email=not-an-email --passwd=123", 1, "email"),
        ("user-create --username=eve --email=eve@example.com --passwd=12", 1, "passwd"),
        ("user-create --username=eve/1 --email=eve@example.com --passwd=123", 1, "username"),
        ("user-create --username=eve --passwd=123", 2, "--email"),
        ("user-create --username=ada --email=other@example.com --passwd=123", 1, "already exists"),
        ("app-create --app_name=x --username=nobody", 1, "username"),
        ("app-create --app_name= --username=ada", 1, "app_name"),
        ("app-create --app_name=x --username=ada --timeout=3600", 1, "timeout"),
        ("app-create --app_name=x --username=ada --memory_mb=lots", 1, "memory_mb"),
        ("app-create --app_name=x", 2, "--username"),
        ("image-create --name=base --docker-image=opendevelop/base:latest", 1, "already exists"),
        ("image-create --name=new --docker-image='not an image'", 1, "docker-image"),
        ("image-create --name=../x --docker-image=x:1", 1, "name"),
        ("app-rotate-secret --app_id=0123456789abcdef", 1, "app_id"),
        ("app-set-limits --app_id=0123456789abcdef --timeout=5", 1, "app_id"),
        ("app-delete --app_id=0123456789abcdef", 1, "app_id"),
        ("user-delete --username=nobody", 1, "username"),
        ("image-delete --name=nope", 1, "name"),
        ("server-delete --name=nope", 1, "name"),
        ("server-drain --name=nope", 1, "name"),
        ("no-such-command", 2, "invalid choice"),
        ("", 2, "required"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message_and_write_nothing(cli, settings, command_line, code, message):
    assert cli("server-create --name=local --url=unix:///var/run/docker.sock").code == 0
    assert cli("user-create --username=ada --email=ada@example.com --passwd=123").code == 0
    assert cli("image-create --name=base --docker-image=opendevelop/base:latest").code == 0
    before = everything(settings)
    user_before = User.get("ada").serialize()

    run = cli(command_line)

    assert run.code == code
    assert message in run.err
    assert "Traceback" not in run.err
    assert run.out == ""
    assert everything(settings) == before
    assert User.get("ada").serialize() == user_before


def test_a_bad_setting_is_reported_by_name(cli, monkeypatch):
    monkeypatch.setenv("OPENDEVELOP_HMAC_KEY", "too short")

    run = cli("user-list")

    assert run.code == 2
    assert "OPENDEVELOP_HMAC_KEY" in run.err


# Help, from a shell, with nothing activated


def shell_env() -> dict[str, str]:
    """The environment of an operator's shell: no virtualenv, no test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENDEVELOP_", "VIRTUAL_ENV", "PYTHON"))}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def manage_from_a_shell(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./manage.py", *argv], cwd=ROOT, env=shell_env(), capture_output=True, text=True, timeout=60)


def test_help_from_the_checkout_lists_every_command():
    run = manage_from_a_shell("-h")

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: manage.py")
    for name in [
        "server-create",
        "user-create",
        "app-create",
        "image-create",
        "user-list",
        "app-list",
        "image-list",
        "server-list",
        "user-delete",
        "app-delete",
        "image-delete",
        "server-delete",
        "app-rotate-secret",
    ]:
        assert name in run.stdout


def test_help_of_a_command_shows_its_documented_flags():
    run = manage_from_a_shell("server-create", "-h")

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: manage.py server-create")
    for flag in ["--name", "--url", "--buckets", "--json"]:
        assert flag in run.stdout


def test_under_the_virtualenv_importing_manage_does_not_re_execute():
    env = {**shell_env(), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [str(VENV_PYTHON), "-c", "import manage; print('imported', manage.ROOT)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # had it re-executed, manage.py would have run its command line instead (exit 2, "usage: ...")
    assert (run.returncode, run.stdout) == (0, f"imported {ROOT}\n"), run.stderr


def test_outside_the_virtualenv_manage_finds_it_by_itself(tmp_path):
    # run by the system python, from another folder: manage.py re-executes itself under .venv/bin/python
    run = subprocess.run(
        ["python3", str(ROOT / "manage.py"), "image-create", "-h"],
        cwd=tmp_path,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 0, run.stderr
    assert "--docker-image" in run.stdout
