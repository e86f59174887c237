"""A Docker engine of the drill's own: a second ``dockerd`` beside the machine's.

Two servers on one engine share one container namespace: a second start of a
sandbox there would clash on its name (``od-<id>``) and the runner would
remove the first container to make room, which hides a double start.  So the
drills give their second server an engine of its own: its own socket, data
root, exec root, pidfile and (managed) containerd, no bridge and no iptables
rules, and the ``base`` image loaded from the machine's engine.  It can be
stalled (SIGSTOP) without touching the engine that other people's tests use.

With ``disk_mb`` its data root is a tmpfs of that size, which ``fill()`` fills
to the last byte: an engine whose disk is full.

Everything it made (processes, mounts, folders) goes in ``stop()``, whatever
happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from infra.local.stack import BASE_IMAGE, DOCKER_URL


def saved_base_image(folder: Path) -> Path:
    """The ``base`` image as a tar (``docker save`` from the machine's engine), written once into ``folder``."""
    tar = folder / "base-image.tar"
    if not tar.exists():
        with open(tar.with_suffix(".part"), "wb") as out:
            subprocess.run(["docker", "-H", DOCKER_URL, "save", BASE_IMAGE], stdout=out, check=True, timeout=300)
        tar.with_suffix(".part").rename(tar)
    return tar


class Engine:
    """A ``dockerd`` on ``unix://<dir>/docker.sock``; ``start()``, then ``stop()`` in a ``finally``."""

    def __init__(self, name: str, disk_mb: int | None = None) -> None:
        self.name = name
        self.disk_mb = disk_mb
        # Short and under /tmp: unix socket paths are limited to 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix=f"od-{name}-", dir="/tmp"))
        self.data = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.socket = self.dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounted = False
        self._log = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.dir / "dockerd.log"

    def client(self, timeout: int = 30) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, timeout=timeout)

    def start(self, image_tar: Path | None = None, timeout_s: float = 60) -> None:
        self.data.mkdir(parents=True)
        self.exec_root.mkdir()
        if self.disk_mb:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m,mode=0711", f"od-{self.name}", str(self.data)],
                check=True,
            )
            self.mounted = True
        config = self.dir / "daemon.json"  # not the machine's /etc/docker/daemon.json
        config.write_text(
            json.dumps({"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}})
        )
        self._log = open(self.log_path, "ab")
        # Started through a link of another name: tools (and other tests on this machine) that look
        # for "the" engine's process by its name, `dockerd`, must not find and restart this one.
        exe = self.dir / "od-dockerd"
        exe.symlink_to(shutil.which("dockerd") or "/usr/sbin/dockerd")
        self.proc = subprocess.Popen(
            [
                str(exe),
                f"--config-file={config}",
                f"--host={self.url}",
                f"--data-root={self.data}",
                f"--exec-root={self.exec_root}",
                f"--pidfile={self.dir / 'docker.pid'}",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver=overlay2",
                "--log-level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client(timeout=2).ping()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"engine {self.name} did not answer at {self.url}: {self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        if image_tar is not None:
            subprocess.run(
                ["docker", "-H", self.url, "load", "-q", "-i", str(image_tar)],
                check=True,
                timeout=300,
                capture_output=True,
            )

    # Faults

    def pause(self) -> None:
        """Stall the engine: its API stops answering; the containers it runs go on (their shims are apart)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def fill(self) -> int:
        """Fill the data root's filesystem to the last byte; return the bytes written."""
        assert self.mounted, "fill() needs an engine started with disk_mb"
        filler = self.data / "drill-filler"
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(filler, "wb", buffering=0) as out:
            try:
                while True:
                    written += out.write(chunk)
            except OSError:
                pass
            try:  # the last partial megabyte
                while True:
                    written += out.write(b"\0" * 4096)
            except OSError:
                pass
        return written

    def free_bytes(self) -> int:
        stat = os.statvfs(self.data)
        return stat.f_bavail * stat.f_frsize

    # Teardown

    def stop(self, keep_log: Path | None = None) -> None:
        """Remove its containers, stop the daemon (SIGKILL after 20 s), unmount, remove the folder
        (its log copied to ``keep_log`` first, when given)."""
        if self.proc is not None:
            self.resume()
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):  # an engine that does not answer is stopped all the same
                    api = self.client(timeout=10)
                    for container in api.containers(all=True):
                        with contextlib.suppress(Exception):
                            api.remove_container(container["Id"], force=True)
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            _kill_left_under(self.exec_root)
        if self._log is not None:
            self._log.close()
        if keep_log is not None and self.log_path.exists():
            shutil.copyfile(self.log_path, keep_log)
        self._unmount_all()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _unmount_all(self) -> None:
        """Whatever is still mounted under the engine's folder (overlays, netns, shm, the tmpfs), deepest first."""
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point == str(self.dir) or point.startswith(f"{self.dir}/"):
                mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
        self.mounted = False


def _kill_left_under(exec_root: Path) -> None:
    """A killed dockerd can leave its containerd and shims: end the processes whose command line names our folder."""
    needle = str(exec_root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in line:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
