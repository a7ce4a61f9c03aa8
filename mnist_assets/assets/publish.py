"""Publish both models as one immutable registry version, with a manifest.

Invariants:
- the models published are the ones this run trained; for a model this run did not train, the
  one its asset's latest materialization recorded. Either way the folder comes from the
  materialization's ``model_dir``, never from a shared path another run could overwrite, and
  the log says which run each model came from;
- the manifest names the publishing run (``dagster_run_id``) and, per model, the run that
  trained it (``trained_in_run``); the data checksums follow the same rule as the models;
- ``FileModelRepository.publish`` writes the version atomically and never overwrites one;
- the version holds both models as one ONNX graph too (what the endpoint serves), checked for
  parity with the SavedModels on the 10,000 MNIST test digits before publishing, against the
  parity references their training steps recorded (so this step never imports TensorFlow): the
  figures are in the manifest (``onnx``), and a version that fails parity, or whose models have
  no reference for their exact files, is not published (``onnx_export``);
- the version holds its model card (``MODEL_CARD.md``, ``mnist_ml.model_card``), generated from
  the full manifest and written before the version is sealed; it is shown on the materialization.
"""

import json
import tempfile
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    DagsterEventType,
    EventLogEntry,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from mnist_assets.assets.data import mnist_dataset, notmnist_dataset
from mnist_assets.assets.models import (
    MODEL_ASSETS,
    OWNERS,
    mnist_classifier,
    mnist_concept_model,
    parity_reference_file,
)
from mnist_ml import model_card
from mnist_ml.datasets import load_mnist, to_unit_float
from mnist_ml.model_card import MODEL_CARD
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

DATASET_CHECKSUMS = {mnist_dataset.key: "payload_sha256", notmnist_dataset.key: "archive_payload_sha256"}


class Materializations:
    """Each asset's materialization as this run made it, else its latest in the instance."""

    def __init__(self, context: AssetExecutionContext) -> None:
        self.context = context
        records = context.instance.get_records_for_run(
            context.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        ).records
        self.this_run = {r.event_log_entry.asset_materialization.asset_key: r.event_log_entry for r in records}

    def get(self, key: AssetKey) -> EventLogEntry | None:
        return self.this_run.get(key) or self.context.instance.get_latest_materialization_event(key)


def _model_sources(context: AssetExecutionContext, found: Materializations) -> dict[str, EventLogEntry]:
    """Per model, the materialization whose ``model_dir`` is published."""
    sources = {}
    for model, key in MODEL_ASSETS.items():
        entry = found.get(key)
        name = key.to_user_string()
        if entry is None:
            raise Failure(f"{name} has no materialization in this Dagster instance: materialize it first")
        if "model_dir" not in entry.asset_materialization.metadata:
            raise Failure(
                f"{name}'s latest materialization (run {entry.run_id}) names no model_dir: materialize it again"
            )
        origin = (
            "trained in this run" if key in found.this_run else "not trained in this run: its latest materialization"
        )
        context.log.info(f"{model} from run {entry.run_id} ({origin}): {_model_dir(entry)}")
        sources[model] = entry
    return sources


def _model_dir(entry: EventLogEntry) -> str:
    return entry.asset_materialization.metadata["model_dir"].value


def _parity_references(data_store: DataStore, sources: dict[str, EventLogEntry]) -> dict:
    """Per model, the parity reference its training step recorded beside the SavedModel."""
    from mnist_ml.onnx_export import ParityError, ParityReference

    references = {}
    for model, entry in sources.items():
        path = data_store.path(parity_reference_file(_model_dir(entry)))
        again = f"Materialize {MODEL_ASSETS[model].to_user_string()} again."
        if not path.is_file():
            raise Failure(
                f"{model} from run {entry.run_id} has no parity reference ({path}): it was trained before "
                f"training recorded one. {again}"
            )
        try:
            references[model] = ParityReference.from_bytes(path.read_bytes())
        except ParityError as exc:
            raise Failure(f"{model} from run {entry.run_id}: {path} is {exc}. {again}") from None
    return references


def _training_summary(data_store: DataStore, folder: str) -> dict:
    """Metrics and config the model asset recorded, without the per-epoch history."""
    summary = json.loads(data_store.path(f"{folder}.metrics.json").read_text())
    return {key: value for key, value in summary.items() if key != "history"}


def _data_checksums(found: Materializations) -> dict:
    """The checksums each dataset's materialization recorded."""
    checksums = {}
    for key, field in DATASET_CHECKSUMS.items():
        event = found.get(key)
        entry = event.asset_materialization.metadata.get(field) if event else None
        checksums[key.to_user_string()] = entry.value if entry else "unknown: not materialized in this Dagster instance"
    return checksums


@asset(
    group_name="delivery",
    owners=OWNERS,
    deps=[mnist_classifier, mnist_concept_model],
    kinds={"tensorflow"},
    description="Both models published as one immutable version in the model repository "
    "(<root>/<model>/<version>/), with a manifest; the version becomes the 'candidate'.",
)
def uploaded_model(context: AssetExecutionContext, data_store: DataStore, registry: ModelRegistry):
    found = Materializations(context)
    sources = _model_sources(context, found)
    folders = {model: _model_dir(entry) for model, entry in sources.items()}
    trained_in = {model: entry.run_id for model, entry in sources.items()}
    manifest = {
        "dagster_run_id": context.run_id,
        "trained_in_run": trained_in,
        "data_checksums": _data_checksums(found),
        "training": {model: _training_summary(data_store, folder) for model, folder in folders.items()},
        "signatures": SIGNATURES,
    }
    repository = registry.repository()
    artifacts = {model: data_store.path(folder) for model, folder in folders.items()}
    test_digits = to_unit_float(load_mnist(data_store.path("raw"))["x_test"])
    # ONNX and ONNX Runtime (about 0.1 s to import): here, not in every process that loads the code location
    from mnist_ml.onnx_export import ONNX_ARTIFACT, ParityError, export_checked

    references = _parity_references(data_store, sources)
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        try:
            manifest["onnx"] = export_checked(artifacts, Path(tmp) / ONNX_ARTIFACT, test_digits, references)
        except ParityError as exc:
            raise Failure(f"not published: {exc}") from None
        context.log.info(f"ONNX export matches the SavedModels: {manifest['onnx']['parity']}")
        version = repository.publish(
            {**artifacts, ONNX_ARTIFACT: Path(tmp) / ONNX_ARTIFACT},
            manifest,
            documents=lambda full: {MODEL_CARD: model_card.render(full)},
        )
    repository.set_alias("candidate", version.version)
    context.log.info(f"published {version.name} version {version.version} at {version.path}")
    return MaterializeResult(
        metadata={
            "version": version.version,
            "trained_in_run": MetadataValue.json(trained_in),
            "path": MetadataValue.path(str(version.path)),
            "manifest": MetadataValue.json(version.manifest),
            "model_card": MetadataValue.md((version.path / MODEL_CARD).read_text()),
            "aliases": MetadataValue.json(repository.aliases()),
        }
    )
