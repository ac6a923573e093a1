"""Load test of `graft serve` on loopback: 1,000 POST /predict from 8 concurrent clients,
then the twenty bad uploads (each must get a 4xx, and the server must keep answering).

Starts the server as a user does (`python -m torchgraft serve --run RUN --port P`) in a
subprocess, sends multipart uploads of real mnist5k digits (PNG files in memory) from 8
threads, each with its own keep-alive connection, and prints JSON: errors, throughput, and
client-side latency percentiles. Ends the server with Ctrl-C (SIGINT) and reports how it exited.

    python benchmarks/serve_load.py --run runs/NAME [--requests 1000] [--clients 8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
from PIL import Image

from torchgraft.data import load_data
from torchgraft.testing import bad_uploads

WARM_UP = 16  # requests before the clock starts (first calls build kernels and caches)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(run: str, port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`graft serve` in a subprocess, until /health answers; SIGINT (then kill) at the end."""
    command = [sys.executable, "-m", "torchgraft", "serve", "--run", run, "--port", str(port)]
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


def digit_uploads(count: int) -> list[bytes]:
    """`count` distinct mnist5k validation digits, PNG-encoded."""
    uploads = []
    for image in load_data("mnist5k").val.images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        uploads.append(buffer.getvalue())
    return uploads


def load(url: str, uploads: list[bytes], requests: int, clients: int) -> dict[str, object]:
    """Send `requests` uploads from `clients` threads; latencies and failures."""
    next_index = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as session:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                image = uploads[index % len(uploads)]
                started = time.perf_counter()
                try:
                    answer = session.post("/predict", files={"file": ("d.png", image, "image/png")})
                    ok = answer.status_code == 200 and bool(answer.json()["top_k"])
                    problem = "" if ok else f"HTTP {answer.status_code}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if problem:
                        failures.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    milliseconds = np.asarray(latencies) * 1000
    return {
        "requests": requests, "clients": clients, "errors": len(failures),
        "first_errors": failures[:5], "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 1),
        "latency_ms": {
            f"p{q}": round(float(np.percentile(milliseconds, q)), 1) for q in (50, 90, 99)
        } | {"max": round(float(milliseconds.max()), 1)},
    }  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    uploads = digit_uploads(200)
    with running_server(args.run, free_port()) as (url, server):
        load(url, uploads, WARM_UP, 1)
        result = load(url, uploads, args.requests, args.clients)
        bad = fire_bad_uploads(url)
        final = load(url, uploads, 50, args.clients)  # still serving after all of it
    print(json.dumps({
        "load": result, "bad_uploads": bad, "after_bad_uploads": {"errors": final["errors"]},
        "server_exit_status_after_ctrl_c": server.returncode,
        "machine_cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
