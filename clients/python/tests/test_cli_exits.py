"""``opendevelop`` in-process against a scripted API: what it sends, prints and exits with.

(The same command line runs against the real stack, as a subprocess, in
``tests/integration/test_client.py``.)
"""

from __future__ import annotations

import pytest
from fakeapi import APP_ID, SECRET, sandbox_json

from opendevelop import cli


@pytest.fixture
def od(fake, monkeypatch, tmp_path):
    """Run the command line against the fake API; return (exit status, stdout bytes, stderr text)."""
    monkeypatch.setenv("OPENDEVELOP_URL", fake.url)
    monkeypatch.setenv("OPENDEVELOP_APP_ID", APP_ID)
    monkeypatch.setenv("OPENDEVELOP_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.py").write_text("print('hi')\n")

    def run(*argv: str, capsys: pytest.CaptureFixture[bytes]) -> tuple[int, bytes, str]:
        status = cli.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err.decode()

    return run


def finished(**fields):
    return [(201, sandbox_json(status="queued")), (200, sandbox_json(**fields))]


def script(fake, answers):
    for status, body in answers:
        fake.then(status, body)


def test_run_prints_the_programs_output_exactly_and_exits_with_its_status(fake, od, capsysbinary):
    script(fake, finished(return_code=3, stdout="out ü\n", stderr="err\n"))

    status, out, err = od("run", "main.py", "--image", "base", "--", "python", "main.py", capsys=capsysbinary)

    assert (status, out, err) == (3, "out ü\n".encode(), "err\n")
    body = fake.requests[0].json()
    assert body["cmd"] == ["python main.py"] and body["image"] == "base"
    assert [f["name"] for f in body["files"]] == ["main.py"]
    assert fake.requests[1].query == {"wait": ["20"]}  # stderr is not a terminal: long-polls, no status line


def test_words_after_the_separator_stay_whole_and_one_word_is_a_shell_line(fake, od, capsysbinary):
    script(fake, finished() + finished())

    od("run", "--", "python", "main.py", "my file.csv", capsys=capsysbinary)
    od("run", "--", "python main.py | sort", capsys=capsysbinary)

    assert fake.requests[0].json()["cmd"] == ["python main.py 'my file.csv'"]
    assert fake.requests[2].json()["cmd"] == ["python main.py | sort"]


def test_run_passes_limits_env_and_stdin(fake, od, capsysbinary, tmp_path):
    (tmp_path / "in.txt").write_text("42\n")
    script(fake, finished())

    od(
        "run",
        "--timeout=5",
        "--memory-mb=64",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--stdin",
        "in.txt",
        "--",
        "cat",
        capsys=capsysbinary,
    )

    body = fake.requests[0].json()
    assert (body["timeout"], body["memory_mb"], body["env"], body["stdin"]) == (5, 64, {"A": "1", "B": "x=y"}, "42\n")


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"return_code": 137, "timed_out": True}, cli.EXIT_TIMED_OUT, "killed at its time limit of 10 s"),
        ({"return_code": 137, "oom_killed": True}, cli.EXIT_OOM, "more than 256 MiB of memory"),
        ({"status": "error", "return_code": None, "error": "the Docker engine died"}, 125, "the Docker engine died"),
        ({"status": "cancelled", "return_code": None}, 125, "was cancelled"),
    ],
)
def test_a_program_that_did_not_end_on_its_own_gets_a_distinct_status_and_a_message(
    fake, od, capsysbinary, fields, code, message
):
    script(fake, finished(stdout="partial\n", **fields))

    status, out, err = od("run", "--", "python", "main.py", capsys=capsysbinary)

    assert status == code
    assert out == b"partial\n"
    assert err.startswith("opendevelop: ") and message in err


def test_truncated_output_is_said_on_stderr_after_the_programs_own(fake, od, capsysbinary):
    script(fake, finished(stderr="e\n", output_truncated=True))
    status, _, err = od("run", "--", "yes", capsys=capsysbinary)
    assert status == 0
    assert err == "e\nopendevelop: the output was cut at 64 KiB per stream (the output_kb limit)\n"


def test_bad_credentials_are_a_clear_message_not_a_traceback(fake, od, capsysbinary):
    fake.then(401, {"Code": "UnauthorizedError", "Message": "unknown app id or wrong secret"})
    fake.then(401, {"Code": "UnauthorizedError", "Message": "unknown app id or wrong secret"})

    run_status, _, run_err = od("run", "--", "true", capsys=capsysbinary)
    ls_status, out, ls_err = od("ls", capsys=capsysbinary)

    assert (run_status, ls_status, out) == (125, 1, b"")
    for err in (run_err, ls_err):
        assert err.startswith("opendevelop: the server refused the credentials (unknown app id or wrong secret)")
        assert "Traceback" not in err


