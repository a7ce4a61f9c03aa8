"""Runs launched through dagster-k8s's ``K8sRunLauncher``, on the instance we ship
(deploy/dagster.yaml: Postgres storage, run monitoring), really execute, report success, and
survive their worker being killed.

The launcher talks over real HTTP to the kmock API emulator (``tests/k8s_emulator/``); the
simulated node runs the Job it creates (``dagster api execute_run ...``) as a local process
and writes the Job and Pod status back as the Job controller and kubelet would. Runs, events
and sensor state live in a real PostgreSQL server (``tests/postgres_server.py``) that the
test process (standing in for the webserver), the daemon and the "pod" all open, each from
the same deploy/dagster.yaml; the pod gets the connection from the ``mnist-env`` ConfigMap
and the password from the ``mnist-secrets`` Secret, as docs/kubernetes.md tells users to
create them. The run trains both models (one epoch each) on the real data.

Covered: the launcher config of deploy/dagster.yaml, the Job it builds (namespace, image,
service account, env, envFrom, labels, args) and its validity against the 1.30 schema, the
run ending SUCCESS with its events in Postgres, ``check_run_worker_health`` and
``get_run_worker_debug_info`` reading the Job, its Pod and the Pod's log back; a run whose
pod is killed (SIGKILL to every process of its container) is marked failed by the run
monitor of a real ``dagster-daemon``, keeps every event written before the kill, and a rerun
of the same job on the same data succeeds.

Not covered: a real API server (admission, defaulting, RBAC, quotas), scheduling, the image
(the container is this venv, from the repo's working directory), volumes (paths under /data
point at a temp folder instead), the ``instance_config_map`` (created, but dagster-k8s 0.29
neither mounts nor reads it), resuming a run in a new pod (the shipped instance does not),
termination from the UI, and the ``mnist_pipeline`` job (deployment needs a long-lived
endpoint, which Kubernetes would run as a Deployment).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster_k8s.job import get_job_name_from_run_id
from instance_config import deployed_home, deployed_instance, environment
from k8s_emulator import PodRun, RunningEmulator, SimulatedNode, running_emulator
from postgres_server import PASSWORD, Postgres

from mnist_assets.assets.models import run_model_dir

pytestmark = [pytest.mark.k8s, pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "mnist_assets"
JOB = "mnist_training"
RUN_TIMEOUT_S = 300  # a failure bound; the run takes about a minute here
MONITOR_POLL_S = 1  # the shipped instance polls every minute; the test cannot wait that long


@dataclass
class Cluster:
    """The emulated cluster, its node, the Postgres-backed instance and the code location,
    shared by this module's runs."""

    tmp_path: Path
    home: Path
    env: dict[str, str]  # the DAGSTER_PG_* connection and DAGSTER_HOME, as the daemon has them
    launcher: dict[str, Any]  # deploy/dagster.yaml's run_launcher config, as used here
    emulator: RunningEmulator
    node: SimulatedNode
    instance: DagsterInstance
    workspace: WorkspaceRequestContext
    run_config: dict


@dataclass
class Launched:
    """Everything observed while the run ran; by the time tests read it, all has stopped."""

    home: Path
    data_root: Path
    launcher: dict[str, Any]
    run: DagsterRun
    job_name: str
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    pod_runs: list[PodRun]
    health: Any
    debug_info: str
    messages: list[str]  # the run's event log


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(merged.get(key), dict) else value
    return merged


def _run_config(mirrors: dict[str, list[str]]) -> dict:
    """run_config.yaml with the local mirror and one epoch per model."""
    quick = {"epochs": 1}
    override = {
        "mnist": {"mirrors": mirrors["mnist"]},
        "notmnist": {"mirrors": mirrors["notmnist"]},
        "classifier": {**quick, "min_test_accuracy": 0.9},
        "concept_model": {**quick, "min_detection_rate": 0.5, "max_false_positive_rate": 0.05},
    }
    return _deep_merge(yaml.safe_load((ROOT / "run_config.yaml").read_text()), override)


