"""Benchmark: requests dropped while the endpoint is redeployed again and again.

Six clients (half opening a connection per request, half reusing keep-alive connections)
send single-image requests while the endpoint swaps between two versions six times;
then the same without the drain step (SIGTERM only), to show what it prevents.

    python benchmarks/redeploy.py [--model-dir A --model-dir B]   (default: var/models/mnist/1 and 2)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from report import publish, table

from mnist_delivery.local_endpoint import LocalEndpoint

ROOT = Path(__file__).resolve().parents[1]
IMAGE = {"instances": np.zeros((1, 784), np.uint8).tolist()}


def hammer(versions: list[Path], drain: bool, redeploys: int = 6, clients: int = 6) -> tuple[int, int]:
    """(requests sent, requests failed) across ``redeploys`` swaps under load."""
    with tempfile.TemporaryDirectory(prefix="bench-redeploy-") as tmp:
        local = LocalEndpoint(Path(tmp), port=0, drain_seconds=2.0 if drain else 0.0, log=lambda _: None)
        if not drain:  # the old behaviour: SIGTERM straight away
            local._stop = lambda endpoint, drain=False, stop=local._stop: stop(endpoint, False)
        endpoint = local.deploy(versions[0], "a")
        stop, results = threading.Event(), []

        def client(session: requests.Session | None) -> None:
            post = session.post if session else requests.post
            while not stop.is_set():
                try:
                    results.append(post(f"{endpoint.url}/v1/models/mnist:predict", json=IMAGE, timeout=10).ok)
                except requests.RequestException:
                    results.append(False)

        threads = [
            threading.Thread(target=client, args=(requests.Session() if i % 2 else None,)) for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        try:
            for k in range(redeploys):
                time.sleep(0.5)
                local.deploy(versions[(k + 1) % len(versions)], "b" if k % 2 == 0 else "a")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            local.stop()
    return len(results), results.count(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, action="append", help="two registry version folders")
    args = parser.parse_args()
    versions = args.model_dir or [ROOT / "var" / "models" / "mnist" / "1", ROOT / "var" / "models" / "mnist" / "2"]
    if len(versions) != 2 or not all((v / "manifest.json").exists() for v in versions):
        sys.exit("need two registry versions: run `make run` twice, or pass --model-dir twice")
    sent, failed = hammer(versions, drain=True)
    sent_plain, failed_plain = hammer(versions, drain=False)
    measured = {
        "requests_during_6_redeploys": sent,
        "failed_requests": failed,
        "requests_without_drain_step": sent_plain,
        "failed_requests_without_drain_step": failed_plain,
    }
    ok = publish("redeploy", table(measured, {"failed_requests": (0, "max")}), {"versions": [str(v) for v in versions]})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
