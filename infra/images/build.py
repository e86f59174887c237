#!/usr/bin/env python3
"""Build the image catalogue without any registry: each image is ``base`` plus Debian packages.

    sudo python3 infra/images/build.py --all        # base, then every recipe; prints one ref per line
    sudo python3 infra/images/build.py go java      # these (and what they are built from)
    sudo python3 infra/images/build.py --check      # validate every recipe, build nothing

A recipe is a folder ``infra/images/<name>/`` holding ``image.json``::

    {"from": "base", "packages": ["golang-go"], "env": {"CGO_ENABLED": "0"},
     "version_command": "go env GOVERSION | sed s/^go//",
     "description": "...", "language": "Go", "run": "go run {file}", "extensions": [".go"],
     "smoke": {"file": "main.go", "stdout": "..."}}

and the smoke program it names (run by the tests and by ``manage.py image-build``
under the platform's own container configuration).  ``base`` is the exception:
``base/build.sh`` makes it with ``debootstrap``; its ``image.json`` only
describes it.

A layer is built the way ``base`` is, with the host's network and never a
registry: the parent image's root filesystem is exported into a folder,
``apt-get install --no-install-recommends`` runs in a ``chroot`` of it (with
``/proc`` mounted and a handful of device nodes made, nothing of the host's
bind-mounted but the apt cache), docs and caches are stripped, and the folder is
``docker import``-ed with the recipe's ``ENV``, ``WORKDIR /sandbox`` and
``CMD``, and labels that describe it (``org.opendevelop.version`` is measured
in the chroot by ``version_command``; ``manage.py`` and ``make dev`` register
images from these labels).  Tags: ``opendevelop/<name>:<recipe hash>`` and
``:latest``, where the hash covers this file, the recipe's folder and the
parent's own recipe hash, so editing a recipe (or ``base``) rebuilds what
depends on it, and running again unchanged is a few ``docker inspect`` calls.

Downloaded packages and apt's lists are kept in ``/var/cache/opendevelop/apt``
(``OPENDEVELOP_APT_CACHE``; empty: none), so a rebuild downloads only what
changed.  ``OPENDEVELOP_FORCE_REBUILD=1`` rebuilds even when the tag exists.
``OPENDEVELOP_IMAGE_RECIPES`` points at another folder of recipes (tests).

Needs root (chroot, mount), Python 3.11's standard library only (it runs on a
fresh host before any virtualenv exists) and a running Docker engine.  Progress
goes to stderr; stdout gets one image reference per built image.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # run as a script, on a host without the virtualenv
    sys.path.insert(0, str(HERE.parents[1]))

from chalicelib import image_meta  # noqa: E402 - standard library only
from chalicelib.errors import InvalidInput  # noqa: E402

REPO = "opendevelop"
BASE = "base"
LABEL = "org.opendevelop"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_DIR = "/sandbox"
APT_IN_CHROOT = "/var/cache/opendevelop-apt"  # where the host's apt cache is bind-mounted during a build

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TEXT_FIELDS = image_meta.TEXT_FIELDS
RECIPE_KEYS = {
    "from",
    "packages",
    "env",
    "version_command",
    "version",
    "description",
    "language",
    "run",
    "run_by_extension",
    "extensions",
    "smoke",
}


class RecipeError(ValueError):
    """A recipe that cannot be built as written; the message names the file and the field."""


class BuildError(RuntimeError):
    """The build failed (a command, the mirror, the engine); the message says which step."""


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


# Recipes


def recipes_dir() -> Path:
    return Path(os.environ.get("OPENDEVELOP_IMAGE_RECIPES") or HERE)


def check_metadata(where: str, data: dict[str, Any]) -> dict[str, Any]:
    """The fields that describe the image, checked as ``image-create`` checks them."""
    try:
        return image_meta.check(data)
    except InvalidInput as e:
        raise RecipeError(f"{where}: {e.message}") from None


def load(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The recipe ``name`` (from ``directory``, else the recipes folder), checked."""
    if not NAME.match(name):
        raise RecipeError(f"{name!r}: an image name is 1-63 lower-case letters, digits, '.', '_' or '-'")
    folder = directory or recipes_dir() / name
    path = folder / "image.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"no recipe {name!r} (no {path})") from None
    except ValueError as e:
        raise RecipeError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: must hold a JSON object")
    unknown = sorted(set(data) - RECIPE_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown field {unknown[0]!r}; known: {', '.join(sorted(RECIPE_KEYS))}")
    data.update(check_metadata(str(path), data))
    if name == BASE:
        if data.get("from") or data.get("packages"):
            raise RecipeError(f"{path}: base is made by base/build.sh; its image.json only describes it")
    else:
        parent = data.get("from")
        if not isinstance(parent, str) or not NAME.match(parent) or parent == name:
            raise RecipeError(f"{path}: 'from' must name the image this one is built on, e.g. 'base'")
        packages = data.get("packages")
        if not isinstance(packages, list) or not packages or not all(isinstance(p, str) for p in packages):
            raise RecipeError(f"{path}: 'packages' must be a non-empty list of Debian package names")
        bad = [p for p in packages if not PACKAGE.match(p)]
        if bad:
            raise RecipeError(f"{path}: {bad[0]!r} is not a Debian package name")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, str) and not any(ord(c) < 32 for c in v)
        for k, v in env.items()
    ):
        raise RecipeError(f"{path}: 'env' must map variable names to one-line strings")
    if "PATH" in env or "HOME" in env:
        raise RecipeError(f"{path}: 'env' may not set PATH or HOME (the platform sets them)")
    smoke = data.get("smoke", [])
    if not isinstance(smoke, list):
        raise RecipeError(f"{path}: 'smoke' must be a list of {{'file': ..., 'stdout': ...}}")
    for program in smoke:
        if not isinstance(program, dict) or not isinstance(program.get("file"), str) or "stdout" not in program:
            raise RecipeError(f"{path}: 'smoke' must be a list of {{'file': ..., 'stdout': ...}}")
        if not (folder / program["file"]).is_file():
            raise RecipeError(f"{path}: the smoke program {program['file']!r} is not in {folder}")
    return data