def test_missing_credentials_say_which_variable(fake, od, capsysbinary, monkeypatch):
    monkeypatch.delenv("OPENDEVELOP_SECRET")
    status, _, err = od("images", capsys=capsysbinary)
    assert status == 1
    assert err == "opendevelop: no app secret: set OPENDEVELOP_SECRET or pass --secret\n"
    assert fake.requests == []


def test_connection_options_go_before_or_after_the_command(fake, od, capsysbinary):
    fake.then(200, ["base"]).then(200, ["base"])

    od("--secret", "first", "images", capsys=capsysbinary)
    od("images", "--secret", "second", capsys=capsysbinary)

    import base64

    secrets = [base64.b64decode(r.headers["Authorization"].split()[1]).decode() for r in fake.requests]
    assert secrets == [f"{APP_ID}:first", f"{APP_ID}:second"]


def test_a_run_without_a_command_or_a_program_file_is_a_usage_error(od, capsysbinary):
    with pytest.raises(SystemExit) as caught:
        od("run", capsys=capsysbinary)
    assert caught.value.code == 2
    assert "put the command after --" in capsysbinary.readouterr().err.decode().lower()


def test_a_missing_file_is_a_message(fake, od, capsysbinary):
    status, _, err = od("run", "nope.py", "--", "python", "nope.py", capsys=capsysbinary)
    assert status == 125
    assert err == "opendevelop: nope.py: no such file or folder\n"
    assert fake.requests == []


def test_ls_shows_a_table_newest_first_and_json_lines(fake, od, capsysbinary):
    fake.then(200, {"sandboxes": [sandbox_json("b2", return_code=1), sandbox_json("a1")], "next": None})
    fake.then(200, {"sandboxes": [sandbox_json("b2")], "next": "c"})

    status, out, _ = od("ls", capsys=capsysbinary)
    lines = out.decode().splitlines()
    assert status == 0
    assert lines[0].split() == ["ID", "STATUS", "CODE", "CREATED", "IMAGE", "COMMAND"]
    assert lines[1].split()[:3] == ["b2", "terminated", "1"] and lines[2].split()[0] == "a1"

    status, out, _ = od("ls", "-n", "1", "--json", capsys=capsysbinary)
    assert [line[:20] for line in out.decode().splitlines()] == ['{"id": "b2", "status']
    assert len(fake.requests) == 2  # -n 1 reads no further page


def test_show_and_cancel(fake, od, capsysbinary):
    fake.then(200, sandbox_json(stderr="boom\n"))
    fake.then(200, sandbox_json(status="cancelled"))
    fake.then(409, {"Code": "ConflictError", "Message": "already finished"})
    fake.then(200, sandbox_json(status="terminated"))

    status, out, _ = od("show", "a326efb1fe1f980a", capsys=capsysbinary)
    assert status == 0
    text = out.decode()
    assert "status       terminated" in text and "--- stdout ---\nhello opendevelop!\n--- stderr ---\nboom\n" in text

    assert od("cancel", "a326efb1fe1f980a", capsys=capsysbinary)[:2] == (0, b"a326efb1fe1f980a cancelled\n")
    status, _, err = od("cancel", "a326efb1fe1f980a", capsys=capsysbinary)
    assert status == 1
    assert err == "opendevelop: sandbox a326efb1fe1f980a has already finished (terminated); nothing to cancel\n"


def test_run_callback_sends_the_url(fake, od, capsysbinary):
    script(fake, finished(return_code=0, stdout="hi\n"))

    status, out, _ = od("run", "--callback", "https://hooks.example.com/done", "--", "true", capsys=capsysbinary)

    assert status == 0 and out == b"hi\n"
    assert fake.requests[0].json()["callback_url"] == "https://hooks.example.com/done"


def test_usage_shows_now_today_and_the_limits(fake, od, capsysbinary):
    fake.then(
        200,
        {
            "running": 1,
            "queued": 2,
            "today": {"sandboxes": 9, "run_seconds": 40},
            "limits": {"concurrency": 10, "rate": 60, "daily_seconds": 0},
        },
    )

    status, out, err = od("usage", capsys=capsysbinary)

    assert status == 0, err
    assert out.decode().splitlines() == [
        "running       1",
        "queued        2  (at once: 10)",
        "today         9 sandboxes  (per minute: 60)",
        "run seconds   40  (per day: no limit)",
    ]
