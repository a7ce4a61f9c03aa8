"""Benchmark: the inference endpoint under load on 127.0.0.1, beside a hello-world model
on the same server stack, and with its request log on and off, measured in the same run.
Batched, fixed-rate and memory figures are taken with the request log on (the default).

Needs `wrk` (Debian: `apt-get install wrk`) and a published version: by default the
production version in var/models (run `make run` first), or --model-dir.

    python benchmarks/serving.py [--model-dir var/models/mnist/1] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
from report import publish, table

from mnist_delivery.client import EndpointClient, binary_request
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.model_contract import INPUT_NAME
from mnist_ml.registry import FileModelRepository
from mnist_serving.options import ServerOptions
from mnist_serving.sockets import bind_listener

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "single_image_requests_per_s": (500.0, "min"),
    "batched_images_per_s": (20_000.0, "min"),
    "p99_ms_at_100_rps": (10.0, "max"),
    "server_rss_mb": (1024.0, "max"),
    "request_log_throughput_cost": (0.10, "max"),
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
{extra_header}
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
"""


def wrk(url: str, body: bytes, headers: dict[str, str], connections: int, seconds: int, work: Path) -> dict:
    """Requests/s and latency percentiles (ms) from wrk with one thread."""
    name = f"{abs(hash(body))}"
    (work / f"{name}.body").write_bytes(body)
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items() if k != "Content-Type")
    script = WRK_SCRIPT.format(
        content_type=headers.get("Content-Type", "application/json"), extra_header=extra, body=work / f"{name}.body"
    )
    (work / f"{name}.lua").write_text(script)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(work / f"{name}.lua"), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {q: _ms(re.search(rf"\s{q}%\s+([\d.]+\w+)", out).group(1)) for q in (50, 99)}
    return {"rps": rps, "p50_ms": latency[50], "p99_ms": latency[99]}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def fixed_rate_latencies(url: str, body: dict, rate: float, seconds: float) -> np.ndarray:
    """Open-loop load: requests are due every 1/rate s and latency counts from when each
    was due, so a slow server can't hide queueing (no coordinated omission)."""
    due = time.perf_counter() + 0.2 + np.arange(int(rate * seconds)) / rate
    latencies = np.full(len(due), np.nan)
    cursor = iter(range(len(due)))
    lock = threading.Lock()

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            time.sleep(max(0.0, due[i] - time.perf_counter()))
            response = session.post(url, json=body, timeout=10)
            latencies[i] = time.perf_counter() - due[i]
            response.raise_for_status()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies * 1000


def start_hello(port: int, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "hello_server.py"), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = EndpointClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while not client.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"hello server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a registry version folder (default: production in var/models)")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    model_dir = args.model_dir or FileModelRepository(ROOT / "var" / "models").resolve("production").path

    rng = np.random.default_rng(0)
    one = {
        "inputs": [
            {"name": INPUT_NAME, "shape": [1, 28, 28], "datatype": "UINT8", "data": rng.integers(0, 256, 784).tolist()}
        ]
    }
    batch = binary_request(rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8))
    version = json.loads((model_dir / "manifest.json").read_text())["version"]
    json_headers = {"Content-Type": "application/json"}
    single_body = json.dumps(one).encode()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        with bind_listener("127.0.0.1", 0) as probe:
            hello_port = probe.getsockname()[1]
        hello = start_hello(hello_port, work / "hello.log")
        plain = LocalEndpoint(work / "serving", port=0, options=ServerOptions(request_log=False))
        # The same server with the request log on, as deployed by default; it takes over the socket.
        logged = LocalEndpoint(work / "serving", port=0, request_log=work / "requests")
        try:
            rounds = {"off": [], "on": []}
            for _ in range(2):  # alternate, so drift in the machine's speed hits both alike
                for mode, local in (("off", plain), ("on", logged)):
                    endpoint = local.deploy(model_dir, version)
                    infer = f"{endpoint.url}/v2/models/mnist/infer"
                    rounds[mode].append(wrk(infer, single_body, json_headers, 8, args.seconds, work))
            hello_single = wrk(
                f"http://127.0.0.1:{hello_port}/v2/models/mnist/infer", single_body, json_headers, 8, args.seconds, work
            )
            batched = wrk(infer, batch["data"], batch["headers"], 2, args.seconds, work)
            at_100 = fixed_rate_latencies(infer, one, rate=100, seconds=args.seconds)
            rss_mb = psutil.Process(endpoint.pid).memory_info().rss / 2**20
        finally:
            hello.kill()
            hello.wait()
            logged.stop()
    with_log = float(np.mean([r["rps"] for r in rounds["on"]]))
    without_log = float(np.mean([r["rps"] for r in rounds["off"]]))
    measured = {
        "single_image_requests_per_s": round(with_log),
        "single_image_requests_per_s_without_log": round(without_log),
        "request_log_throughput_cost": round(1 - with_log / without_log, 3),
        "hello_world_requests_per_s": round(hello_single["rps"]),
        "single_vs_hello_world_ratio": round(with_log / hello_single["rps"], 2),
        "single_image_p99_ms_wrk_8_connections": max(r["p99_ms"] for r in rounds["on"]),
        "batched_images_per_s": round(batched["rps"] * 1000),
        "batched_request_p50_ms_1000_images": batched["p50_ms"],
        "p50_ms_at_100_rps": round(float(np.percentile(at_100, 50)), 2),
        "p99_ms_at_100_rps": round(float(np.percentile(at_100, 99)), 2),
        "server_rss_mb": round(rss_mb),
    }
    ok = publish("serving", table(measured, TARGETS), {"model_dir": str(model_dir), "wrk_seconds": args.seconds})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
