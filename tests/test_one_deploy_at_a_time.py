"""One deploy at a time, on the shipped local instance (deploy/local/dagster.yaml).

Covered:
- the file as Dagster loads it: the QueuedRunCoordinator with the mnist/endpoint limit, which
  holds every deploying job while another deploying run is in progress (tests/run_queue.py);
- end to end, with the real webserver and daemon on that file: two mnist_pipeline runs
  (different seeds, so their models differ) submitted at once through GraphQL. The second is
  seen QUEUED while the first runs and never runs beside it; both succeed, one after the other
  (their start and end times do not overlap); they publish versions 1 and 2; each version's
  manifest names its own run as the trainer of both models, and its model files are byte for
  byte the ones that run exported into its run folder (recorded as ``model_dir`` in the run's
  materializations); a client sending predictions to the endpoint from the first deploy until
  after the second run saw no failed request, version 1 and then only version 2.

- ``dg launch`` (``make run``) runs in process past the queue: started while another delivery
  run is in progress, its run starts at once, never enqueued.

Not covered: the deploys of such in-process runs are serialized only by the deployer's lock
(tests/test_local_endpoint.py), not here. The cluster instance and the Helm values carry the same
limit, checked against Dagster's loader and counter but not with a daemon
(tests/test_dagster_instance_config.py, tests/test_postgres_instance.py, tests/test_helm_values.py).
"""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.run_coordinator import QueuedRunCoordinator
from quick_config import quick_environment, quick_run_config
from run_queue import DELIVERY_LIMIT, check_serializes_delivery
from stack import BIN, FINISHED, ROOT, DagsterStack

from mnist_assets.assets.models import run_model_dir
from mnist_assets.jobs import DELIVERY_TAG
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.registry import FileModelRepository
from resources import DataStore

LOCAL_INSTANCE = ROOT / "deploy" / "local" / "dagster.yaml"
IN_PROGRESS = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}
MODELS = ("classifier", "concept_model")


def test_local_instance_allows_one_delivery_run_at_a_time(tmp_path):
    (tmp_path / "dagster.yaml").write_text(LOCAL_INSTANCE.read_text())
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator) is QueuedRunCoordinator
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits == [DELIVERY_LIMIT]
    check_serializes_delivery(limits)


