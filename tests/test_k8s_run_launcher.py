"""A run launched through dagster-k8s's ``K8sRunLauncher`` really executes and reports success.

The launcher talks over real HTTP to the kmock API emulator (``tests/k8s_emulator.py``); the
simulated node runs the Job it creates (``dagster api execute_run ...``) as a local process
and writes the Job and Pod status back as the Job controller and kubelet would. The run
trains both models (one epoch each) on the real data from the local mirror.

Covered: the launcher's dagster.yaml config, the Job it builds (namespace, image, service
account, env, envFrom, labels, args) and validity against the 1.30 schema when
``kubernetes-validate`` is installed, the run worker sharing the instance through the same
DAGSTER_HOME, the run ending SUCCESS, ``check_run_worker_health`` and
``get_run_worker_debug_info`` reading the Job, its Pod and the Pod's log back.

Not covered: a real API server (admission, defaulting, RBAC, quotas), scheduling, the image
(the container is this venv, from the repo's working directory), volumes, Postgres storage
(there is none here: runs and events stay in SQLite under the shared temporary
DAGSTER_HOME, which only works because "pod" and launcher share one disk), the
``instance_config_map`` (created, but dagster-k8s 0.29 neither mounts nor reads it), run
monitoring, retries of a failed worker, termination, and the ``mnist_pipeline`` job
(deployment needs a long-lived endpoint, which Kubernetes would run as a Deployment).
"""

from __future__ import annotations

import os
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
from k8s_emulator import PodRun, SimulatedNode, running_emulator

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "mnist"
IMAGE = "mnist-mlops:0.1.0"
SERVICE_ACCOUNT = "mnist-dagster"
INSTANCE_CONFIG_MAP = "dagster-instance"
ENV_CONFIG_MAP = "mnist-env"  # exercises envFrom: the node resolves it from the emulator
LOCATION = "mnist_assets"
JOB = "mnist_training"
RUN_TIMEOUT_S = 300  # a failure bound; the run takes about a minute here


@dataclass
class Launched:
    """Everything observed while the run ran; by the time tests read it, all has stopped."""

    home: Path
    data_root: Path
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


def _run_config(tmp_path: Path, mirrors: dict[str, list[str]]) -> dict:
    """run_config.yaml with the local mirror, one epoch per model and folders under tmp."""
    quick = {"epochs": 1}
    override = {
        "data_store": {"root": str(tmp_path / "data")},
        "registry": {"root": str(tmp_path / "models")},
        "serving": {"state_dir": str(tmp_path / "serving")},
        "mnist": {"mirrors": mirrors["mnist"]},
        "notmnist": {"mirrors": mirrors["notmnist"]},
        "classifier": {**quick, "min_test_accuracy": 0.9},
        "concept_model": {**quick, "min_detection_rate": 0.5, "max_false_positive_rate": 0.05},
    }
    return _deep_merge(yaml.safe_load((ROOT / "run_config.yaml").read_text()), override)


def _instance_yaml(home: Path, kubeconfig: Path) -> str:
    """The launcher config. ``dagster_home`` sets the Job's DAGSTER_HOME to this same
    folder, so the worker finds the run; storage stays the default SQLite in it (no
    Postgres here). Not ``env_vars: [DAGSTER_HOME=...]``: the launcher always adds its own
    DAGSTER_HOME entry (default /opt/dagster/dagster_home), so that would give two."""
    launcher = {
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "job_namespace": NAMESPACE,
        "service_account_name": SERVICE_ACCOUNT,
        "job_image": IMAGE,
        "instance_config_map": INSTANCE_CONFIG_MAP,
        "dagster_home": str(home),
        "env_vars": ["TF_CPP_MIN_LOG_LEVEL=2"],
        "env_config_maps": [ENV_CONFIG_MAP],
    }
    config = {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher},
        "telemetry": {"enabled": False},
    }
    return yaml.safe_dump(config)


def _seed_namespace(api: kubernetes.client.ApiClient, dagster_yaml: str) -> None:
    """What a Helm chart would have created before the launcher runs."""
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": SERVICE_ACCOUNT}})
    core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": INSTANCE_CONFIG_MAP}, "data": {"dagster.yaml": dagster_yaml}}
    )
    core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": ENV_CONFIG_MAP}, "data": {"MNIST_DEPLOYMENT": "k8s-emulator"}}
    )


@contextmanager
def _workspace(instance: DagsterInstance) -> Iterator[WorkspaceRequestContext]:
    """The code location as ``dagster dev`` loads it: a gRPC code server process."""
    target = ModuleTarget(
        module_name="mnist_assets.definitions", attribute=None, working_directory=str(ROOT), location_name=LOCATION
    )
    with WorkspaceProcessContext(instance, target) as process_context:
        yield process_context.create_request_context()


