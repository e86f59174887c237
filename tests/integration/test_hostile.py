"""Hostile code is the normal case: each attack is contained, and the next sandbox runs normally.

Every test submits an attack through the real HTTP API to the real engine,
asserts what the attack was held by, then asserts that an ordinary sandbox
submitted right after still runs correctly and quickly (``assert_still_healthy``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import Client, RunningStack, multipart

pytestmark = pytest.mark.timeout(180)


def run(
    client: Client,
    cmd: list[str] | str,
    files: dict[str, str | bytes] | None = None,
    timeout: str = "10",
    wait: float = 60,
    **fields: str,
) -> dict[str, Any]:
    return client.wait_done(client.submit(cmd, files, timeout=timeout, **fields), timeout=wait)


def assert_still_healthy(client: Client) -> None:
    """An ordinary sandbox right after the attack runs correctly and quickly."""
    started = time.monotonic()
    done = run(client, ["python3 -c 'print(6 * 7)'"], wait=20)
    elapsed = time.monotonic() - started
    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["stdout"] == "42\n", done
    assert elapsed < 10, f"a normal sandbox after the attack took {elapsed:.1f} s"


def host_processes(pattern: str) -> list[str]:
    result = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if "pgrep" not in line]


# Processes


@pytest.mark.parametrize(
    "bomb",
    [
        # dash's children die when a fork fails, so this bomb collapses once it hits the limit.  The
        # sleep keeps the sandbox's first shell alive while the bomb grows: without it, on a loaded
        # machine the first shell could finish (ending the container) before any fork had failed.
        "bomb(){ bomb|bomb& }; bomb; sleep 1; wait",
        # this one keeps trying until the timeout kills it
        "python3 -c 'import os\nwhile True:\n    try: os.fork()\n    except OSError: pass'",
    ],
    ids=["shell", "python"],
)
def test_a_fork_bomb_is_held_by_the_pids_limit(client: Client, bomb: str) -> None:
    done = run(client, [bomb], timeout="3", pids="64")

    assert done["status"] == "terminated", done
    held = "Cannot fork" in (done["stderr"] or "") or done["timed_out"] is True
    assert held, f"neither the pids limit nor the timeout stopped the bomb: {done}"
    assert done["duration_ms"] < 10_000, done
    assert host_processes("bomb") == []
    assert_still_healthy(client)


def test_the_pids_limit_is_what_stops_forking(client: Client) -> None:
    script = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped after', n, type(e).__name__)\n"
    )
    done = run(client, ["python3 fork.py"], {"fork.py": script}, timeout="5", pids="40")
    assert "stopped after" in done["stdout"], done
    count = int(done["stdout"].split()[2])
    assert count < 40, f"{count} processes forked under a limit of 40"
    assert_still_healthy(client)


def test_a_background_process_dies_with_the_container(client: Client) -> None:
    marker = f"sleep {4000 + secrets.randbelow(1000)}"
    done = run(client, [f"({marker} &) ; echo left it running"], timeout="10")

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["stdout"] == "left it running\n"
    assert done["duration_ms"] < 5_000, "the sandbox ended with its main process, not at the timeout"
    assert host_processes(marker) == [], "the background process outlived its sandbox"
    assert_still_healthy(client)


def test_sleeping_past_the_timeout_while_ignoring_sigterm_is_killed_at_the_limit(client: Client) -> None:
    done = run(client, ["trap '' TERM INT; sleep 60"], timeout="2")

    assert done["status"] == "terminated", done
    assert done["timed_out"] is True
    assert done["return_code"] != 0
    assert 1_500 <= done["duration_ms"] < 6_000, done
    assert_still_healthy(client)


# Memory and disk


def test_a_memory_bomb_is_oom_killed(client: Client) -> None:
    bomb = "python3 -c 'a = []\nwhile True: a.append(bytearray(8 << 20))'"
    done = run(client, [bomb], timeout="20", memory_mb="64")

    assert done["status"] == "terminated", done
    assert done["oom_killed"] is True, done
    assert done["timed_out"] is False
    assert done["return_code"] == 137
    assert_still_healthy(client)


@pytest.mark.parametrize("folder", ["/sandbox", "/tmp"])
def test_filling_a_writable_folder_stops_at_its_cap_and_not_on_the_host_disk(client: Client, folder: str) -> None:
    before = shutil.disk_usage("/var/lib/docker").used
    done = run(
        client,
        [f"head -c 300000000 /dev/zero > {folder}/fill; echo rc=$?; du -sm {folder}/fill"],
        timeout="20",
        disk_mb="16",
        memory_mb="512",
    )
    after = shutil.disk_usage("/var/lib/docker").used

    assert done["status"] == "terminated", done
    assert "No space left on device" in done["stderr"], done
    assert "rc=1" in done["stdout"]
    written_mb = int(done["stdout"].split()[-2])
    assert written_mb <= 64, f"{written_mb} MB written into {folder}"
    assert after - before < 50 * 1024 * 1024, "the host's disk grew with the sandbox's writes"
    assert_still_healthy(client)


def test_the_root_filesystem_is_read_only(client: Client) -> None:
    done = run(client, ["touch /usr/bin/evil; echo rc=$?; touch /etc/evil 2>&1; mkdir /x 2>&1; true"])
    assert "rc=1" in done["stdout"], done
    assert "Read-only file system" in done["stderr"] + done["stdout"]
    assert_still_healthy(client)


# Output


def test_a_200_mb_output_flood_is_truncated_in_bounded_memory_and_nothing_lands_on_disk(
    client: Client, stack: RunningStack, docker_client: Any
) -> None:
    dispatcher = stack.stack.procs[f"dispatcher-{stack.server}"]
    before = shutil.disk_usage("/var/lib/docker").used
    flood = "python3 -c 'import sys\nb = b\"a\" * (1 << 20)\nfor _ in range(200): sys.stdout.buffer.write(b)'"
    sandbox_id = client.submit([flood + "; echo done >&2"], timeout="60", output_kb="256")

    log_types = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not log_types:
        for container in docker_client.containers.list(filters={"name": f"od-{sandbox_id}"}, ignore_removed=True):
            log_types.add(container.attrs["HostConfig"]["LogConfig"]["Type"])
        time.sleep(0.05)
    done = client.wait_done(sandbox_id, timeout=90)
    after = shutil.disk_usage("/var/lib/docker").used

    assert done["status"] == "terminated" and done["return_code"] == 0, {k: done[k] for k in ("status", "error")}
    assert done["output_truncated"] is True
    # The JSON carries a preview (64 KiB); the stream's bytes, up to the cap, are downloaded.
    kept = client.get(f"/api/sandboxes/{sandbox_id}/stdout").content
    assert len(kept) == 256 * 1024 and set(kept) == {ord("a")}
    assert done["stdout_bytes"] == 256 * 1024 and set(done["stdout"]) == {"a"}
    assert done["stderr"] == "done\n", "the other stream is kept whole"
    assert log_types == {"none"}, "the engine must not keep the output in its own log files"
    assert after - before < 50 * 1024 * 1024, "the flood reached the host's disk"
    peak_kb = int(
        next(
            line for line in Path(f"/proc/{dispatcher.pid}/status").read_text().splitlines() if line.startswith("VmHWM")
        ).split()[1]
    )
    assert peak_kb < 150 * 1024, f"dispatcher peak RSS {peak_kb // 1024} MB"
    assert_still_healthy(client)


def test_output_larger_than_a_row_is_returned_whole(client: Client) -> None:
    """Up to the cap, output too large for a DynamoDB row lives in S3 and the API returns it whole (as bytes)."""
    script = "import sys\nsys.stdout.write('x' * 600000)\nsys.stderr.write('y' * 300000)\n"
    done = run(client, ["python3 big.py"], {"big.py": script}, output_kb="1024")

    assert done["status"] == "terminated" and done["return_code"] == 0, done["error"]
    assert done["output_truncated"] is False
    # Whole as bytes through the downloads; the JSON holds a preview of each and the sizes.
    assert client.get(f"/api/sandboxes/{done['id']}/stdout").content == b"x" * 600000
    assert client.get(f"/api/sandboxes/{done['id']}/stderr").content == b"y" * 300000
    assert (done["stdout_bytes"], done["stderr_bytes"]) == (600000, 300000)
    assert done["stdout"] == "x" * len(done["stdout"]) and done["inline_truncated"] is True


# Network and privileges


def test_there_is_no_network_not_even_to_the_api_or_the_aws_endpoint(client: Client, stack: RunningStack) -> None:
    targets = [
        ("127.0.0.1", stack.stack.api_port),
        ("127.0.0.1", stack.stack.aws_port),
        ("8.8.8.8", 53),
        ("172.17.0.1", 22),
        ("10.0.2.2", 80),
    ]
    script = (
        "import socket, sys\n"
        f"for host, port in {targets!r}:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        print('REACHED', host, port)\n"
        "    except OSError as e:\n"
        "        print('blocked', host, port, type(e).__name__)\n"
        "print(open('/proc/net/route').read().count('\\n') - 1, 'routes')\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    done = run(client, ["python3 net.py"], {"net.py": script}, timeout="20")

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert "REACHED" not in done["stdout"], done["stdout"]
    assert done["stdout"].count("blocked") == len(targets)
    assert "0 routes" in done["stdout"]
    assert "['lo']" in done["stdout"]
    assert_still_healthy(client)


def test_no_docker_socket_no_root_no_capabilities_no_new_privileges_no_platform_secret(
    client: Client, stack: RunningStack
) -> None:
    hmac_key = (stack.stack.state_dir / "hmac.key").read_text().strip()
    script = (
        "import os, glob\n"
        "print('uid', os.getuid(), os.geteuid())\n"
        "print('sockets', [p for p in ('/var/run/docker.sock', '/run/docker.sock') if os.path.exists(p)])\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "print('CapEff', status['CapEff'].strip(), 'NoNewPrivs', status['NoNewPrivs'].strip())\n"
        "try:\n    os.setuid(0); print('SETUID WORKED')\nexcept PermissionError: print('setuid refused')\n"
        "env = {}\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try: env[path] = open(path, 'rb').read().decode(errors='replace')\n"
        "    except OSError: pass\n"
        "print('ENVIRON', '|'.join(env.values()))\n"
    )
    done = run(client, ["python3 probe.py"], {"probe.py": script})
    out = done["stdout"]

    assert "uid 1000 1000" in out, out
    assert "sockets []" in out
    assert "CapEff 0000000000000000 NoNewPrivs 1" in out
    assert "setuid refused" in out
    environ = out.split("ENVIRON", 1)[1]
    for secret in ("AWS_", "OPENDEVELOP_", stack.demo["secret"], hmac_key):
        assert secret not in environ, f"{secret[:12]}... is visible inside the sandbox"
    assert_still_healthy(client)


def test_a_setuid_binary_gives_no_root(client: Client) -> None:
    done = run(client, ["ls -l /usr/bin/su /bin/mount 2>/dev/null; su -c id root </dev/null; echo su=$?"])
    assert "uid=0" not in done["stdout"], done
    assert_still_healthy(client)


# Files


def test_a_symlink_planted_in_the_working_folder_is_never_followed_by_the_host(client: Client, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("host secret\n")
    cmd = [
        f"ln -s {canary} escape; ln -s / root; ln -s /etc/shadow shadow",
        f"cat escape root{canary} 2>&1; echo overwritten > escape 2>&1; ls -la",
    ]
    done = run(client, cmd, {"note.txt": "hi"})

    assert done["status"] == "terminated", done
    assert "host secret" not in done["logs"], "the sandbox read a host file through a symlink"
    assert canary.read_text() == "host secret\n", "the host followed a symlink planted by the sandbox"
    assert_still_healthy(client)


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/etc/evil.py", "..", "a\\b.py"])
def test_file_names_that_leave_the_working_folder_are_refused(client: Client, name: str) -> None:
    response = client.post(files=multipart(["ls"], {name: "x"}, image="base", timeout="5"))
    assert response.status_code == 400, response.text
    assert response.json()["Code"] == "BadRequestError"
    assert "files" in response.json()["Message"]


def test_odd_but_harmless_file_names_arrive_as_plain_files(client: Client) -> None:
    files: dict[str, str | bytes] = {
        "dev/null": "not a device",
        "CON": "dos",
        "nul.txt": "",
        "héllo wörld/ünïcødé ✓.py": "print('ok')\n",
        "-rf": "dash",
        "empty": "",
    }
    done = run(
        client,
        ["find . -type f | sort; test -f dev/null && cat dev/null; echo; python3 'héllo wörld/ünïcødé ✓.py'"],
        files,
    )

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    for name in files:
        assert f"./{name}\n" in done["stdout"], name
    assert "not a device" in done["stdout"]
    assert done["stdout"].endswith("ok\n")


def test_a_thousand_small_files_and_an_empty_one(client: Client) -> None:
    files: dict[str, str | bytes] = {f"d{i % 10}/f{i}.txt": str(i) for i in range(999)}
    files["empty.txt"] = ""
    done = run(client, ["find . -type f | wc -l; cat d3/f123.txt; echo; wc -c < empty.txt"], files, wait=60)

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["stdout"].split() == ["1000", "123", "0"]


def test_a_5_mb_binary_round_trips_byte_for_byte(client: Client) -> None:
    blob = os.urandom(5 * 1024 * 1024)
    done = run(client, ["sha256sum blob.bin"], {"blob.bin": blob})

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["stdout"].split()[0] == hashlib.sha256(blob).hexdigest()


def test_nothing_of_one_run_is_visible_to_the_next(client: Client) -> None:
    first = run(client, ["echo secret > /sandbox/left.txt; echo secret > /tmp/left.txt; ls /sandbox /tmp"])
    assert "left.txt" in first["stdout"], first
    second = run(client, ["ls -A /sandbox /tmp; cat /sandbox/left.txt /tmp/left.txt 2>&1; true"])
    assert "left.txt" not in second["stdout"].split(), second
    assert "secret" not in second["logs"]


def test_everything_made_for_a_run_is_removed(client: Client, stack: RunningStack, docker_client: Any) -> None:
    ids = [client.submit(["echo hi"]) for _ in range(3)] + [client.submit(["sleep 30"], timeout="1")]
    for sandbox_id in ids:
        client.wait_done(sandbox_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = docker_client.containers.list(
            all=True, filters={"label": f"opendevelop.server={stack.server}"}, ignore_removed=True
        )
        if not [c for c in left if c.name in {f"od-{sandbox_id}" for sandbox_id in ids}]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"containers left behind: {[c.name for c in left]}")


def test_concurrent_attacks_do_not_starve_an_ordinary_run(client: Client) -> None:
    bombs = [
        client.submit(["bomb(){ bomb|bomb& }; bomb"], timeout="4", pids="64"),
        client.submit(["python3 -c 'a = []\nwhile True: a.append(bytearray(8 << 20))'"], memory_mb="64"),
    ]
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda i=i: results.append(client.wait_done(i, timeout=60))) for i in bombs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r["status"] for r in results} == {"terminated"}
    assert_still_healthy(client)