def catalogue(directory: Path | None = None) -> list[str]:
    """Every recipe's name, each after the one it is built from (``base`` first)."""
    root = directory or recipes_dir()
    names = sorted(p.parent.name for p in root.glob("*/image.json"))
    parents = {n: load(n, root / n).get("from") for n in names}
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise RecipeError(f"recipes build on each other in a loop: {' -> '.join((*path, name))}")
        parent = parents.get(name)
        if parent:
            if parent not in parents:
                raise RecipeError(f"recipe {name!r} is built from {parent!r}, which has no recipe")
            visit(parent, (*path, name))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


def recipe_hash(name: str, parent_recipe: str, directory: Path | None = None) -> str:
    """12 hex digits over this builder, every file of the recipe's folder and the parent's own hash."""
    folder = directory or recipes_dir() / name
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(f"\0{name}\0{parent_recipe}\0".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# Docker


def docker(*args: str, stdin: Any = None, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], stdin=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BuildError(f"docker {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def inspect(ref: str) -> dict[str, Any] | None:
    """The image's id, tags and labels, or None when the engine does not have it."""
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{json .}}", ref], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return {
        "id": data["Id"],
        "tags": data.get("RepoTags") or [],
        "labels": (data.get("Config") or {}).get("Labels") or {},
        "size": data.get("Size", 0),
    }