def _create_run(instance: DagsterInstance, workspace: WorkspaceRequestContext, run_config: dict) -> DagsterRun:
    """A run with the remote origin the launcher needs, as the webserver would create it."""
    from mnist_assets.definitions import defs

    remote_job = workspace.get_code_location(LOCATION).get_repository("__repository__").get_full_job(JOB)
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def(JOB),
        run_config=run_config,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
    )


def _wait_for_run(
    instance: DagsterInstance, node: SimulatedNode, run_id: str, job_name: str, timeout: float
) -> DagsterRun:
    """Until the node is done with the Job and the run is finished; fails fast if the run
    ends without the node being given a Job (e.g. the launch failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished and (node.finished(job_name) or not node.runs_of(job_name)):
            return run
        time.sleep(0.5)
    output = "\n".join(r.output[-3000:] for r in node.runs_of(job_name))
    raise TimeoutError(f"run {run_id} did not finish in {timeout} s; worker output:\n{output}")


def _node_env() -> dict[str, str]:
    """Stands in for the image's environment: this venv first on PATH (``dagster`` is its
    console script), and no DAGSTER_HOME of the test runner's own."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
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
def launched(tmp_path_factory: pytest.TempPathFactory, real_mirrors: dict[str, list[str]]) -> Launched:
    """Launch one ``mnist_training`` run through the K8sRunLauncher and watch it finish."""
    tmp_path = tmp_path_factory.mktemp("k8s_launch")
    home = tmp_path / "dagster_home"
    home.mkdir()
    with running_emulator() as cluster, _kubernetes_default_config(), cluster.api_client() as api:
        dagster_yaml = _instance_yaml(home, cluster.kubeconfig(tmp_path / "kubeconfig"))
        (home / "dagster.yaml").write_text(dagster_yaml)
        _seed_namespace(api, dagster_yaml)
        node = SimulatedNode(cluster, NAMESPACE, workdir=ROOT, log_dir=tmp_path / "pods", base_env=_node_env())
        with DagsterInstance.from_config(str(home)) as instance, node, _workspace(instance) as workspace:
            run = _create_run(instance, workspace, _run_config(tmp_path, real_mirrors))
            instance.launch_run(run.run_id, workspace)  # submit_run would only queue it for the daemon
            job_name = get_job_name_from_run_id(run.run_id)
            finished = _wait_for_run(instance, node, run.run_id, job_name, RUN_TIMEOUT_S)
            health = instance.run_launcher.check_run_worker_health(finished)
            debug_info = instance.run_launcher.get_run_worker_debug_info(finished) or ""
            jobs, pods = cluster.objects("batch/v1/jobs", NAMESPACE), cluster.objects("v1/pods", NAMESPACE)
            messages = [entry.message for entry in instance.all_logs(run.run_id)]
        assert not node.errors, node.errors
    return Launched(home, tmp_path / "data", finished, job_name, jobs, pods, node.runs, health, debug_info, messages)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_launcher_creates_the_configured_job(launched: Launched) -> None:
    (job,) = launched.jobs
    assert job["metadata"]["name"] == launched.job_name
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["metadata"]["labels"]["dagster/run-id"] == launched.run.run_id
    pod_spec, container = job["spec"]["template"]["spec"], _container(job)
    assert pod_spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert container["image"] == IMAGE
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert [value for name, value in env if name == "DAGSTER_HOME"] == [str(launched.home)]
    assert ("DAGSTER_RUN_JOB_NAME", JOB) in env
    assert ("TF_CPP_MIN_LOG_LEVEL", "2") in env
    assert {"configMapRef": {"name": ENV_CONFIG_MAP}} in container["envFrom"]


def test_node_ran_the_job_and_the_run_succeeded(launched: Launched) -> None:
    (pod_run,) = launched.pod_runs
    assert pod_run.job == launched.job_name
    assert pod_run.returncode == 0, pod_run.output[-3000:]
    assert pod_run.argv[:3] == ["dagster", "api", "execute_run"]
    assert pod_run.env["DAGSTER_HOME"] == str(launched.home)
    assert pod_run.env["MNIST_DEPLOYMENT"] == "k8s-emulator"  # from the envFrom config map
    assert launched.run.status == DagsterRunStatus.SUCCESS, pod_run.output[-3000:]
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
        assert (launched.data_root / "models" / model / "saved_model.pb").is_file()


def test_launched_job_is_a_valid_kubernetes_job(launched: Launched) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed: the Job's schema is unchecked"
    )
    (job,) = launched.jobs
    kubernetes_validate.validate(job, "1.30", strict=True)
