"""One image layer, built as ``base`` is: the parent's files, Debian packages installed in a chroot, imported.

1. the parent image's root filesystem, exported into a scratch folder (``chroot.Work``);
2. ``apt-get install --no-install-recommends`` in a chroot of it, with the host's network
   (``/proc`` mounted, a few device nodes made, nothing of the host's bind-mounted but the apt cache);
3. the version, measured in the chroot by the recipe's ``version_command``;
4. docs and caches stripped, what Docker provides left empty;
5. ``docker import`` with the recipe's ``ENV``, ``WORKDIR /sandbox``, ``CMD`` and the labels that describe it.

Standard library only (``build.py`` runs on a fresh host before any virtualenv exists).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from infra.images.chroot import (
    APT_IN_CHROOT,
    PATH,
    Work,
    apt_options,
    in_chroot,
    locked,
    make_devices,
    on_signal,
    strip,
)
from infra.images.docker_cli import BuildError, docker, dockerfile_quote, inspect, log
from infra.images.recipes import REPO, labels_for

SANDBOX_DIR = "/sandbox"


def build_layer(
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
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
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
        make_devices(rootfs)
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
        apt = f"apt-get {apt_options()}"
        packages = " ".join(recipe["packages"])
        with locked("apt"):  # one apt at a time on the shared cache
            for attempt in (1, 2):
                try:
                    work.run("apt-get update", in_chroot(work, f"{apt} update"))
                    work.run(
                        f"apt-get install {packages}",
                        in_chroot(work, f"{apt} install -y --no-install-recommends {packages}"),
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
            work.run("measuring the version", in_chroot(work, f"HOME=/tmp; {command}"), stdout=f)
        version = (out.read_text(errors="replace").strip().splitlines() or [""])[0].strip()
        if not version:
            raise BuildError(f"{name}: the version command printed nothing: {command}")

        # 4. strip, and leave what Docker provides empty
        work.unmount_all()
        for leftover in (rootfs / APT_IN_CHROOT.lstrip("/"), rootfs / "var/cache/opendevelop-apt"):
            if leftover.is_dir() and not any(leftover.iterdir()):
                leftover.rmdir()
        strip(rootfs)
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
        changes += [f"ENV {k}={dockerfile_quote(v)}" for k, v in sorted(recipe.get("env", {}).items())]
        changes += [f"WORKDIR {SANDBOX_DIR}", 'CMD ["/bin/sh"]']
        labels = labels_for(name, recipe, tag, parent_tag, version)
        changes += [f"LABEL {k}={dockerfile_quote(v)}" for k, v in labels.items()]
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
