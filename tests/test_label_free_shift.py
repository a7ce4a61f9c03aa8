"""Seeing a shift without labels, end to end on real models: mnist_pipeline (one epoch per
model, real MNIST) publishes a version whose manifest carries the ATC calibration and the
training-time score sketches; the deployed endpoint gets the 10,000 MNIST test digits written
smaller (each resampled to SIZE x SIZE pixels and centred: a covariate shift that costs the
classifier more than 10 points while the concept model flags almost none of it); from the
request log alone, production_monitoring's ATC estimate lands within 5 points of the true
accuracy (computed here from the labels the endpoint never saw), its checks turn red, and the
drift sensor requests a retraining run for the estimated accuracy drop, not for the OOD rate.

The version's model card (written at publish) is in its folder with the ATC threshold.

Not covered: the daemon ticking the sensor (tests/test_ui_daemon.py does, for an OOD shift),
other kinds of shift (ATC is known to be off when the model is confidently wrong)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.ndimage
import yaml
from dagster import DagsterInstance, RunRequest, build_sensor_context, materialize
from quick_config import quick_job, quick_resources, quick_run_config

from mnist_assets.assets import production_monitoring
from mnist_assets.sensors import drift_sensor
from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.model_card import MODEL_CARD
from mnist_ml.registry import FileModelRepository
from mnist_ml.shift import Calibration
from mnist_serving.request_log import read_predictions
from resources import DataStore, RunConfigFile

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIZE = 23  # pixels: digits written smaller
MONITORING = {"window_minutes": 30, "min_images": 200, "max_accuracy_drop_points": 5.0, "cooldown_minutes": 0}


def written_smaller(images: np.ndarray, size: int) -> np.ndarray:
    """Each uint8 28x28 digit resampled (bilinear) to ``size`` x ``size`` and centred."""
    small = scipy.ndimage.zoom(images.astype(np.float32), (1, size / 28, size / 28), order=1)
    out = np.zeros_like(images)
    offset = (28 - size) // 2
    out[:, offset : offset + size, offset : offset + size] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, real_mirrors):
    root = tmp_path_factory.mktemp("shift")
    config = {**quick_run_config(real_mirrors["mnist"], real_mirrors["notmnist"]), "monitoring": MONITORING}
    (root / "run_config.yaml").write_text(yaml.safe_dump(config))
    resources = {**quick_resources(root), "run_config": RunConfigFile(path=str(root / "run_config.yaml"))}
    with DagsterInstance.ephemeral() as instance:
        try:
            assert quick_job("mnist_pipeline", root).execute_in_process(run_config=config, instance=instance).success
            yield root, config, resources
        finally:
            LocalEndpoint(root / "serving").stop()


def test_atc_estimate_tracks_a_real_covariate_shift_and_the_sensor_requests_a_run(deployed):
    root, config, resources = deployed
    manifest = FileModelRepository(root / "models").get(1).manifest
    calibration = Calibration.from_manifest(manifest)
    assert calibration is not None and 0 < calibration.atc_threshold < 1
    clean_accuracy = manifest["training"]["classifier"]["test_accuracy"]
    card = (FileModelRepository(root / "models").get(1).path / MODEL_CARD).read_text()
    assert f"Threshold **{calibration.atc_threshold:.4f}**" in card and "## Known limits" in card
    test = DataStore(root=str(root / "data")).load_arrays("mnist", keys=["x_test", "y_test"])
    client = EndpointClient(LocalEndpoint(root / "serving").current().url)
    shifted = client.predict(written_smaller(test["x_test"], SIZE))
    true_accuracy = float(np.mean(shifted["class_ids"] == test["y_test"]))
    assert clean_accuracy - true_accuracy >= 0.10, (clean_accuracy, true_accuracy)
    deadline = time.monotonic() + 30
    while len(read_predictions(root / "serving" / "requests")[0]) < 10_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(read_predictions(root / "serving" / "requests")[0]) == 10_000

    result = materialize(
        [production_monitoring],
        run_config={"ops": {"production_monitoring": {"config": MONITORING}}},
        resources=resources,
    )
    meta = result.asset_materializations_for_node("production_monitoring")[0].metadata
    assert meta["images"].value == 10_000 and meta["ood_rate"].value < 0.2, meta["ood_rate"].value
    estimate = meta["estimated_accuracy"].value
    print(f"clean {clean_accuracy:.4f}, shifted: true {true_accuracy:.4f}, ATC estimate {estimate:.4f}")
    assert abs(estimate - true_accuracy) <= 0.05, (estimate, true_accuracy)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["ood_rate"].passed
    assert not checks["confidence_distribution"].passed  # the confidences moved

    (tick,) = [drift_sensor(build_sensor_context(instance=DagsterInstance.ephemeral(), resources=resources))]
    assert isinstance(tick, RunRequest), tick
    assert tick.tags["mnist/reason"].startswith("estimated accuracy drop (points)")
    assert "out-of-distribution" not in tick.tags["mnist/reason"]