@pytest.mark.e2e
@pytest.mark.slow
def test_dg_launch_runs_in_process_past_the_queue(tmp_path):
    """What the README says of `make run`: with a delivery run in progress, `dg launch` of
    another starts it at once (it is never enqueued). Its steps then fail on purpose: the
    mirrors point at a folder that does not exist."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE.read_text())
    nowhere = {"mirrors": [(tmp_path / "nowhere").as_uri() + "/"], "retries": 0}
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump({"mnist": nowhere, "notmnist": nowhere}))
    env = {**os.environ, **quick_environment(tmp_path), "DAGSTER_HOME": str(home), "VIRTUAL_ENV": str(BIN.parent)}
    with DagsterInstance.from_config(str(home)) as instance:
        running = instance.add_run(DagsterRun("mnist_pipeline", tags=DELIVERY_TAG, status=DagsterRunStatus.STARTED))
    launch = [BIN / "dg", "launch", "--job", "mnist_pipeline", "-c", tmp_path / "run_config.yaml"]
    subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, timeout=300)
    with DagsterInstance.from_config(str(home)) as instance:
        (launched,) = [run for run in instance.get_runs() if run.run_id != running.run_id]
        events = {e.dagster_event.event_type for e in instance.all_logs(launched.run_id) if e.dagster_event}
    assert launched.tags["mnist/endpoint"] == "mnist" and launched.status == DagsterRunStatus.FAILURE
    assert DagsterEventType.RUN_START in events and DagsterEventType.RUN_ENQUEUED not in events


class Traffic(threading.Thread):
    """Predictions against ``url`` until stopped; every outcome kept as (status, version or error)."""

    def __init__(self, url: str, images: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.url, self.body = f"{url}/v1/models/mnist:predict", {"instances": images.tolist()}
        self.outcomes: list[tuple[int | None, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                response = requests.post(self.url, json=self.body, timeout=10)
                answer = response.json()["model_version"] if response.ok else response.text[:200]
                self.outcomes.append((response.status_code, answer))
            except requests.RequestException as exc:
                self.outcomes.append((None, repr(exc)))
            time.sleep(0.1)


def _tree_digest(folder: Path) -> str:
    """One sha256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _model_dirs(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """The ``model_dir`` each model asset recorded in run ``run_id``."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    found = {}
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if "model_dir" in materialization.metadata:
            found[materialization.asset_key.to_user_string()] = materialization.metadata["model_dir"].value
    return found


@pytest.fixture
def stack(tmp_path, real_mirrors):
    config = quick_run_config(real_mirrors["mnist"], real_mirrors["notmnist"])
    # The order of runs is the subject, not the gates: the second run's models (another seed,
    # one epoch) must not be refused for being a little worse than the first's.
    config["deployment_tests"] |= {
        "min_noisy_flag_rate": 0.0,
        "max_accuracy_drop_points": 100.0,
        "max_detection_drop_points": 100.0,
        "max_false_positive_rise_points": 100.0,
        "max_p99_ratio": 100.0,
    }
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(config))  # what the sensors read
    env = {
        **quick_environment(tmp_path),
        "MNIST_RUN_CONFIG": str(tmp_path / "run_config.yaml"),
        # One tick each at start, then none during the test: only the two runs we submit.
        "MNIST_DRIFT_SENSOR_INTERVAL_S": "3600",
        "MNIST_NEW_DATA_SENSOR_INTERVAL_S": "3600",
    }
    instance = yaml.safe_load(LOCAL_INSTANCE.read_text())
    with DagsterStack(tmp_path / "dagster_home", env, instance=instance) as running:
        try:
            yield running, config, tmp_path
        finally:
            LocalEndpoint(tmp_path / "serving").stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_two_runs_submitted_at_once_deploy_one_after_the_other(stack):
    stack, config, root = stack
    reseeded = copy.deepcopy(config)
    for model in MODELS:
        reseeded[model]["seed"] = 1
    with ThreadPoolExecutor(2) as pool:
        submitted = list(
            pool.map(lambda c: stack.client().submit_job_execution("mnist_pipeline", run_config=c), [config, reseeded])
        )

    digits = DataStore(root=str(root / "data"))
    traffic: Traffic | None = None
    queued_while_running, side_by_side = 0, []
    deadline = time.monotonic() + 1800
    with stack.instance() as instance:
        while time.monotonic() < deadline:
            statuses = [instance.get_run_by_id(run_id).status for run_id in submitted]
            if all(status in IN_PROGRESS for status in statuses):
                side_by_side.append(statuses)
            if {statuses[0], statuses[1]} & IN_PROGRESS and DagsterRunStatus.QUEUED in statuses:
                queued_while_running += 1
            if traffic is None and (endpoint := LocalEndpoint(root / "serving").current()):
                traffic = Traffic(endpoint.url, digits.load_arrays("mnist", ["x_test"])["x_test"][:4])
                traffic.start()
            if all(status in FINISHED for status in statuses):
                break
            time.sleep(0.5)
        time.sleep(2)  # a few more requests to the final version
        if traffic:
            traffic.stopped.set()
            traffic.join(timeout=15)
        records = {run_id: instance.get_run_record_by_id(run_id) for run_id in submitted}
        model_dirs = {run_id: _model_dirs(instance, run_id) for run_id in submitted}

    why = stack.log("daemon")[-3000:]
    assert [r.dagster_run.status for r in records.values()] == [DagsterRunStatus.SUCCESS] * 2, why
    assert all(r.dagster_run.tags["mnist/endpoint"] == "mnist" for r in records.values())
    assert queued_while_running > 0, "never saw one run QUEUED while the other ran"
    assert side_by_side == [], f"both runs in progress at once: {side_by_side[:3]}"
    first, second = sorted(records.values(), key=lambda r: r.start_time)
    assert first.end_time <= second.start_time, "the runs overlapped"
    print(
        f"first run {first.end_time - first.start_time:.0f} s, second {second.end_time - second.start_time:.0f} s, "
        f"second started {second.start_time - first.end_time:.1f} s after the first ended"
    )

    repository = FileModelRepository(root / "models")
    assert repository.versions() == [1, 2]
    by_run = {repository.get(v).manifest["dagster_run_id"]: repository.get(v) for v in (1, 2)}
    assert by_run[first.dagster_run.run_id].version == 1 and by_run[second.dagster_run.run_id].version == 2
    digests = {}
    for run_id, version in by_run.items():
        assert version.manifest["trained_in_run"] == {model: run_id for model in MODELS}
        for model in MODELS:
            exported = run_model_dir(run_id, model)
            assert model_dirs[run_id][f"mnist_{model}"] == exported
            digests[run_id, model] = _tree_digest(version.path / model)
            assert digests[run_id, model] == _tree_digest(root / "data" / exported), f"{model} of version {version}"
    for model in MODELS:
        assert digests[first.dagster_run.run_id, model] != digests[second.dagster_run.run_id, model]
    assert LocalEndpoint(root / "serving").current().version == "2"

    assert traffic is not None, "the endpoint never came up"
    failed = [outcome for outcome in traffic.outcomes if outcome[0] != 200]
    assert failed == [], failed[:5]
    versions = [version for _, version in traffic.outcomes]
    print(f"{len(versions)} requests: {versions.count('1')} answered by version 1, then {versions.count('2')} by 2")
    assert len(versions) > 100
    assert versions == sorted(versions) and versions[-1] == "2", "a request went back to version 1 after the switch"
