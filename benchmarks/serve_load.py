"""Load test of `graft serve` on loopback with Apache Bench (`ab`, apt-get install
apache2-utils) as the client: 2,000 POST /predict of a raw mnist5k digit PNG from 8
concurrent keep-alive clients, batching on (graft serve's defaults) and off (--max-batch 1)
side by side; then the twenty bad uploads (each must get a 4xx, and the server must keep
answering).

Each arm is a fresh server started as a user starts it (`python -m torchgraft serve --run RUN
--port P`), warmed up with 16 requests, then loaded; the arms take turns for `--rounds`
rounds and the median is reported. The last round's default server also gets the bad
uploads, 50 more good requests, and Ctrl-C (SIGINT), and the JSON says how it exited.

    python benchmarks/serve_load.py --run runs/NAME [--requests 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from torchgraft.data import load_data
from torchgraft.testing import bad_uploads

WARM_UP = 16  # requests before the clock starts (first calls build kernels and caches)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(
    run: str, port: int, options: list[str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`graft serve` in a subprocess, until /health answers; SIGINT (then kill) at the end."""
    command = [sys.executable, "-m", "torchgraft", "serve", "--run", run, "--port", str(port),
               *options]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start (exit status {server.poll()})")
            time.sleep(0.25)
        yield url, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def digit_png(folder: Path) -> Path:
    """The first mnist5k validation digit as a PNG file: the body every ab request sends."""
    path = folder / "digit.png"
    Image.fromarray(load_data("mnist5k").val.images[0]).save(path)
    return path


def apache_bench(url: str, body: Path, requests: int, clients: int) -> dict[str, object]:
    """`ab` POSTing `body` as image/png to /predict, `requests` times from `clients`
    keep-alive connections; its throughput, latency percentiles and errors."""
    command = ["ab", "-q", "-k", "-n", str(requests), "-c", str(clients), "-p", str(body),
               "-T", "image/png", f"{url}/predict"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_ab(output, requests, clients)


def parse_ab(output: str, requests: int, clients: int) -> dict[str, object]:
    """The numbers of ab's report. ab counts an answer whose length differs from the first
    one's as "failed (Length)": every answer here carries its own timing, so those are not
    errors; non-2xx answers, refused connections and broken reads are."""

    def number(pattern: str) -> float:
        found = re.search(pattern, output, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    errors = sum(
        int(number(pattern))
        for pattern in (r"Non-2xx responses:\s+(\d+)", r"Connect: (\d+)", r"Receive: (\d+)",
                        r"Exceptions: (\d+)")
    )  # fmt: skip
    return {
        "requests": int(number(r"Complete requests:\s+(\d+)")), "clients": clients,
        "errors": errors, "requests_per_s": number(r"Requests per second:\s+([\d.]+)"),
        "latency_ms": {
            f"p{q}": number(rf"^\s+{q}%\s+(\d+)") for q in (50, 90, 99)
        } | {"max": number(r"100%\s+(\d+)")},
    }  # fmt: skip


def mean_batch_size(url: str) -> float:
    """Images per model call so far, from the server's GET /metrics."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    total = float(re.search(r"^graft_batch_size_sum ([\d.e+]+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    calls = float(re.search(r"^graft_batch_size_count ([\d.e+]+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    return round(total / calls, 2) if calls else 0.0


def fire_bad_uploads(url: str) -> dict[str, object]:
    """Each bad upload on a fresh connection (a refused upload may close its connection),
    each followed by a health check."""
    answers = []
    for bad in bad_uploads():
        with httpx.Client(base_url=url, timeout=60) as session:
            status: int | str
            try:
                status = session.post("/predict", **bad.request).status_code
            except httpx.HTTPError as error:
                status = f"{type(error).__name__}: {error}"
            alive = session.get("/health").status_code == 200
        passed = status in bad.statuses and alive
        answers.append(
            {"upload": bad.name, "status": status, "passed": passed, "health_after": alive}
        )
    return {"sent": len(answers), "passed": sum(bool(a["passed"]) for a in answers),
            "answers": answers}  # fmt: skip


ARMS = {"batching_on": [], "batching_off": ["--max-batch", "1"]}  # on: graft serve's defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="report the median of N")
    args = parser.parse_args()
    if shutil.which("ab") is None:
        raise SystemExit("ab not found: apt-get install apache2-utils")
    results: dict[str, list[dict[str, object]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        body = digit_png(Path(folder))
        for round_number in range(args.rounds):
            for arm, options in ARMS.items():
                last = round_number == args.rounds - 1 and arm == "batching_on"
                results[arm].append(one_server(args, body, options, checks=last))
    print(json.dumps({
        arm: median_run(runs) | {"rounds": runs} for arm, runs in results.items()
    } | {
        "machine_cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }, indent=2))  # fmt: skip


def one_server(
    args: argparse.Namespace, body: Path, options: list[str], checks: bool
) -> dict[str, object]:
    """A fresh `graft serve`: warmed up, loaded by ab; with `checks`, then the bad uploads,
    more good requests and Ctrl-C."""
    result: dict[str, object] = {}
    with running_server(args.run, free_port(), options) as (url, server):
        apache_bench(url, body, WARM_UP, 1)
        result = apache_bench(url, body, args.requests, args.clients)
        result["mean_batch_size"] = mean_batch_size(url)
        if checks:
            result["bad_uploads"] = fire_bad_uploads(url)
            after = apache_bench(url, body, 50, args.clients)  # still serving after all of it
            result["after_bad_uploads"] = {"errors": after["errors"]}
    if checks:
        result["server_exit_status_after_ctrl_c"] = server.returncode
    return result


def median_run(runs: list[dict[str, object]]) -> dict[str, object]:
    """The run with the median throughput."""
    ordered = sorted(runs, key=lambda run: float(run["requests_per_s"]))  # type: ignore[arg-type]
    middle = ordered[len(ordered) // 2]
    return {"median": {key: middle[key] for key in ("requests_per_s", "latency_ms", "errors",
                                                     "mean_batch_size")}}  # fmt: skip


if __name__ == "__main__":
    main()