def _dockerfile_quote(value: str) -> str:
    """A value for a ``--change 'LABEL k=...'``/``ENV`` line: quoted, with what Dockerfiles expand escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def labels_for(name: str, recipe: dict[str, Any], tag: str, parent_tag: str, version: str) -> dict[str, str]:
    return {
        f"{LABEL}.image": name,
        f"{LABEL}.recipe": tag,
        f"{LABEL}.from": parent_tag,
        f"{LABEL}.version": version,
        f"{LABEL}.description": recipe.get("description", ""),
        f"{LABEL}.language": recipe.get("language", ""),
        f"{LABEL}.run": recipe.get("run", ""),
        f"{LABEL}.extensions": json.dumps(recipe.get("extensions", [])),
        f"{LABEL}.run_by_extension": json.dumps(recipe.get("run_by_extension", {}), sort_keys=True),
    }


def describe_image(ref: str) -> dict[str, Any] | None:
    """What an image built here says of itself (its labels), or None when it is absent or not ours."""
    info = inspect(ref)
    if info is None:
        return None
    labels = info["labels"]
    out: dict[str, Any] = {key: labels.get(f"{LABEL}.{key}", "") for key in TEXT_FIELDS}
    for key, empty in (("extensions", "[]"), ("run_by_extension", "{}")):
        try:
            out[key] = json.loads(labels.get(f"{LABEL}.{key}") or empty)
        except ValueError:
            out[key] = json.loads(empty)
    out["recipe"] = labels.get(f"{LABEL}.recipe", "")
    out["size"] = info["size"]
    return out


# Building


class _Interrupted(BaseException):
    pass


def _on_signal(signum: int, frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


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
def _locked(name: str) -> Iterator[None]:
    Path("/run/lock").mkdir(parents=True, exist_ok=True)
    with open(f"/run/lock/opendevelop-image-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _chroot(work: Work, script: str) -> list[str]:
    env = ["env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root", "DEBIAN_FRONTEND=noninteractive"]
    return ["chroot", str(work.rootfs), *env, "/bin/sh", "-ec", script]


def _make_devices(rootfs: Path) -> None:
    """The few device nodes package scripts need, made rather than bind-mounted from the host."""
    dev = rootfs / "dev"
    shutil.rmtree(dev, ignore_errors=True)
    dev.mkdir(mode=0o755)
    for node, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9)):
        os.mknod(dev / node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / node, 0o666)  # noqa: S103 - what /dev/null and friends are everywhere
    (dev / "shm").mkdir(mode=0o1777)
    (dev / "pts").mkdir(mode=0o755)


def _apt_options() -> str:
    cache = os.environ.get("OPENDEVELOP_APT_CACHE", "/var/cache/opendevelop/apt")
    common = "-q -o APT::Sandbox::User=root -o Acquire::Retries=3 -o Dpkg::Use-Pty=0"
    if not cache:
        return common
    return f"{common} -o Dir::Cache::Archives={APT_IN_CHROOT}/archives/ -o Dir::State::Lists={APT_IN_CHROOT}/lists/"


def _strip(rootfs: Path) -> None:
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


@functools.cache
def ensure_base() -> str:
    """``base`` as ``base/build.sh`` makes it (a no-op when built); its reference."""
    out = subprocess.run(["bash", str(HERE / BASE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise BuildError("the base image build failed (see above)")
    return out.stdout.strip().splitlines()[-1]


def build(name: str, directory: Path | None = None, force: bool = False) -> str:
    """Build recipe ``name`` unless its tag exists (building what it is built from first); its reference."""
    if name == BASE:
        return ensure_base()
    recipe = load(name, directory)
    parent = recipe["from"]
    build(parent)  # a no-op when built
    parent_ref = f"{REPO}/{parent}:latest"
    parent_info = inspect(parent_ref)
    if parent_info is None:
        raise BuildError(f"{parent_ref} is missing after building it")
    parent_tag = parent_info["labels"].get(f"{LABEL}.recipe", "") or parent_info["id"]
    tag = recipe_hash(name, parent_tag, directory)
    ref = f"{REPO}/{name}:{tag}"
    force = force or os.environ.get("OPENDEVELOP_FORCE_REBUILD") == "1"
    info = None if force else inspect(ref)
    if info is None:
        with _locked(name):
            info = None if force else inspect(ref)
            if info is None:
                _build_layer(name, recipe, ref, tag, parent_ref, parent_tag, directory)
                info = inspect(ref)
                if info is None:
                    raise BuildError(f"{ref} is missing after importing it")
    if f"{REPO}/{name}:latest" not in info["tags"]:
        docker("tag", ref, f"{REPO}/{name}:latest")
    return ref


def _build_layer(
    name: str,
    recipe: dict[str, Any],
    ref: str,
    tag: str,
    parent_ref: str,
    parent_tag: str,
    directory: Path | None,
) -> None:
    for tool in ("docker", "chroot", "mount", "tar"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed")
    if os.geteuid() != 0:
        raise BuildError("building an image needs root (chroot, mount)")
    started = time.monotonic()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    work = Work(name)
    log(f"building {ref} from {parent_ref}: {' '.join(recipe['packages'])} (log: {work.dir}/build.log)")
    try:
        # 1. the parent's root filesystem
        container = docker("create", parent_ref, "/bin/true")
        try:
            with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as export:
                untar = subprocess.run(
                    ["tar", "-x", "--numeric-owner", "-C", str(work.rootfs)], stdin=export.stdout, capture_output=True
                )
            if export.returncode != 0 or untar.returncode != 0:
                raise BuildError(f"exporting {parent_ref} failed: {untar.stderr.decode(errors='replace')[-300:]}")
        finally:
            docker("rm", "-f", container, check=False)

        # 2. packages, in a chroot with the host's network
        rootfs = work.rootfs
        _make_devices(rootfs)
        (rootfs / "proc").mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
        shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        for section in range(1, 9):  # base strips man pages, but update-alternatives links into these folders
            (rootfs / f"usr/share/man/man{section}").mkdir(parents=True, exist_ok=True)
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")  # no package starts a service here
        policy.chmod(0o755)
        cache = os.environ.get("OPENDEVELOP_APT_CACHE", "/var/cache/opendevelop/apt")
        if cache:
            for sub in ("archives/partial", "lists/partial"):
                Path(cache, sub).mkdir(parents=True, exist_ok=True)
            (rootfs / APT_IN_CHROOT.lstrip("/")).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", cache, str(rootfs / APT_IN_CHROOT.lstrip("/"))], check=True)
        apt = f"apt-get {_apt_options()}"
        packages = " ".join(recipe["packages"])
        with _locked("apt"):  # one apt at a time on the shared cache
            for attempt in (1, 2):
                try:
                    work.run("apt-get update", _chroot(work, f"{apt} update"))
                    work.run(
                        f"apt-get install {packages}",
                        _chroot(work, f"{apt} install -y --no-install-recommends {packages}"),
                    )
                    break
                except BuildError:
                    if attempt == 2:
                        raise
                    log(f"{name}: apt failed; retrying once in 5 s")
                    time.sleep(5)

        # 3. its version, measured
        first = recipe["packages"][0]
        command = recipe.get("version_command") or f"dpkg-query -W -f '${{Version}}' {first}"
        out = rootfs.parent / "version.txt"
        with open(out, "wb") as f:
            work.run("measuring the version", _chroot(work, f"HOME=/tmp; {command}"), stdout=f)
        version = (out.read_text(errors="replace").strip().splitlines() or [""])[0].strip()
        if not version:
            raise BuildError(f"{name}: the version command printed nothing: {command}")

        # 4. strip, and leave what Docker provides empty
        work.unmount_all()
        for leftover in (rootfs / APT_IN_CHROOT.lstrip("/"), rootfs / "var/cache/opendevelop-apt"):
            if leftover.is_dir() and not any(leftover.iterdir()):
                leftover.rmdir()
        _strip(rootfs)
        for path in (rootfs / "dev").iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        (rootfs / "etc/resolv.conf").write_text("")
        # The dispatcher mounts a tmpfs here, and Docker gives a tmpfs the mode of the folder it covers
        # (not its mode= option): 1777 as the tmpfs asks, or uid 1000 could not write its own files.
        # Without the folder, WORKDIR would make it root's 0755 (the same trap).
        sandbox = rootfs / SANDBOX_DIR.lstrip("/")
        sandbox.mkdir(exist_ok=True)
        sandbox.chmod(0o1777)
        (rootfs / "tmp").chmod(0o1777)

        # 5. import
        changes = [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8"]
        changes += [f"ENV {k}={_dockerfile_quote(v)}" for k, v in sorted(recipe.get("env", {}).items())]
        changes += [f"WORKDIR {SANDBOX_DIR}", 'CMD ["/bin/sh"]']
        labels = labels_for(name, recipe, tag, parent_tag, version)
        changes += [f"LABEL {k}={_dockerfile_quote(v)}" for k, v in labels.items()]
        old = inspect(ref)
        args = ["import", "--message", f"opendevelop {name} (recipe {tag})"]
        for change in changes:
            args += ["--change", change]
        with subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        ) as tar:
            docker(*args, "-", ref, stdin=tar.stdout)
        if tar.returncode != 0:
            raise BuildError("packing the root filesystem failed")
        info = inspect(ref)
        if info is None or any(info["labels"].get(k) != v for k, v in labels.items()):
            raise BuildError(f"{ref}: its labels did not survive the import: {info and info['labels']}")
        docker("tag", ref, f"{REPO}/{name}:latest")
        if old is not None and old["id"] != info["id"]:
            docker("rmi", old["id"], check=False)  # the image a forced rebuild replaced
        log(f"built {ref} ({info['size'] // 1_000_000} MB, {name} {version}) in {time.monotonic() - started:.0f} s")
    finally:
        work.remove()
        for s, handler in previous.items():
            signal.signal(s, handler)


def prune() -> list[str]:
    """Remove the tags of earlier builds of each recipe (``opendevelop/<name>:<other hash>``); the removed tags.

    Not done after every build: two checkouts with different recipes on one engine would then
    rebuild each other's images on every run.
    """
    keep = set()
    for name in catalogue():
        info = inspect(f"{REPO}/{name}:latest")
        if info is not None:
            keep.update(info["tags"])
    out = docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"{REPO}/*")
    removed = []
    for tag in out.splitlines():
        name, _, version = tag.partition(":")
        if tag in keep or not re.fullmatch(r"[0-9a-f]{12}", version) or name.split("/", 1)[1] not in catalogue():
            continue
        if subprocess.run(["docker", "rmi", tag], capture_output=True).returncode == 0:
            removed.append(tag)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/images/build.py", description="Build the image catalogue.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="recipes to build (with what they are built from)")
    parser.add_argument("--all", action="store_true", help="base and every recipe")
    parser.add_argument("--check", action="store_true", help="validate the recipes; build nothing")
    parser.add_argument("--force", action="store_true", help="rebuild the named images even if built")
    parser.add_argument("--prune", action="store_true", help="remove earlier builds' tags of every recipe")
    args = parser.parse_args(argv)
    try:
        names = catalogue()
        if args.prune:
            for tag in prune():
                print(f"removed {tag}")
            return 0
        if args.check:
            for name in names:
                load(name)
            print("\n".join(names))
            return 0
        wanted = names if args.all else args.names
        if not wanted:
            parser.error("name the recipes to build, or --all")
        failed = []
        for name in wanted:
            try:
                print(build(name, force=args.force), flush=True)
            except BuildError as e:
                log(f"{name}: {e}")
                failed.append(name)
        if failed:
            log(f"not built: {', '.join(failed)}")
            return 1
        return 0
    except RecipeError as e:
        log(f"recipe: {e}")
        return 2
    except _Interrupted as e:
        log(f"interrupted ({e})")
        return 130
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
