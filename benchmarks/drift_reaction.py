"""Benchmark: from the moment production drift crosses the threshold to the moment the
drift sensor's retraining run exists, measured with the real Dagster daemon.

Runs mnist_pipeline once (one epoch per model) in a temporary DAGSTER_HOME, starts the
daemon with the drift sensor at --interval seconds, sends 300 notMNIST images to the
endpoint (the out-of-distribution rate jumps from 0 to 1), and times the run's creation and
the moment the retrained version serves (the endpoint's endpoint.json last written, once the
retraining run has succeeded).

    python benchmarks/drift_reaction.py --mirror ../shared/data [--interval 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from report import publish, table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from quick_config import DRIFT_ON_OOD, quick_environment, quick_run_config  # noqa: E402
from stack import DagsterStack  # noqa: E402

from mnist_delivery.client import EndpointClient  # noqa: E402
from mnist_delivery.local_endpoint import LocalEndpoint  # noqa: E402
from mnist_serving.request_log import read_predictions  # noqa: E402
from resources import DataStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True, help="local mirror folder with mnist/ and notmnist/")
    parser.add_argument("--interval", type=int, default=30, help="drift sensor interval in seconds")
    args = parser.parse_args()
    url = args.mirror.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        work = Path(tmp)
        config = quick_run_config([f"{url}/mnist/"], [f"{url}/notmnist/"])
        config["monitoring"] = DRIFT_ON_OOD
        (work / "run_config.yaml").write_text(yaml.safe_dump(config))
        env = {
            **quick_environment(work),
            "MNIST_RUN_CONFIG": str(work / "run_config.yaml"),
            "MNIST_DRIFT_SENSOR_INTERVAL_S": str(args.interval),
            "MNIST_NEW_DATA_SENSOR_INTERVAL_S": "3600",
        }
        home = work / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        command = [str(Path(sys.executable).parent / "dg"), "launch", "--job", "mnist_pipeline"]
        command += ["-c", str(work / "run_config.yaml")]
        subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "DAGSTER_HOME": str(home)},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with DagsterStack(home, env, webserver=False) as stack:
                time.sleep(args.interval + 5)  # let the sensor tick quietly first
                endpoint = LocalEndpoint(work / "serving").current()
                EndpointClient(endpoint.url).predict(
                    DataStore(root=str(work / "data")).load_arrays("notmnist")["x"][:300]
                )
                while len(read_predictions(work / "serving" / "requests")[0]) < 300:
                    time.sleep(0.05)
                crossed = time.time()  # the logged OOD rate is over the bound from here on
                run = None
                while run is None and time.time() - crossed < 5 * args.interval:
                    with stack.instance() as instance:
                        records = [r for r in instance.get_run_records() if r.dagster_run.tags.get("mnist/trigger")]
                    run = records[0] if records else None
                    time.sleep(0.2)
                if run is None:
                    sys.exit(f"no drift run within {5 * args.interval}s:\n{stack.log('daemon')[-3000:]}")
                reaction = run.create_timestamp.timestamp() - crossed
                stack.wait_for_run(run.dagster_run.run_id)
                new_version = LocalEndpoint(work / "serving").current()
                if new_version is None or new_version.version != "2":
                    sys.exit(f"after the retraining run, {new_version} serves, not version 2")
                # endpoint.json is written when the new version takes the traffic (the commit).
                serving = LocalEndpoint(work / "serving").state_file.stat().st_mtime - crossed
        finally:
            LocalEndpoint(work / "serving").stop()
    measured = {
        "sensor_interval_s": args.interval,
        "drift_to_run_created_s": round(reaction, 1),
        "in_sensor_intervals": round(reaction / args.interval, 2),
        "drift_to_new_version_serving_s": round(serving, 1),
    }
    ok = publish(
        "drift_reaction",
        table(measured, {"in_sensor_intervals": (2.0, "max")}),
        {"tags": json.dumps(run.dagster_run.tags)},
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
