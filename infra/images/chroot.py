"""A build's scratch root filesystem: its folder, the commands run in it (in a ``chroot``), and its clean-up.

Standard library only (``build.py`` runs on a fresh host before any virtualenv exists).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infra.images.docker_cli import BuildError, log

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_IN_CHROOT = "/var/cache/opendevelop-apt"  # where the host's apt cache is bind-mounted during a build


class Interrupted(BaseException):
    pass


def on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


class Work:
    """A scratch folder under /var/tmp with a root filesystem in it; everything mounted in it goes with it."""

    def __init__(self, name: str) -> None:
        scratch = Path("/var/tmp")  # noqa: S108 - a root-only mkdtemp folder; /tmp may be a small tmpfs
        scratch.mkdir(exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"opendevelop-{name}.", dir=scratch))
        self.rootfs = self.dir / "rootfs"
        self.rootfs.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []

    def mounts(self) -> list[str]:
        prefix = str(self.dir) + "/"
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        return sorted((p for p in points if p.startswith(prefix)), reverse=True)  # deepest first

    def unmount_all(self) -> None:
        for point in self.mounts():
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)

    def run(self, what: str, args: list[str], stdout: Any = None, timeout_s: float = 1800) -> None:
        """Run a command in its own session, so that on failure or a signal it (and what it started) is stopped."""
        with open(self.dir / "build.log", "ab") as logf:
            logf.write(f"\n==== {what}: {' '.join(args)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                args, stdout=stdout or logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self.procs.append(proc)
            try:
                rc = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.stop(proc)
                raise BuildError(f"{what}: still running after {timeout_s:.0f} s") from None
            finally:
                if proc.poll() is None:
                    self.stop(proc)
                self.procs.remove(proc)
        if rc != 0:
            tail = (self.dir / "build.log").read_text(errors="replace").splitlines()[-25:]
            raise BuildError(f"{what} failed (exit {rc}); last lines of its log:\n  " + "\n  ".join(tail))

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def remove(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        self.unmount_all()
        if self.mounts():  # never delete through something still mounted
            log(f"warning: {self.dir} still has mounts; left in place")
            return
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], capture_output=True)


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    Path("/run/lock").mkdir(parents=True, exist_ok=True)
    with open(f"/run/lock/opendevelop-image-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def in_chroot(work: Work, script: str) -> list[str]:
    env = ["env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root", "DEBIAN_FRONTEND=noninteractive"]
    return ["chroot", str(work.rootfs), *env, "/bin/sh", "-ec", script]


def make_devices(rootfs: Path) -> None:
    """The few device nodes package scripts need, made rather than bind-mounted from the host."""
    dev = rootfs / "dev"
    shutil.rmtree(dev, ignore_errors=True)
    dev.mkdir(mode=0o755)
    for node, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9)):
        os.mknod(dev / node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / node, 0o666)  # noqa: S103 - what /dev/null and friends are everywhere
    (dev / "shm").mkdir(mode=0o1777)
    (dev / "pts").mkdir(mode=0o755)


def apt_options() -> str:
    cache = os.environ.get("OPENDEVELOP_APT_CACHE", "/var/cache/opendevelop/apt")
    common = "-q -o APT::Sandbox::User=root -o Acquire::Retries=3 -o Dpkg::Use-Pty=0"
    if not cache:
        return common
    return f"{common} -o Dir::Cache::Archives={APT_IN_CHROOT}/archives/ -o Dir::State::Lists={APT_IN_CHROOT}/lists/"


def strip(rootfs: Path) -> None:
    """What an image never needs: apt's lists and caches, docs (licences kept), man pages, logs, scratch."""
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/lintian",
        "usr/share/locale/*",
        "var/log/*",
        "tmp/*",
        "var/tmp/*",
        "root/.*",
        ".dockerenv",
        "usr/sbin/policy-rc.d",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    doc = rootfs / "usr/share/doc"
    for path in sorted(doc.rglob("*"), reverse=True):
        if path.is_symlink() or (path.is_file() and path.name != "copyright"):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
