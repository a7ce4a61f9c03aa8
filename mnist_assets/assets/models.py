"""Model assets: train, export as SavedModels, evaluate the exported artifact, gate it.

Invariants:
- each run exports into its own folder, ``models/runs/<run id>/`` under the data store (the
  SavedModel, ``<model>.metrics.json`` and ``plots/`` beside it), so two runs never write the
  same files; the folder, relative to the data store, is the ``model_dir`` of the asset's
  materialization, which is how ``uploaded_model`` finds it;
- a SavedModel folder appears whole or not at all (``DataStore.publish_dir``); a retried step of
  the same run replaces its own folder;
- beside each SavedModel, ``<model>.parity.npz``: its ``ParityReference`` (its variables and its
  outputs on the 10,000 MNIST test digits, tied to its files by a digest), recorded while
  TensorFlow and the exported model are loaded here, so that publishing checks the ONNX export
  without loading TensorFlow (``mnist_ml.onnx_export``);
- the classifier's metrics carry its label-free calibration (``atc``: the ATC threshold and the
  held-out confidence distribution), the concept model's the held-out score distribution
  (``reference_scores``), both on the fit's own held-out split (``mnist_ml.shift``): publishing
  copies them into the manifest, where monitoring finds them;
- after each export the run folders beyond the newest ``KEEP_RUN_FOLDERS`` are deleted, never the
  current run's nor the one either model's latest materialization names (what a later publish
  without training would take). The registry keeps its own copy of every published version.
"""

import json

import numpy as np
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from mnist_assets import metadata
from mnist_assets.assets.data import mnist_dataset, notmnist_dataset, production_labels
from mnist_assets.checks import (
    CLASSIFIER_ACCURACY,
    CONCEPT_DETECTION,
    CONCEPT_FALSE_POSITIVES,
    classifier_checks,
    concept_checks,
)
from mnist_assets.config import ClassifierConfig, ConceptModelConfig
from mnist_assets.k8s import TRAINING_POD
from mnist_assets.step_order import CRITICAL_PATH
from mnist_ml import plots
from mnist_ml.datasets import DIGITS, to_unit_float
from mnist_ml.evaluation import add_uniform_noise, confusion_matrix, ood_report, per_class_accuracy
from mnist_ml.model_contract import CLASSIFIER, CONCEPT_MODEL
from mnist_ml.run_folders import prune_run_folders
from mnist_ml.shift import classifier_calibration, reference_sketch
from resources import DataStore

# TensorFlow modules are imported inside the assets: the orchestrating process and the data
# steps then never load TensorFlow, which saves about a gigabyte per process.

OWNERS = ["team:mlops"]
RUNS_DIR = "models/runs"
KEEP_RUN_FOLDERS = 5


def run_model_dir(run_id: str, model: str) -> str:
    """Where run ``run_id`` exports ``model``, relative to the data store."""
    return f"{RUNS_DIR}/{run_id}/{model}"


def parity_reference_file(model_dir: str) -> str:
    """Where the SavedModel at ``model_dir`` has its parity reference, relative to the data store."""
    return f"{model_dir}.parity.npz"


def _prune_run_folders(context: AssetExecutionContext, data_store: DataStore) -> None:
    latest = (context.instance.get_latest_materialization_event(key) for key in MODEL_ASSETS.values())
    protect = {context.run_id, *(event.run_id for event in latest if event)}
    deleted = prune_run_folders(data_store.path(RUNS_DIR), KEEP_RUN_FOLDERS, protect)
    if deleted:
        context.log.info(f"pruned {len(deleted)} old run folder(s) under {RUNS_DIR}: {', '.join(deleted)}")


def _record(
    context: AssetExecutionContext,
    data_store: DataStore,
    model_dir: str,
    fit,
    config,
    metrics: dict,
    pngs: dict[str, bytes],
) -> dict:
    """Write ``<model_dir>.metrics.json`` and the plots beside the model, prune old run
    folders; return the shared metadata entries."""
    facts = {"training_seconds": fit.seconds, "parameters": fit.model.count_params()}
    summary = {**metrics, **facts, "history": fit.history, "config": config.model_dump()}
    data_store.write_bytes(f"{model_dir}.metrics.json", json.dumps(summary, indent=2).encode())
    run_dir, model = model_dir.rsplit("/", 1)
    for name, image in pngs.items():
        data_store.write_bytes(f"{run_dir}/plots/{model}_{name}.png", image)
    _prune_run_folders(context, data_store)
    return {
        **facts,
        **{name: metadata.png(image, name.replace("_", " ")) for name, image in pngs.items()},
        "model_dir": model_dir,
        "saved_model": MetadataValue.path(str(data_store.path(model_dir))),
    }