def _settings(tmp_path: Path) -> dict[str, str]:
    """deploy/k8s/settings.yaml (the mnist-settings ConfigMap), with the volumes' mount points
    (/data, /models) moved to temp folders: the node does not mount volumes."""
    shipped = yaml.safe_load((ROOT / "deploy" / "k8s" / "settings.yaml").read_text())["data"]
    local = {"/data": str(tmp_path / "data"), "/models": str(tmp_path / "models")}
    return {name: next((value.replace(k, v, 1) for k, v in local.items() if value.startswith(k)), value)
            for name, value in shipped.items()}  # fmt: skip


def _instance(home: Path, tmp_path: Path, kubeconfig: Path) -> dict:
    """deploy/dagster.yaml, pointed at the emulator. ``dagster_home`` sets the Job's
    DAGSTER_HOME to this same folder (not ``env_vars: [DAGSTER_HOME=...]``: the launcher
    always adds its own entry, so that would give two); /data is a volume in a pod, a temp
    folder here; the run monitor polls every second."""
    instance = deployed_instance(kubeconfig, dagster_home=str(home), env_vars=["TF_CPP_MIN_LOG_LEVEL=2"])
    instance["local_artifact_storage"]["config"]["base_dir"] = str(tmp_path / "artifacts")
    instance["run_monitoring"]["poll_interval_seconds"] = MONITOR_POLL_S
    return instance


def _seed_namespace(
    api: kubernetes.client.ApiClient, launcher: dict, dagster_yaml: str, env: dict[str, str], settings: dict[str, str]
) -> None:
    """What the user creates before the first run (docs/kubernetes.md): the service account,
    the instance ConfigMap, ``mnist-settings``, ``mnist-env`` with the database's address and
    ``mnist-secrets`` with its password."""
    namespace = launcher["job_namespace"]
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": launcher["service_account_name"]}})
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": launcher["instance_config_map"]}, "data": {"dagster.yaml": dagster_yaml}},
    )
    settings_map, env_map = launcher["env_config_maps"]
    core.create_namespaced_config_map(namespace, {"metadata": {"name": settings_map}, "data": settings})
    connection = {k: v for k, v in env.items() if k.startswith("DAGSTER_PG_") and k != "DAGSTER_PG_PASSWORD"}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": env_map}, "data": {**connection, "MNIST_DEPLOYMENT": "k8s-emulator"}}
    )
    (secret,) = launcher["env_secrets"]
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": secret}, "data": {"DAGSTER_PG_PASSWORD": base64.b64encode(PASSWORD.encode()).decode()}},
    )


@contextmanager
def _workspace(instance: DagsterInstance) -> Iterator[WorkspaceRequestContext]:
    """The code location as ``dagster dev`` loads it: a gRPC code server process."""
    target = ModuleTarget(
        module_name="mnist_assets.definitions", attribute=None, working_directory=str(ROOT), location_name=LOCATION
    )
    with WorkspaceProcessContext(instance, target) as process_context:
        yield process_context.create_request_context()


def _create_run(cluster: Cluster) -> DagsterRun:
    """A run with the remote origin the launcher needs, as the webserver would create it."""
    from mnist_assets.definitions import defs

    location = cluster.workspace.get_code_location(LOCATION)
    remote_job = location.get_repository("__repository__").get_full_job(JOB)
    return cluster.instance.create_run_for_job(
        job_def=defs.resolve_job_def(JOB),
        run_config=cluster.run_config,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
    )


