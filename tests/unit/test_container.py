"""A sandbox's container configuration: one pure function, rendered the same for docker-py and ``docker run``."""

from __future__ import annotations

import dataclasses

from dispatcher.container import ContainerConfig, Hardening, Shape, cli_flags, configure, docker_py, sandbox_of

SHAPE = Shape("opendevelop/base:latest", memory_mb=96, cpus=0.5, pids=40, disk_mb=16)


def test_the_lockdown_follows_the_shape_and_the_hardening():
    config = configure(SHAPE, Hardening(runtime="runc", user="1000:1000", tmp_mb=32, nofile=128))

    create, host = docker_py(config)

    assert create["user"] == "1000:1000" and create["stdin_open"] is True
    assert host["network_mode"] == "none" and host["read_only"] is True
    assert host["cap_drop"] == ["ALL"] and host["security_opt"] == ["no-new-privileges"] and host["init"] is True
    assert (host["mem_limit"], host["memswap_limit"], host["mem_swappiness"]) == ("96m", "96m", 0)
    assert (host["nano_cpus"], host["pids_limit"]) == (500_000_000, 40)
    assert host["tmpfs"] == {
        "/sandbox": "rw,exec,nosuid,nodev,size=16m,mode=1777",
        "/tmp": "rw,exec,nosuid,nodev,size=32m,mode=1777",
    }
    assert host["ulimits"] == [{"name": "nofile", "soft": 128, "hard": 128}]
    assert (host["shm_size"], host["ipc_mode"], host["oom_score_adj"]) == ("16m", "private", 1000)
    assert host["log_config"] == {"type": "none"} and host["runtime"] == "runc"


def test_gvisor_gets_nproc_and_a_pids_backstop():
    config = configure(SHAPE, Hardening(runtime="runsc"))

    assert config.runtime == "runsc"
    assert config.pids_limit > SHAPE.pids
    assert ("nproc", SHAPE.pids) in config.ulimits


def test_network_is_opt_in():
    assert configure(dataclasses.replace(SHAPE, network=True)).network_mode == "od-sandbox"  # never the default bridge


def test_the_docker_run_flags_carry_every_field():
    config = configure(SHAPE, Hardening(runtime="runsc", tmp_mb=32, nofile=128))

    flags = " ".join(cli_flags(config))

    expected = {
        "user": "--user 1000:1000",
        "hostname": "--hostname sandbox",
        "environment": "--env HOME=/sandbox --env LANG=C.UTF-8",
        "network_mode": "--network none",
        "read_only": "--read-only",
        "tmpfs": "--tmpfs /sandbox:rw,exec,nosuid,nodev,size=16m,mode=1777 --tmpfs /tmp:rw,exec,nosuid,nodev,size=32m",
        "cap_drop": "--cap-drop ALL",
        "security_opt": "--security-opt no-new-privileges",
        "init": "--init",
        "memory_mb": "--memory 96m",
        "memswap_mb": "--memory-swap 96m",
        "mem_swappiness": "--memory-swappiness 0",
        "cpus": "--cpus 0.5",
        "pids_limit": f"--pids-limit {config.pids_limit}",
        "ulimits": "--ulimit nofile=128:128 --ulimit nproc=40:40",
        "shm_mb": "--shm-size 16m",
        "ipc_mode": "--ipc private",
        "oom_score_adj": "--oom-score-adj 1000",
        "log_driver": "--log-driver none",
        "runtime": "--runtime runsc",
    }
    # Every field but the image and the command (given to `docker run` after the flags).
    assert set(expected) == {f.name for f in dataclasses.fields(ContainerConfig)} - {"image", "command"}
    for field, flag in expected.items():
        assert flag in flags, field


def test_a_listed_container_names_its_sandbox_by_label_or_by_name():
    assert sandbox_of({"Labels": {"opendevelop.sandbox": "abc"}, "Names": ["/od-spare-1"]}) == "abc"
    assert sandbox_of({"Labels": {}, "Names": ["/od-0123abcd"]}) == "0123abcd"  # a spare taken by a run
    assert sandbox_of({"Labels": {"opendevelop.pool": "1"}, "Names": ["/od-spare-1f2e"]}) == ""
