"""Monitoring: the production_monitoring and production_labels assets (with the drift checks'
levels), and the sensors ticked with Dagster's test helpers (drift, new data, the drift and
failure alerts), against a real request log written by a real server
(tiny models), real files and a real webhook receiver on 127.0.0.1.

Not covered here: the daemon scheduling ticks and launching the requested runs (see
test_ui_daemon.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    RunRequest,
    SkipReason,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    materialize,
)
from PIL import Image

from mnist_assets.assets import production_labels, production_monitoring
from mnist_assets.sensors import drift_alert, drift_sensor, failure_alert, new_data_sensor
from mnist_delivery.client import EndpointClient
from mnist_delivery.traffic import feedback_labels, most_out_of_distribution, relabelled_inputs
from mnist_serving.request_log import FeedbackLog, RequestLog, read_columns, read_feedback, read_predictions
from resources import AlertWebhook, DataStore, ModelDeployer, ModelRegistry, RunConfigFile

pytestmark = pytest.mark.slow

GRAY = np.full((1, 28, 28), 128, np.uint8)  # the tiny autoencoder reconstructs it well
BLACK = np.zeros((1, 28, 28), np.uint8)  # and this badly: flagged


@pytest.fixture
def world(tmp_path, monkeypatch, tiny_versions):
    """A run-config file, training labels, a mirror folder and a running endpoint that logs."""
    (tmp_path / "data" / "processed").mkdir(parents=True)
    np.savez(tmp_path / "data" / "processed" / "mnist.npz", y_train=np.repeat(np.arange(10), 10))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "notMNIST_small.tar.gz",
    ):
        (mirror / name).write_bytes(b"v1")
    config = {
        "mnist": {"mirrors": [mirror.as_uri()]},
        "notmnist": {"mirrors": ["http://127.0.0.1:9/", mirror.as_uri()]},
        "monitoring": {
            "window_minutes": 10,
            "min_images": 20,
            "max_ood_rate": 0.5,
            "max_class_psi": 1000,
            "cooldown_minutes": 30,
        },
    }
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MNIST_SERVER_INPUT_SAMPLE_RATE", "1.0")  # every input kept in the log
    monkeypatch.setenv("MNIST_FEEDBACK_TOKEN", "monitoring-test-token")  # the server takes labels
    deployer = ModelDeployer(port=0, state_dir=str(tmp_path / "serving"))
    repository, (v1, _) = tiny_versions
    resources = {
        "data_store": DataStore(root=str(tmp_path / "data")),
        "deployer": deployer,
        "registry": ModelRegistry(root=str(repository.root), model_name=repository.model_name),
        "run_config": RunConfigFile(path=str(tmp_path / "run_config.yaml")),
    }
    endpoint = deployer.deploy(v1.path, str(v1.version))
    try:
        client = EndpointClient(endpoint.url)
        client.session.headers["Authorization"] = "Bearer monitoring-test-token"  # for the feedback route
        yield tmp_path, mirror, client, deployer, resources
    finally:
        deployer.stop()


def _send(client: EndpointClient, image: np.ndarray, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = client.predict_json(image)
        ids.append(response.json()["id"])
    return ids


def _tick(world, sensor, cursor=None):
    """One evaluation, with the resources the code location gives its sensors."""
    context = build_sensor_context(cursor=cursor, instance=DagsterInstance.ephemeral(), resources=world[4])
    result = sensor(context)
    return result, context.cursor


def _logged(world, n: int) -> None:
    """Wait until the server's log writer has flushed ``n`` predictions."""
    deadline = time.monotonic() + 10
    while len(read_columns(world[3].request_log_dir)[0]) < n and time.monotonic() < deadline:
        time.sleep(0.2)


