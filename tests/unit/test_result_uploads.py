"""A run's output streams go to storage at once, and the process never has more than a few uploads in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dispatcher import parts, result


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.keys: list[str] = []

    def __call__(self, key: str, path: Path) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.keys.append(key)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1


def test_one_runs_streams_upload_together(tmp_path: Path) -> None:
    upload = Recorder()
    result._upload_all("s1", "tok", tmp_path, ["stdout", "stderr", "logs"], upload)
    assert upload.most == 3
    assert sorted(upload.keys) == [f"sandboxes/s1/output/tok/{s}" for s in ("logs", "stderr", "stdout")]


def test_four_runs_ending_together_keep_at_most_three_uploads_in_flight(tmp_path: Path) -> None:
    upload = Recorder()
    runs = [
        threading.Thread(
            target=result._upload_all, args=(f"s{i}", "tok", tmp_path, ["stdout", "stderr", "logs"], upload)
        )
        for i in range(4)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(10)
    assert len(upload.keys) == 12
    assert upload.most == parts.UPLOADS_AT_ONCE == 3


def test_a_failed_upload_is_raised_after_the_others_ended(tmp_path: Path) -> None:
    done: list[str] = []

    def upload(key: str, path: Path) -> None:
        if key.endswith("stderr"):
            raise RuntimeError("S3 said no")
        time.sleep(0.05)
        done.append(key)

    try:
        result._upload_all("s1", "tok", tmp_path, ["stdout", "stderr", "logs"], upload)
    except RuntimeError as e:
        assert str(e) == "S3 said no"
    else:
        raise AssertionError("the failure was not raised")
    assert sorted(done) == ["sandboxes/s1/output/tok/logs", "sandboxes/s1/output/tok/stdout"]
