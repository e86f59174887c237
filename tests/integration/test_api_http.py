"""The HTTP API against the real stack: what runs, how it ends, and what is refused."""

from __future__ import annotations

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests

from .helpers import SLOTS, Client, RunningStack, multipart, run_containers

# Both backends: the same tests on moto and on make serve's dynalite and s3rver (see conftest).
pytestmark = [pytest.mark.timeout(120), pytest.mark.both_backends]


def terminated(sandbox: dict[str, Any], return_code: int = 0) -> dict[str, Any]:
    assert sandbox["status"] == "terminated", sandbox
    assert sandbox["return_code"] == return_code, sandbox
    assert sandbox["error"] is None, sandbox
    return sandbox


def run(
    client: Client, cmd: list[str] | str, files: dict[str, str | bytes] | None = None, **fields: str
) -> dict[str, Any]:
    return client.wait_done(client.submit(cmd, files, **fields))


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def other_client(stack: RunningStack) -> Client:
    """A second app of the same user, made with the admin functions (the stack's moto, configured in-process)."""
    from chalicelib import admin

    app, secret = admin.app_create(f"other-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings())
    return Client(stack.stack.api_url, (app.app_id, secret))


# What runs, and how


def test_a_missing_command_is_the_shells_127_with_its_message(client: Client) -> None:
    done = terminated(run(client, ["nosuchcommand"]), return_code=127)
    assert "nosuchcommand: not found" in done["logs"]
    assert "nosuchcommand: not found" in done["stderr"]


def test_a_run_over_its_timeout_is_killed_near_the_limit(
    client: Client, stack: RunningStack, docker_client: Any
) -> None:
    submitted = time.monotonic()
    done = client.wait_done(client.submit(["sleep 30"], timeout="2"), timeout=20)

    assert done["status"] == "terminated", done
    assert done["timed_out"] is True
    assert done["return_code"] != 0
    assert done["timeout"] == 2
    ran_s = (parse_time(done["finished_at"]) - parse_time(done["started_at"])).total_seconds()
    assert 2 <= ran_s <= 6, f"ran {ran_s:.2f} s for a 2 s timeout"
    assert time.monotonic() - submitted < 15
    # The killed container is gone too, not just the process.  The dispatcher removes it right
    # after recording the result (so removal is not on the client's path): allow it a moment.
    deadline = time.monotonic() + 10
    while docker_client.containers.list(all=True, filters={"name": f"od-{done['id']}"}, ignore_removed=True):
        assert time.monotonic() < deadline, "the killed container was not removed"
        time.sleep(0.1)


def test_python_and_python3_are_both_python_3(client: Client) -> None:
    done = terminated(
        run(
            client,
            [
                "python -c 'import sys; print(sys.version_info[0])'",
                "python3 -c 'import sys; print(sys.version_info[0])'",
            ],
        )
    )
    assert done["logs"] == "3\n3\n"


def test_files_keep_their_sub_folders(client: Client) -> None:
    files = {
        "main.py": "from lib.util import greet\nprint(greet())\nprint(open('data/deep/msg.txt').read())\n",
        "lib/util.py": "def greet():\n    return 'hi from lib'\n",
        "data/deep/msg.txt": "deep file",
    }
    done = terminated(run(client, ["python main.py", "ls -R lib data"], files))
    assert done["logs"].startswith("hi from lib\ndeep file\n"), done["logs"]
    assert "util.py" in done["logs"] and "msg.txt" in done["logs"]
    assert done["files"] == 3


def test_stdin_reaches_the_program(client: Client) -> None:
    summer = "import sys\nprint(sum(int(line) for line in sys.stdin))\n"
    done = terminated(run(client, ["python sum.py"], {"sum.py": summer}, stdin="3\n4\n35\n"))
    assert done["logs"] == "42\n"


def test_stdin_in_a_json_body_reaches_the_program_without_files(client: Client) -> None:
    response = client.post(json={"image": "base", "cmd": ["tr a-z A-Z"], "stdin": "shout\n"})
    assert response.status_code == 201, response.text
    done = terminated(client.wait_done(response.json()["id"]))
    assert done["logs"] == "SHOUT\n"


def test_commands_run_in_order_and_stop_at_the_first_failure(client: Client) -> None:
    done = terminated(run(client, ["echo one", "echo two", "(exit 3)", "echo never"]), return_code=3)
    assert done["logs"] == "one\ntwo\n"


def test_a_failing_program_is_a_result_not_an_error(client: Client) -> None:
    crash = "print('before')\nraise ValueError('boom')\n"
    done = terminated(run(client, ["python crash.py"], {"crash.py": crash}), return_code=1)
    assert done["stdout"] == "before\n"
    assert "ValueError: boom" in done["stderr"]
    assert done["timed_out"] is False and done["oom_killed"] is False


def test_stdout_and_stderr_are_kept_apart_and_logs_interleaves_them(client: Client) -> None:
    # Each write is flushed and followed by a short pause so the order the engine sees is the order written.
    both = (
        "import sys, time\n"
        "for stream, text in [(sys.stdout, 'out 1'), (sys.stderr, 'err 1'), (sys.stdout, 'out 2'),"
        " (sys.stderr, 'err 2')]:\n"
        "    print(text, file=stream, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    done = terminated(run(client, ["python both.py"], {"both.py": both}))
    assert done["stdout"] == "out 1\nout 2\n"
    assert done["stderr"] == "err 1\nerr 2\n"
    assert done["logs"] == "out 1\nerr 1\nout 2\nerr 2\n"


def test_several_sandboxes_at_once_each_get_their_own_output(
    client: Client, stack: RunningStack, docker_client: Any
) -> None:
    count = 3 * SLOTS

    def one(i: int) -> str:
        return client.submit(["sleep 1", "cat n.txt"], {"n.txt": f"sandbox {i}\n"})

    with ThreadPoolExecutor(count) as pool:
        ids = list(pool.map(one, range(count)))
    done = [client.wait_done(sandbox_id, timeout=60) for sandbox_id in ids]

    for i, sandbox in enumerate(done):
        assert terminated(sandbox)["logs"] == f"sandbox {i}\n"
    # The server has SLOTS slots: never more at once, and they are all used.
    intervals = [(parse_time(s["started_at"]), parse_time(s["finished_at"])) for s in done]
    most = max(sum(1 for start, end in intervals if start <= t < end) for t, _ in intervals)
    assert most == SLOTS, intervals
    deadline = time.monotonic() + 10  # removed right after each result is recorded
    while run_containers(docker_client, stack.server):
        assert time.monotonic() < deadline, "containers were left behind"
        time.sleep(0.1)


# Authentication and ownership


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param(None, id="no-credentials"),
        pytest.param("wrong-secret", id="wrong-secret"),
        pytest.param("unknown-app", id="unknown-app"),
    ],
)
def test_without_the_right_credentials_every_call_is_401(client: Client, auth: str | None) -> None:
    assert client.auth is not None
    app_id, secret = client.auth
    credentials = {
        None: None,
        "wrong-secret": (app_id, secret + "x"),
        "unknown-app": (secrets.token_hex(8), secret),
    }[auth]
    anonymous = Client(client.url, credentials)
    calls = [
        anonymous.get("/api/images"),
        anonymous.get("/api/sandboxes"),
        anonymous.get(f"/api/sandboxes/{secrets.token_hex(8)}"),
        anonymous.post(files=multipart(["python test.py"], {"test.py": "print(1)\n"}, image="base")),
    ]
    for response in calls:
        assert response.status_code == 401, (response.request.method, response.request.url, response.text)
        assert response.json()["Code"] == "UnauthorizedError"
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_a_bearer_token_is_not_basic_auth(client: Client) -> None:
    response = requests.get(f"{client.url}/api/sandboxes", headers={"Authorization": "Bearer abc"}, timeout=30)
    assert response.status_code == 401