def test_drift_sensor_one_run_per_episode_and_restart_safe(world):
    client = world[2]
    assert client.predict_json(GRAY).json()["outputs"][3]["data"] == [False]
    assert client.predict_json(BLACK).json()["outputs"][3]["data"] == [True]
    _send(client, GRAY, 28)  # 29 clean, 1 flagged so far
    _logged(world, 30)
    result, cursor = _tick(world, drift_sensor)
    assert isinstance(result, SkipReason) and result.skip_message.startswith("quiet: 30 images")

    _send(client, BLACK, 60)
    _logged(world, 90)
    result, cursor = _tick(world, drift_sensor, cursor)
    assert isinstance(result, RunRequest)
    assert result.run_key.startswith("drift-")
    assert result.tags["mnist/trigger"] == "drift"
    assert result.tags["mnist/reason"] == "out-of-distribution rate 0.678 > 0.5 (by 0.178)"
    assert result.tags["mnist/serving_version"] == "1"
    assert result.tags["mnist/estimated_accuracy"] == "unknown", "the tiny versions have no calibration"
    assert result.tags["mnist/images"] == "90"
    assert result.run_config["monitoring"]["max_ood_rate"] == 0.5  # the run gets the file's config

    again, cursor_again = _tick(world, drift_sensor, cursor)
    assert isinstance(again, SkipReason) and again.skip_message.startswith("already-triggered")
    # A daemon restart resumes from the stored cursor: still the same episode, no second run.
    after_restart, _ = _tick(world, drift_sensor, cursor_again)
    assert isinstance(after_restart, SkipReason) and after_restart.skip_message.startswith("already-triggered")


def test_drift_inside_the_cooldown_waits(world):
    _send(world[2], BLACK, 30)
    _logged(world, 30)
    recent = json.dumps({"episode": None, "triggered": False, "last_triggered": time.time() - 60})
    result, cursor = _tick(world, drift_sensor, recent)
    assert isinstance(result, SkipReason) and result.skip_message.startswith("cooldown: 30 images")
    assert json.loads(cursor)["episode"] is not None


def test_new_data_sensor_sees_mirror_incoming_and_feedback_changes(world):
    tmp_path, mirror, client, _, _ = world
    result, cursor = _tick(world, new_data_sensor)
    assert isinstance(result, SkipReason) and "first fingerprints" in result.skip_message
    result, cursor = _tick(world, new_data_sensor, cursor)
    assert isinstance(result, SkipReason) and result.skip_message.startswith("no change")

    incoming = tmp_path / "data" / "incoming" / "7"
    incoming.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(incoming / "new.png")
    result, cursor = _tick(world, new_data_sensor, cursor)
    assert isinstance(result, RunRequest) and result.tags["mnist/changed"] == "incoming"

    request_id = _send(client, GRAY, 1)[0]
    client.session.post(f"{client.url}/v1/models/mnist/feedback", json={"request_id": request_id, "label": 3})
    result, cursor = _tick(world, new_data_sensor, cursor)
    assert isinstance(result, RunRequest) and result.tags["mnist/changed"] == "feedback"

    time.sleep(0.01)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(b"v2, republished upstream")
    result, cursor = _tick(world, new_data_sensor, cursor)
    assert isinstance(result, RunRequest) and result.tags["mnist/changed"] == "t10k-labels-idx1-ubyte.gz"
    assert result.run_key != "new-data-" and result.run_config["mnist"]["mirrors"] == [mirror.as_uri()]

    # notMNIST's first mirror never answers; the second (file://) does, so nothing changes.
    result, _ = _tick(world, new_data_sensor, cursor)
    assert isinstance(result, SkipReason)