def _wait_for_run(cluster: Cluster, run_id: str, timeout: float = RUN_TIMEOUT_S) -> DagsterRun:
    """Until the node is done with the Job and the run is finished; fails fast if the run
    ends without the node being given a Job (e.g. the launch failed)."""
    job_name = get_job_name_from_run_id(run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = cluster.instance.get_run_by_id(run_id)
        if (
            run is not None
            and run.is_finished
            and (cluster.node.finished(job_name) or not cluster.node.runs_of(job_name))
        ):
            return run
        time.sleep(0.5)
    output = "\n".join(r.output[-3000:] for r in cluster.node.runs_of(job_name))
    raise TimeoutError(f"run {run_id} did not finish in {timeout} s; worker output:\n{output}")


def _node_env() -> dict[str, str]:
    """Stands in for the image's environment: this venv first on PATH (``dagster`` is its
    console script), and neither a DAGSTER_HOME nor a database connection of the test
    runner's own: the pod gets those from the Job."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("DAGSTER_PG_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@contextmanager
def _kubernetes_default_config() -> Iterator[None]:
    """The launcher loads its kubeconfig into the client's process-wide default: restore it."""
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        yield
    finally:
        kubernetes.client.Configuration.set_default(saved)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, real_mirrors: dict[str, list[str]], postgres_server: Postgres
) -> Iterator[Cluster]:
    tmp_path = tmp_path_factory.mktemp("k8s_launch")
    with running_emulator() as emulator, _kubernetes_default_config(), emulator.api_client() as api:
        instance_config = _instance(tmp_path / "dagster_home", tmp_path, emulator.kubeconfig(tmp_path / "kubeconfig"))
        home, env = deployed_home(tmp_path, postgres_server, "k8s_launcher", instance_config)
        launcher = instance_config["run_launcher"]["config"]
        _seed_namespace(api, launcher, (home / "dagster.yaml").read_text(), env, _settings(tmp_path))
        node = SimulatedNode(
            emulator, launcher["job_namespace"], workdir=ROOT, log_dir=tmp_path / "pods", base_env=_node_env()
        )
        with environment(env), DagsterInstance.from_config(str(home)) as instance, node, _workspace(instance) as ws:
            yield Cluster(tmp_path, home, env, launcher, emulator, node, instance, ws, _run_config(real_mirrors))
        assert not node.errors, node.errors


@pytest.fixture(scope="module")
def launched(cluster: Cluster) -> Launched:
    """Launch one ``mnist_training`` run through the K8sRunLauncher and watch it finish."""
    instance, namespace = cluster.instance, cluster.launcher["job_namespace"]
    run = _create_run(cluster)
    instance.launch_run(run.run_id, cluster.workspace)  # submit_run would only queue it for the daemon
    finished = _wait_for_run(cluster, run.run_id)
    job_name = get_job_name_from_run_id(run.run_id)
    return Launched(
        home=cluster.home,
        data_root=cluster.tmp_path / "data",
        launcher=cluster.launcher,
        run=finished,
        job_name=job_name,
        jobs=[j for j in cluster.emulator.objects("batch/v1/jobs", namespace) if j["metadata"]["name"] == job_name],
        pods=[
            p for p in cluster.emulator.objects("v1/pods", namespace) if p["metadata"]["labels"]["job-name"] == job_name
        ],
        pod_runs=cluster.node.runs_of(job_name),
        health=instance.run_launcher.check_run_worker_health(finished),
        debug_info=instance.run_launcher.get_run_worker_debug_info(finished) or "",
        messages=[entry.message for entry in instance.all_logs(run.run_id)],
    )


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_launcher_creates_the_configured_job(launched: Launched) -> None:
    launcher = launched.launcher
    (job,) = launched.jobs
    assert job["metadata"]["name"] == launched.job_name
    assert job["metadata"]["namespace"] == launcher["job_namespace"]
    assert job["metadata"]["labels"]["dagster/run-id"] == launched.run.run_id
    pod_spec, container = job["spec"]["template"]["spec"], _container(job)
    assert pod_spec["serviceAccountName"] == launcher["service_account_name"]
    assert container["image"] == launcher["job_image"]
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert [value for name, value in env if name == "DAGSTER_HOME"] == [str(launched.home)]
    assert ("DAGSTER_RUN_JOB_NAME", JOB) in env
    assert ("TF_CPP_MIN_LOG_LEVEL", "2") in env
    for config_map in launcher["env_config_maps"]:
        assert {"configMapRef": {"name": config_map}} in container["envFrom"]
    for secret in launcher["env_secrets"]:
        assert {"secretRef": {"name": secret}} in container["envFrom"]


