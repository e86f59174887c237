"""The dispatcher's time per run above a raw ``docker run`` of the same hardened container.

    .venv/bin/python bench/runner_overhead.py [runs]

Runs the documented example (``python test.py``, the file sent as the
dispatcher sends it: a tar on stdin) through ``dispatcher.runner.Runner``,
interleaved with the same hardened container through the Docker SDK and the
``docker`` CLI, and prints the medians and the difference.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import cli_run, sdk_run  # noqa: E402
from chalicelib.files import UploadedFile, bundle  # noqa: E402
from dispatcher.engine import RunSpec  # noqa: E402
from dispatcher.runner import Runner  # noqa: E402


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto")
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    runner = Runner(api, "bench-overhead")
    tar = bundle([UploadedFile("test.py", b'print("hello opendevelop!")\n')])
    samples: dict[str, list[float]] = {"runner": [], "sdk": [], "cli": []}
    for i in range(runs + 1):
        spec = RunSpec(
            f"overhead{i:08d}", "opendevelop/base:latest", ["python test.py"], 10, 256, 1.0, 128, 64, 65536, len(tar)
        )
        started = time.perf_counter()
        result = runner.run(spec, tar)
        runner.release(result.container_id)  # the raw runs remove theirs too
        runner_s = time.perf_counter() - started
        assert result.stdout == b"hello opendevelop!\n", result
        sdk_s, cli_s = sdk_run(client), cli_run()
        if i:  # the first round warms every path
            samples["runner"].append(runner_s)
            samples["sdk"].append(sdk_s)
            samples["cli"].append(cli_s)
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    print(
        f"median of {runs} runs: dispatcher runner {med['runner']:.0f} ms, raw SDK {med['sdk']:.0f} ms, "
        f"raw docker CLI {med['cli']:.0f} ms"
    )
    print(
        f"runner above raw SDK: {med['runner'] - med['sdk']:+.0f} ms; "
        f"above docker run: {med['runner'] - med['cli']:+.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