@pytest.fixture
def webhook():
    """A real HTTP receiver on 127.0.0.1 that records POSTed JSON bodies."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@asset
def always_fails():
    raise RuntimeError("boom for the alert test")


def _failure_context(instance: DagsterInstance):
    result = materialize([always_fails], instance=instance, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    (failure,) = (e.dagster_event for e in instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE))
    return build_run_status_sensor_context(
        sensor_name="failure_alert", dagster_instance=instance, dagster_run=run, dagster_event=failure
    ).for_run_failure()


def test_failure_alert_posts_to_the_webhook(webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("MNIST_ALERT_WEBHOOK_URL", url)
    with DagsterInstance.ephemeral() as instance:
        context = _failure_context(instance)
        failure_alert(context, alert_webhook=AlertWebhook())
    (alert,) = received
    assert alert["text"].startswith(f"Dagster run {alert['run_id']} of __ephemeral_asset_job__ failed")
    assert alert["job"] == "__ephemeral_asset_job__"


def test_failure_alert_without_webhook_says_so(monkeypatch, capfd):
    monkeypatch.delenv("MNIST_ALERT_WEBHOOK_URL", raising=False)
    with DagsterInstance.ephemeral() as instance:
        context = _failure_context(instance)
        assert AlertWebhook().send("test message", {}, context.log) is False
        capfd.readouterr()
        failure_alert(context, alert_webhook=AlertWebhook())
    logged = capfd.readouterr().err
    assert "no alert webhook set ($MNIST_ALERT_WEBHOOK_URL is empty), so only logging it: Dagster run" in logged


def test_monitoring_summarizes_the_window_with_feedback_accuracy(world):
    tmp_path, _, client, deployer, _ = world
    clean_ids = _send(client, GRAY, 30)
    _send(client, BLACK, 10)
    predicted = client.predict_json(GRAY).json()["outputs"][0]["data"][0]
    _logged(world, 41)
    for request_id in clean_ids[:4]:  # two labels agree with the model, two don't
        label = predicted if request_id in clean_ids[:2] else (predicted + 1) % 10
        client.session.post(f"{client.url}/v1/models/mnist/feedback", json={"request_id": request_id, "label": label})
    result = materialize(
        [production_monitoring],
        run_config={"ops": {"production_monitoring": {"config": {"window_minutes": 10, "min_images": 20}}}},
        resources=world[4],
    )
    meta = result.asset_materializations_for_node("production_monitoring")[0].metadata
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["ood_rate"].passed is False and checks["ood_rate"].severity.value == "ERROR"
    assert checks["ood_rate"].description == "error: out-of-distribution rate 0.244 > 0.2 (by 0.0439)"
    assert checks["estimated_accuracy_drop"].passed and checks["estimated_accuracy_drop"].description.startswith(
        "unknown"
    )
    assert meta["images"].value == 41
    assert meta["ood_rate"].value == pytest.approx(10 / 41)
    assert meta["labelled"].value == 4 and meta["production_accuracy"].value == 0.5
    assert meta["class_psi"].value > 1  # the tiny model predicts one class; training has ten
    assert meta["drift"].value.startswith("out-of-distribution rate 0.244 > 0.2 (by 0.0439); predicted-class PSI")
    for plot in ("traffic", "predicted_classes", "most_out_of_distribution"):
        assert "data:image/png;base64," in meta[plot].value
    assert (tmp_path / "data" / "plots" / "production_most_ood.png").exists()


def test_production_labels_merge_incoming_images_and_feedback(world):
    tmp_path, _, client, deployer, _ = world
    incoming = tmp_path / "data" / "incoming"
    for digit, count in ((3, 2), (8, 1)):
        (incoming / str(digit)).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((28, 28), 30 * digit, np.uint8)).save(incoming / str(digit) / f"{i}.png")
    (incoming / "8" / "broken.png").write_bytes(b"not a png")
    request_id = _send(client, BLACK, 1)[0]
    client.session.post(f"{client.url}/v1/models/mnist/feedback", json={"request_id": request_id, "label": 5})
    time.sleep(1.0)  # the log writer flushes every 0.5 s
    store = DataStore(root=str(tmp_path / "data"))
    result = materialize([production_labels], resources={"data_store": store, "deployer": deployer})
    meta = result.asset_materializations_for_node("production_labels")[0].metadata
    assert (meta["from_incoming_folder"].value, meta["from_feedback"].value) == (3, 1)
    assert meta["skipped_files"].value == ["8/broken.png: cannot identify image file"]
    saved = store.load_arrays("production_labels")
    assert saved["y"].tolist() == [3, 3, 8, 5]
    np.testing.assert_array_equal(saved["x"][3], BLACK[0])  # the production input, as it was sent


@asset
def retraining_stand_in():
    """Stands in for the retraining job: the alert reads only the run's tags."""