@asset(
    group_name="models",
    owners=OWNERS,
    deps=[mnist_dataset, production_labels],
    check_specs=[CLASSIFIER_ACCURACY],
    kinds={"tensorflow"},
    op_tags={**TRAINING_POD, **CRITICAL_PATH},
    description="Digit classifier (a small CNN by default) exported as a SavedModel with the "
    "signature imgs -> class_ids, probabilities; evaluated on the MNIST test set.",
)
def mnist_classifier(context: AssetExecutionContext, config: ClassifierConfig, data_store: DataStore):
    from mnist_ml.classifier import train_classifier
    from mnist_ml.onnx_export import ParityReference
    from mnist_ml.savedmodel import LoadedModel, export_classifier
    from mnist_ml.training import split_validation

    data = data_store.load_arrays("mnist")
    extra = data_store.load_arrays("production_labels")
    x_train, y_train = np.concatenate([data["x_train"], extra["x"]]), np.concatenate([data["y_train"], extra["y"]])
    context.log.info(f"training on {len(data['x_train'])} MNIST and {len(extra['x'])} production-labelled digits")
    trained = train_classifier(
        x_train, y_train, config.architecture, config.hidden_units, config.fit_params(), context.log.info
    )
    model_dir = run_model_dir(context.run_id, CLASSIFIER)
    with data_store.publish_dir(model_dir) as scratch:
        export_classifier(trained.model, scratch)
    exported = LoadedModel(data_store.path(model_dir))
    reference = ParityReference.record(exported, to_unit_float(data["x_test"]), data_store.path(model_dir))
    data_store.write_bytes(parity_reference_file(model_dir), reference.to_bytes())
    matrix = confusion_matrix(data["y_test"], reference.outputs["class_ids"])
    accuracy = float(np.trace(matrix) / matrix.sum())
    per_class = dict(zip(DIGITS, per_class_accuracy(matrix).tolist(), strict=True))
    context.log.info(f"classifier test accuracy {accuracy:.4f}")
    _, held_out = split_validation(len(x_train), config.validation_fraction, config.seed)  # the fit's own split
    atc = classifier_calibration(exported(to_unit_float(x_train[held_out]))["probabilities"], y_train[held_out])
    context.log.info(f"ATC threshold {atc['threshold']:.4f} (held-out accuracy {atc['validation_accuracy']:.4f})")
    pngs = {
        "confusion_matrix": plots.confusion_matrix_plot(matrix, DIGITS),
        "training_curves": plots.training_curves(trained.history, "classifier"),
    }
    metrics = {"test_accuracy": accuracy, "per_class_accuracy": per_class, "atc": atc}
    return MaterializeResult(
        metadata={
            "test_accuracy": accuracy,
            "validation_accuracy": trained.history["val_accuracy"][-1],
            "atc_threshold": atc["threshold"],
            "production_labelled_images": len(extra["x"]),
            "per_class_accuracy": metadata.table(per_class, "digit", "accuracy"),
            **_record(context, data_store, model_dir, trained, config, metrics, pngs),
        },
        check_results=classifier_checks(accuracy, config.min_test_accuracy),
    )


@asset(
    group_name="models",
    owners=OWNERS,
    deps=[mnist_dataset, notmnist_dataset],
    check_specs=[CONCEPT_DETECTION, CONCEPT_FALSE_POSITIVES],
    kinds={"tensorflow"},
    op_tags=TRAINING_POD,
    description="Concept model: an autoencoder whose reconstruction MSE scores how unlike MNIST "
    "an input is, with an out-of-distribution threshold calibrated on held-out digits.",
)
def mnist_concept_model(context: AssetExecutionContext, config: ConceptModelConfig, data_store: DataStore):
    from mnist_ml.concept import calibrate_threshold, train_concept_model
    from mnist_ml.onnx_export import ParityReference
    from mnist_ml.savedmodel import LoadedModel, export_concept_model, write_concept_calibration

    mnist = data_store.load_arrays("mnist")
    notmnist = data_store.load_arrays("notmnist")
    trained = train_concept_model(mnist["x_train"], config.encoder_units, config.fit_params(), context.log.info)
    model_dir = run_model_dir(context.run_id, CONCEPT_MODEL)
    with data_store.publish_dir(model_dir) as scratch:
        export_concept_model(trained.fit.model, scratch)
        score = LoadedModel(scratch)
        held_out_scores = score(trained.validation_images)["score"]
        threshold = calibrate_threshold(held_out_scores, config.threshold_percentile)
        write_concept_calibration(
            scratch,
            {"threshold": threshold, "percentile": config.threshold_percentile, "calibrated_on": "held-out MNIST"},
        )
    clean_test = to_unit_float(mnist["x_test"])
    reference = ParityReference.record(score, clean_test, data_store.path(model_dir))  # calibration included
    data_store.write_bytes(parity_reference_file(model_dir), reference.to_bytes())
    scores = {
        "MNIST test": reference.outputs["score"],
        "notMNIST": score(to_unit_float(notmnist["x"]))["score"],
        "noisy MNIST": score(add_uniform_noise(clean_test, config.noise_amplitude, config.seed))["score"],
    }
    notmnist_report = ood_report(scores["MNIST test"], scores["notMNIST"], threshold)
    noisy_report = ood_report(scores["MNIST test"], scores["noisy MNIST"], threshold)
    context.log.info(f"concept model: notMNIST {notmnist_report}, noisy digits {noisy_report}")
    pngs = {
        "score_histogram": plots.score_histogram(scores, threshold),
        "training_curves": plots.training_curves(trained.fit.history, "autoencoder"),
    }
    metrics = {
        "threshold": threshold,
        "threshold_percentile": config.threshold_percentile,
        "notmnist": notmnist_report,
        "noisy_mnist": noisy_report,
        "reference_scores": reference_sketch(held_out_scores),
    }
    return MaterializeResult(
        metadata={
            "threshold": threshold,
            **{f"notmnist_{k}": v for k, v in notmnist_report.items()},
            **{f"noisy_mnist_{k}": v for k, v in noisy_report.items()},
            **_record(context, data_store, model_dir, trained.fit, config, metrics, pngs),
        },
        check_results=concept_checks(
            notmnist_report["detection_rate"],
            notmnist_report["false_positive_rate"],
            config.min_detection_rate,
            config.max_false_positive_rate,
        ),
    )


# Model name -> the asset that trains it.
MODEL_ASSETS = {CLASSIFIER: mnist_classifier.key, CONCEPT_MODEL: mnist_concept_model.key}
