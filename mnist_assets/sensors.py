"""Sensors that close the loop: retrain on drift or new data, alert on drift and on failure.

Sensors get their resources as parameters, the same ones the runs use. They get no run
config, so they read the run-config file (the ``run_config`` resource: the same
``run_config.yaml`` the main command uses): its ``monitoring`` section sets the drift
thresholds, and the whole file becomes the run config of the runs they request. Their
state lives in Dagster cursors, so a daemon restart neither repeats nor loses work."""

import hashlib
import json
import os
import time
from dataclasses import asdict

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from mnist_assets.assets.monitoring import recent_traffic
from mnist_assets.config import PipelineConfig
from mnist_assets.jobs import mnist_pipeline, mnist_pipeline_k8s
from mnist_ml.datasets import MNIST_FILES, NOTMNIST_ARCHIVE
from mnist_ml.drift import DriftState, drift_reasons, drift_step
from resources import AlertWebhook, DataStore, ModelDeployer, ModelRegistry, RunConfigFile

DRIFT_INTERVAL_S = int(os.environ.get("MNIST_DRIFT_SENSOR_INTERVAL_S", "30"))
NEW_DATA_INTERVAL_S = int(os.environ.get("MNIST_NEW_DATA_SENSOR_INTERVAL_S", "300"))


def retraining_job(deployer: ModelDeployer) -> str:
    """The job a retraining run uses. On Kubernetes it is mnist_pipeline_k8s, a pod per step,
    so that only the delivery steps run as the service account allowed to deploy
    (deploy/k8s/rbac.yaml); mnist_pipeline would deploy from the run pod, which may not."""
    return mnist_pipeline_k8s.name if deployer.backend == "kubernetes" else mnist_pipeline.name


@sensor(
    jobs=[mnist_pipeline, mnist_pipeline_k8s],
    minimum_interval_seconds=DRIFT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests one retraining run per drift episode when, over the monitoring window, the "
    "out-of-distribution rate, the predicted-class PSI or the label-free accuracy estimate's drop "
    "crosses its error bound (with a minimum volume and a cooldown).",
)
def drift_sensor(
    context: SensorEvaluationContext,
    data_store: DataStore,
    deployer: ModelDeployer,
    registry: ModelRegistry,
    run_config: RunConfigFile,
):
    raw = run_config.load()
    monitoring = PipelineConfig.model_validate(raw).monitoring
    if not data_store.path("processed", "mnist.npz").exists():
        return SkipReason("no training data yet: materialize mnist_dataset first")
    now = time.time()
    traffic = recent_traffic(monitoring, data_store, deployer, registry, now)
    summary = traffic.summary
    reasons = drift_reasons(summary, monitoring.bounds())
    state = DriftState(**json.loads(context.cursor)) if context.cursor else DriftState()
    state, action = drift_step(state, bool(reasons), now, monitoring.cooldown_minutes * 60)
    context.update_cursor(json.dumps(asdict(state)))
    estimate = summary.estimated_accuracy
    numbers = f"{summary.images} images, OOD rate {summary.ood_rate:.3f}, class PSI {summary.psi:.3f}, " + (
        f"estimated accuracy {estimate:.3f} (held-out {summary.reference_accuracy:.3f})"
        if estimate is not None
        else "no accuracy estimate"
    )
    if action != "run":
        return SkipReason(f"{action}: {numbers}")
    context.log.info(f"drift ({'; '.join(reasons)}): requesting a retraining run")
    return RunRequest(
        job_name=retraining_job(deployer),
        run_key=f"drift-{state.episode:.0f}",
        run_config=raw,
        tags={
            "mnist/trigger": "drift",
            "mnist/reason": "; ".join(reasons),
            "mnist/images": str(summary.images),
            "mnist/ood_rate": f"{summary.ood_rate:.4f}",
            "mnist/class_psi": f"{summary.psi:.4f}",
            "mnist/estimated_accuracy": "unknown" if estimate is None else f"{estimate:.4f}",
            "mnist/serving_version": traffic.version or "none",
        },
    )


@run_status_sensor(
    run_status=DagsterRunStatus.QUEUED,
    monitored_jobs=[mnist_pipeline, mnist_pipeline_k8s],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=DRIFT_INTERVAL_S,
    description="Posts each drift episode to the alert webhook ($MNIST_ALERT_WEBHOOK_URL) as soon as the "
    "retraining run the drift sensor requested is queued: what crossed, by how much, the run and its link.",
)
def drift_alert(context: RunStatusSensorContext, alert_webhook: AlertWebhook):
    run = context.dagster_run
    if run.tags.get("mnist/trigger") != "drift":
        return SkipReason(f"run {run.run_id} is not a drift retraining run")
    link = alert_webhook.run_url(run.run_id)
    reasons = run.tags["mnist/reason"]
    message = f"Production drift: {reasons}. Requested retraining run {run.run_id} of {run.job_name}: {link}"
    numbers = {key.removeprefix("mnist/"): value for key, value in run.tags.items() if key.startswith("mnist/")}
    alert_webhook.send(
        message, {"run_id": run.run_id, "job": run.job_name, "link": link, "drift": numbers}, context.log
    )
    return None


def data_fingerprints(
    config: PipelineConfig, data_store: DataStore, deployer: ModelDeployer, previous: dict[str, str]
) -> dict[str, str]:
    """What says the data changed: each file at the first mirror that answers, the incoming
    folder, and the feedback log. An unreachable mirror keeps its previous fingerprint."""
    sources = {name: config.mnist for name in MNIST_FILES} | {NOTMNIST_ARCHIVE: config.notmnist}
    found = {}
    for name, data in sources.items():
        token = data_store.mirror_fingerprint(name, data.mirrors, data.timeout_s)
        found[name] = token or previous.get(name, "unreachable")
    found["incoming"] = data_store.incoming_fingerprint()
    found["feedback"] = deployer.feedback_fingerprint()
    return found


@sensor(
    jobs=[mnist_pipeline, mnist_pipeline_k8s],
    minimum_interval_seconds=NEW_DATA_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Reruns the datasets and everything downstream when a mirror's files change, labelled "
    "digits land in the data store's incoming/ folder, or labels arrive through the feedback route.",
)
def new_data_sensor(
    context: SensorEvaluationContext, data_store: DataStore, deployer: ModelDeployer, run_config: RunConfigFile
):
    raw = run_config.load()
    previous = json.loads(context.cursor) if context.cursor else None
    current = data_fingerprints(PipelineConfig.model_validate(raw), data_store, deployer, previous or {})
    context.update_cursor(json.dumps(current, sort_keys=True))
    if previous is None:
        return SkipReason("recorded the first fingerprints of the data; changes from now on trigger a run")
    changed = sorted(key for key in current if current[key] != previous.get(key))
    if not changed:
        return SkipReason("no change in the mirrors, incoming/ or the feedback log")
    digest = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
    return RunRequest(
        job_name=retraining_job(deployer),
        run_key=f"new-data-{digest}",
        run_config=raw,
        tags={"mnist/trigger": "new-data", "mnist/changed": ", ".join(changed)},
    )


@run_failure_sensor(
    default_status=DefaultSensorStatus.RUNNING,
    description="Posts failed runs to the alert webhook ($MNIST_ALERT_WEBHOOK_URL), or logs that none is set.",
)
def failure_alert(context: RunFailureSensorContext, alert_webhook: AlertWebhook):
    run = context.dagster_run
    message = f"Dagster run {run.run_id} of {run.job_name} failed: {context.failure_event.message}"
    alert_webhook.send(message, {"run_id": run.run_id, "job": run.job_name, "tags": dict(run.tags)}, context.log)