def test_drift_alert_posts_what_crossed_the_run_and_its_link(webhook, monkeypatch, capfd):
    url, received = webhook
    monkeypatch.setenv("MNIST_ALERT_WEBHOOK_URL", url)
    reason = "estimated accuracy drop (points) 12.1 > 5.0 (by 7.1)"
    with DagsterInstance.ephemeral() as instance:
        for tags in ({"mnist/trigger": "new-data"}, {"mnist/trigger": "drift", "mnist/reason": reason}):
            result = materialize([retraining_stand_in], instance=instance, tags={**tags, "mnist/images": "900"})
            run = instance.get_run_by_id(result.run_id)
            (start,) = (e.dagster_event for e in instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_START))
            context = build_run_status_sensor_context(
                sensor_name="drift_alert", dagster_instance=instance, dagster_run=run, dagster_event=start
            )
            outcome = drift_alert(context, alert_webhook=AlertWebhook(ui_url="https://dagster.example/"))
    assert outcome is None
    (alert,) = received  # the new-data run posted nothing
    link = f"https://dagster.example/runs/{run.run_id}"
    assert alert["text"] == (
        f"Production drift: {reason}. Requested retraining run {run.run_id} of __ephemeral_asset_job__: {link}"
    )
    assert alert["link"] == link and alert["drift"] == {"trigger": "drift", "reason": reason, "images": "900"}
    logged = capfd.readouterr().err
    assert "alert posted to 127.0.0.1" in logged and url not in logged, "the webhook URL is never logged"


def test_window_rows_the_grid_and_the_labels_match_the_per_prediction_view(tmp_path):
    """What the asset takes from the columns (the most out-of-distribution kept inputs, highest
    score first and oldest first on ties; the feedback labels by row; the relabelled inputs)
    against the same computed plainly over ``read_predictions``, on a log written by RequestLog
    with a repeated score. Not covered: the plot itself (test above)."""
    rng = np.random.default_rng(3)
    log = RequestLog(tmp_path, sample_rate=0.5, seed=3)
    for k in range(12):
        scores = np.round(rng.random(5), 1).astype(np.float32)  # rounded: equal scores happen
        probabilities = rng.dirichlet(np.ones(10), 5).astype(np.float32)
        images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
        log.record(f"req-{k}", "1", images, probabilities.argmax(1), probabilities, scores, scores > 0.8)
    log.close()
    feedback = FeedbackLog(tmp_path)
    for k, i, label in ((1, 0, 3), (4, 2, 7), (9, 4, 1), (11, 3, 0)):
        feedback.add(f"req-{k}", i, label)
    columns, _ = read_columns(tmp_path)
    predictions, _ = read_predictions(tmp_path)
    kept = [p for p in predictions if p.image is not None]
    plain = sorted(kept, key=lambda p: -p.concept_score)[:7]
    worst = most_out_of_distribution(columns, 7)
    assert len(set(columns.concept_score[columns.kept].tolist())) < len(kept)  # ties were exercised
    assert [(columns.request_id[row], columns.index[row]) for row in worst] == [(p.request_id, p.index) for p in plain]
    assert np.array_equal(columns.images(worst), np.stack([p.image for p in plain]))
    labels = read_feedback(tmp_path)
    assert feedback_labels(columns, labels) == {
        row: labels[(p.request_id, p.index)] for row, p in enumerate(predictions) if (p.request_id, p.index) in labels
    }
    images, found, missing = relabelled_inputs(tmp_path)
    by_key = {(p.request_id, p.index): p.image for p in kept}
    usable = [(by_key[key], label) for key, label in labels.items() if key in by_key]
    assert missing == len(labels) - len(usable) and found.tolist() == [label for _, label in usable]
    assert np.array_equal(images, np.array([image for image, _ in usable]).reshape(-1, 28, 28))
