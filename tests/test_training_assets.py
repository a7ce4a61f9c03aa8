"""The data and model assets through Dagster, on the real data (../shared/data or upstream).

Runs in-process with few epochs; the multi-process job is covered by test_cli_job.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from dagster import AssetCheckKey, AssetKey, materialize

from mnist_assets.assets import (
    mnist_classifier,
    mnist_concept_model,
    mnist_dataset,
    notmnist_dataset,
    production_labels,
)
from mnist_assets.assets.models import KEEP_RUN_FOLDERS, RUNS_DIR, parity_reference_file, run_model_dir
from mnist_ml.datasets import to_unit_float
from mnist_ml.model_contract import read_concept_calibration
from mnist_ml.onnx_export import ParityReference
from mnist_ml.savedmodel import LoadedModel
from resources import DataStore, ModelDeployer

pytestmark = pytest.mark.slow

ASSETS = [mnist_dataset, notmnist_dataset, production_labels, mnist_classifier, mnist_concept_model]


def _run_config(mirrors, **overrides):
    classifier = {"epochs": 2, "min_test_accuracy": 0.9, **overrides.get("classifier", {})}
    concept = {"epochs": 2, "min_detection_rate": 0.8, "max_false_positive_rate": 0.05}
    return {
        "ops": {
            "mnist_dataset": {"config": {"mirrors": mirrors["mnist"]}},
            "notmnist_dataset": {"config": {"mirrors": mirrors["notmnist"]}},
            "mnist_classifier": {"config": classifier},
            "mnist_concept_model": {"config": concept},
        }
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_mirrors):
    """One real run of all four assets and their checks, shared by the tests below."""
    root = tmp_path_factory.mktemp("store")
    store = DataStore(root=str(root))
    resources = {"data_store": store, "deployer": ModelDeployer(state_dir=str(root / "serving"))}
    result = materialize(ASSETS, run_config=_run_config(real_mirrors), resources=resources)
    return result, store


def test_datasets_are_verified_arrays_with_metadata(trained):
    result, store = trained
    assert result.success
    mnist = store.load_arrays("mnist")
    assert mnist["x_train"].shape == (60000, 28, 28) and mnist["x_train"].dtype == np.uint8
    assert mnist["x_test"].shape == (10000, 28, 28)
    notmnist = store.load_arrays("notmnist")
    assert notmnist["x"].shape[1:] == (28, 28) and set(np.unique(notmnist["y"])) == set(range(10))

    meta = result.asset_materializations_for_node("mnist_dataset")[0].metadata
    assert meta["train_images"].value == 60000
    assert len(meta["payload_sha256"].value) == 4
    assert "data:image/png;base64," in meta["samples"].value
    nm_meta = result.asset_materializations_for_node("notmnist_dataset")[0].metadata
    assert nm_meta["images"].value == len(notmnist["x"])
    assert nm_meta["skipped"].value == 0  # the local sample has no unreadable PNGs
    assert (store.path("plots", "mnist_samples.png")).read_bytes()[:4] == b"\x89PNG"


def test_classifier_export_accuracy_and_passing_check(trained):
    result, store = trained
    meta = result.asset_materializations_for_node("mnist_classifier")[0].metadata
    assert meta["test_accuracy"].value > 0.9
    model_dir = meta["model_dir"].value
    assert model_dir == run_model_dir(result.run_id, "classifier") == f"models/runs/{result.run_id}/classifier"
    mnist = store.load_arrays("mnist")
    out = LoadedModel(store.path(model_dir))(to_unit_float(mnist["x_test"][:500]))
    assert np.mean(out["class_ids"] == mnist["y_test"][:500]) > 0.85
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["test_accuracy_at_least_minimum"].passed
    metrics = json.loads(store.path(f"{model_dir}.metrics.json").read_text())
    convs = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64)  # the default CNN: 28 -> 26 -> 13 -> 11 -> 5
    assert metrics["parameters"] == convs + 5 * 5 * 64 * 64 + 64 + 64 * 10 + 10
    plots = store.path("models", "runs", result.run_id, "plots")
    assert (plots / "classifier_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    reference = ParityReference.from_bytes(store.path(parity_reference_file(model_dir)).read_bytes())
    reference.check(store.path(model_dir), to_unit_float(mnist["x_test"]))  # the files and digits publishing checks
    assert np.array_equal(reference.outputs["class_ids"][:500], out["class_ids"])


def test_concept_model_separates_notmnist(trained):
    result, store = trained
    meta = result.asset_materializations_for_node("mnist_concept_model")[0].metadata
    assert meta["notmnist_roc_auc"].value > 0.97
    assert meta["noisy_mnist_roc_auc"].value > 0.9
    assert meta["model_dir"].value == run_model_dir(result.run_id, "concept_model")
    calibration = read_concept_calibration(store.path(meta["model_dir"].value))
    assert calibration["threshold"] == pytest.approx(meta["threshold"].value)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["detection_rate_at_least_minimum"].passed
    assert checks["false_positive_rate_at_most_maximum"].passed


def test_failing_check_is_recorded_as_blocking_error(trained, real_mirrors):
    """An impossible accuracy bar fails the classifier's blocking check (severity ERROR).
    Not covered here: that downstream assets then don't run (there are none yet)."""
    _, store = trained
    config = _run_config(real_mirrors, classifier={"epochs": 1, "min_test_accuracy": 1.0})
    result = materialize(
        [mnist_classifier],
        run_config={"ops": {"mnist_classifier": config["ops"]["mnist_classifier"]}},
        resources={"data_store": store},
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_check_key == AssetCheckKey(AssetKey("mnist_classifier"), "test_accuracy_at_least_minimum")
    assert not evaluation.passed
    assert evaluation.severity.value == "ERROR"


def test_each_run_writes_its_own_folder_and_old_ones_are_pruned(trained, real_mirrors):
    """A second run exports beside the first, leaving the first run's model untouched; run
    folders beyond the newest KEEP_RUN_FOLDERS go, the current run's never. Not covered here:
    what uploaded_model takes from them (tests/test_one_deploy_at_a_time.py)."""
    result, store = trained
    first = store.path(run_model_dir(result.run_id, "classifier"))
    before = _tree(first)
    stale = [store.path(RUNS_DIR, f"stale-{i}") for i in range(KEEP_RUN_FOLDERS + 1)]
    for age, folder in enumerate(stale):
        folder.mkdir(parents=True)
        os.utime(folder, (1_000_000_000 + age,) * 2)  # older than any real run folder
    config = _run_config(real_mirrors, classifier={"epochs": 1})
    second = materialize(
        [mnist_classifier],
        run_config={"ops": {"mnist_classifier": config["ops"]["mnist_classifier"]}},
        resources={"data_store": store},
    )
    assert store.path(run_model_dir(second.run_id, "classifier"), "saved_model.pb").is_file()
    assert _tree(first) == before, "the second run touched the first run's model"
    kept = {p.name for p in store.path(RUNS_DIR).iterdir() if not p.name.startswith(".")}
    assert {result.run_id, second.run_id} <= kept and len(kept) == KEEP_RUN_FOLDERS


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