def test_node_ran_the_job_and_the_run_succeeded(launched: Launched) -> None:
    (pod_run,) = launched.pod_runs
    assert pod_run.job == launched.job_name
    assert pod_run.returncode == 0, pod_run.output[-3000:]
    assert pod_run.argv[:3] == ["dagster", "api", "execute_run"]
    assert pod_run.env["DAGSTER_HOME"] == str(launched.home)
    assert pod_run.env["MNIST_DEPLOYMENT"] == "k8s-emulator"  # from the envFrom config map
    assert pod_run.env["DAGSTER_PG_PASSWORD"]  # from the envFrom secret: the pod opened Postgres
    why = "\n".join([pod_run.output[-2000:], *launched.messages[-20:]])
    assert launched.run.status == DagsterRunStatus.SUCCESS, why
    assert "[K8sRunLauncher] Kubernetes run worker job created" in launched.messages
    # The run executed in the process the node started for the Job, not in this one.
    assert f"Started process for run (pid: {pod_run.pid})." in launched.messages

    (job,) = launched.jobs
    assert job["status"]["succeeded"] == 1
    assert [c["type"] for c in job["status"]["conditions"]] == ["Complete"]
    (pod,) = launched.pods
    assert pod["metadata"]["labels"]["job-name"] == launched.job_name
    assert pod["status"]["phase"] == "Succeeded"

    assert launched.health.status == WorkerStatus.SUCCESS, launched.health.msg
    assert "Pod status: Succeeded" in launched.debug_info
    assert "Last 25 log lines" in launched.debug_info  # the pod's log, served by the emulator
    for model in ("classifier", "concept_model"):
        assert (launched.data_root / run_model_dir(launched.run.run_id, model) / "saved_model.pb").is_file()


def test_launched_job_is_a_valid_kubernetes_job(launched: Launched) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed: the Job's schema is unchecked"
    )
    (job,) = launched.jobs
    kubernetes_validate.validate(job, "1.30", strict=True)


def _events(instance: DagsterInstance, run_id: str) -> list[tuple[int, str]]:
    return [(record.storage_id, record.event_log_entry.message) for record in _records(instance, run_id)]


def _records(instance: DagsterInstance, run_id: str) -> list:
    return list(instance.get_records_for_run(run_id, limit=100_000).records)


@contextmanager
def _run_monitor(cluster: Cluster) -> Iterator[subprocess.Popen]:
    """A real ``dagster-daemon`` on the same instance. Its workspace is empty, so of its
    daemons only the run monitor has anything to do (no sensor can launch runs here)."""
    workspace = cluster.tmp_path / "empty_workspace.yaml"
    workspace.write_text("load_from: []\n")
    log = (cluster.tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [BIN / "dagster-daemon", "run", "-w", workspace],
        cwd=ROOT,
        env={**os.environ, **cluster.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield daemon
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        log.close()


def _wait(condition, timeout: float, what: str, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s\n{diagnostics()}")
        time.sleep(0.3)


def test_killed_run_is_failed_by_the_run_monitor_and_a_rerun_succeeds(cluster: Cluster, launched: Launched) -> None:
    instance = cluster.instance
    with _run_monitor(cluster) as daemon:
        run = _create_run(cluster)
        instance.launch_run(run.run_id, cluster.workspace)
        job_name = get_job_name_from_run_id(run.run_id)

        def training_started() -> bool:
            return any(
                "STEP_START" in str(r.event_log_entry.dagster_event_type)
                and r.event_log_entry.step_key == "mnist_classifier"
                for r in _records(instance, run.run_id)
            )

        def daemon_log() -> str:
            return (cluster.tmp_path / "daemon.log").read_text(errors="replace")[-3000:]

        _wait(training_started, RUN_TIMEOUT_S, "training did not start", daemon_log)
        before_kill = _events(instance, run.run_id)
        (pod_run,) = cluster.node.runs_of(job_name)
        os.killpg(pod_run.pid, signal.SIGKILL)  # the container dies: the run worker and its step processes

        _wait(
            lambda: instance.get_run_by_id(run.run_id).is_finished,
            60,
            "the run monitor did not end the run",
            daemon_log,
        )
        assert daemon.poll() is None, daemon_log()
    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    after = _events(instance, run.run_id)
    assert after[: len(before_kill)] == before_kill, "events written before the kill were lost or changed"
    assert any("Detected run worker status" in message for _, message in after[len(before_kill) :]), after[-5:]
    assert pod_run.returncode == -signal.SIGKILL

    rerun = _create_run(cluster)
    instance.launch_run(rerun.run_id, cluster.workspace)
    finished = _wait_for_run(cluster, rerun.run_id)
    assert finished.status == DagsterRunStatus.SUCCESS, cluster.node.runs_of(get_job_name_from_run_id(rerun.run_id))[
        -1
    ].output[-3000:]