def test_another_apps_sandbox_is_404_exactly_like_a_missing_one(client: Client, other_client: Client) -> None:
    mine = client.submit(["echo mine"])
    missing = secrets.token_hex(8)

    theirs = other_client.get(f"/api/sandboxes/{mine}")
    nothing = other_client.get(f"/api/sandboxes/{missing}")

    assert theirs.status_code == nothing.status_code == 404
    assert theirs.json()["Code"] == nothing.json()["Code"] == "NotFoundError"
    assert theirs.json()["Message"].replace(mine, "ID") == nothing.json()["Message"].replace(missing, "ID")
    assert mine not in other_client.listed_ids()
    assert client.sandbox(mine)["id"] == mine  # while its owner sees it
    client.wait_done(mine)


# Bad input: refused before anything is stored or queued


@pytest.fixture(scope="module")
def fresh_client(stack: RunningStack) -> Client:
    """An app of its own, so "nothing was stored" is its list staying as it was."""
    from chalicelib import admin

    app, secret = admin.app_create(f"fresh-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings())
    return Client(stack.stack.api_url, (app.app_id, secret))


def _objects(stack: RunningStack) -> int:
    listing = stack.boto("s3").list_objects_v2(Bucket=stack.stack.settings().bucket)
    return int(listing.get("KeyCount", 0))


def _wait_queue_empty(stack: RunningStack, timeout: float = 30) -> None:
    """Earlier tests' messages are deleted just after their results are written: let them go."""
    deadline = time.monotonic() + timeout
    while stack.queue_depth():
        assert time.monotonic() < deadline, f"the queue still holds {stack.queue_depth()} message(s)"
        time.sleep(0.1)


GOOD = {"image": "base", "cmd": '["python test.py"]', "timeout": "10"}
TEST_PY = {"test.py": 'print("hello opendevelop!")\n'}


@pytest.mark.parametrize(
    ("fields", "files", "field"),
    [
        pytest.param({"cmd": '["python test.py"'}, TEST_PY, "cmd", id="cmd-not-json"),
        pytest.param({"cmd": "[]"}, TEST_PY, "cmd", id="cmd-empty-list"),
        pytest.param({"cmd": "[1, 2]"}, TEST_PY, "cmd", id="cmd-not-strings"),
        pytest.param({"cmd": None}, TEST_PY, "cmd", id="cmd-missing"),
        pytest.param({"image": "nosuchimage"}, TEST_PY, "image", id="unknown-image"),
        pytest.param({"timeout": "0"}, TEST_PY, "timeout", id="timeout-0"),
        pytest.param({"timeout": "-5"}, TEST_PY, "timeout", id="timeout-negative"),
        pytest.param({"timeout": "ten"}, TEST_PY, "timeout", id="timeout-not-a-number"),
        pytest.param({"timeout": "100000"}, TEST_PY, "timeout", id="timeout-above-ceiling"),
        pytest.param({"timout": "10"}, TEST_PY, "timout", id="misspelt-field"),
        pytest.param({}, {"../escape.py": "print(1)\n"}, "files", id="file-outside-the-folder"),
        pytest.param({}, {"/etc/passwd": "x"}, "files", id="absolute-file-name"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_nothing_is_stored_or_queued(
    stack: RunningStack, fresh_client: Client, fields: dict[str, str | None], files: dict[str, str], field: str
) -> None:
    _wait_queue_empty(stack)
    objects = _objects(stack)
    listed = fresh_client.listed_ids()
    form = {**GOOD, **fields}

    response = fresh_client.post(files=multipart(form.pop("cmd"), files, **form))

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["Code"] == "BadRequestError"
    assert re.match(rf"{re.escape(field)}\b", body["Message"]), body["Message"]
    assert stack.queue_depth() == 0
    assert fresh_client.listed_ids() == listed
    assert _objects(stack) == objects


def test_the_same_form_without_the_mistake_is_accepted(stack: RunningStack, fresh_client: Client) -> None:
    """The control for the cases above: the form they start from is good."""
    form = dict(GOOD)
    response = fresh_client.post(files=multipart(form.pop("cmd"), TEST_PY, **form))
    assert response.status_code == 201, response.text
    assert response.json()["id"] in fresh_client.listed_ids()
    terminated(fresh_client.wait_done(response.json()["id"]))
