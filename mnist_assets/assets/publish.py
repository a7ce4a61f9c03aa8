"""Publish both models as one immutable registry version, with a manifest."""

import json

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from mnist_assets.assets.models import CLASSIFIER_DIR, CONCEPT_DIR, OWNERS, mnist_classifier, mnist_concept_model
from mnist_ml.model_contract import (
    CLASSIFIER,
    CLASSIFIER_OUTPUTS,
    CONCEPT_MODEL,
    CONCEPT_OUTPUTS,
    CONCEPT_SIDECAR,
    INPUT_NAME,
    SIGNATURE,
)
from resources import DataStore, ModelRegistry

SIGNATURES = {
    "signature": SIGNATURE,
    "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, 28, 28], "range": [0, 1]},
    CLASSIFIER: {"outputs": list(CLASSIFIER_OUTPUTS)},
    CONCEPT_MODEL: {"outputs": list(CONCEPT_OUTPUTS), "threshold": str(CONCEPT_SIDECAR)},
}


MODEL_FOLDERS = {CLASSIFIER: CLASSIFIER_DIR, CONCEPT_MODEL: CONCEPT_DIR}


def _training_summary(data_store: DataStore, folder: str) -> dict:
    """Metrics and config the model asset recorded, without the per-epoch history."""
    summary = json.loads(data_store.path(f"{folder}.metrics.json").read_text())
    return {key: value for key, value in summary.items() if key != "history"}


def _data_checksums(context: AssetExecutionContext) -> dict:
    """The checksums recorded by the latest materialization of each dataset."""
    found = {}
    for key, field in (("mnist_dataset", "payload_sha256"), ("notmnist_dataset", "archive_payload_sha256")):
        event = context.instance.get_latest_materialization_event(AssetKey(key))
        entry = event.asset_materialization.metadata.get(field) if event and event.asset_materialization else None
        found[key] = entry.value if entry else "unknown: not materialized in this Dagster instance"
    return found


@asset(
    group_name="delivery",
    owners=OWNERS,
    deps=[mnist_classifier, mnist_concept_model],
    kinds={"tensorflow"},
    description="Both models published as one immutable version in the model repository "
    "(<root>/<model>/<version>/), with a manifest; the version becomes the 'candidate'.",
)
def uploaded_model(context: AssetExecutionContext, data_store: DataStore, registry: ModelRegistry):
    training = {name: _training_summary(data_store, folder) for name, folder in MODEL_FOLDERS.items()}
    manifest = {
        "dagster_run_id": context.run_id,
        "data_checksums": _data_checksums(context),
        "training": training,
        "signatures": SIGNATURES,
    }
    repository = registry.repository()
    version = repository.publish({name: data_store.path(f) for name, f in MODEL_FOLDERS.items()}, manifest)
    repository.set_alias("candidate", version.version)
    context.log.info(f"published {version.name} version {version.version} at {version.path}")
    return MaterializeResult(
        metadata={
            "version": version.version,
            "path": MetadataValue.path(str(version.path)),
            "manifest": MetadataValue.json(version.manifest),
            "aliases": MetadataValue.json(repository.aliases()),
        }
    )
