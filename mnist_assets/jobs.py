"""Jobs, each configured from the one ``PipelineConfig`` (see ``run_config.yaml``)."""

from dagster import AssetSelection, RunConfig, config_mapping, define_asset_job

from mnist_assets.assets import mnist_classifier, mnist_concept_model, mnist_dataset, notmnist_dataset
from mnist_assets.config import PipelineConfig
from resources import DataStore


@config_mapping
def pipeline_config(config: PipelineConfig) -> RunConfig:
    """Spread the one config over the assets and resources; runs when a run is created,
    so a bad value fails before any step starts."""
    return RunConfig(
        ops={
            mnist_dataset.key.to_python_identifier(): config.mnist,
            notmnist_dataset.key.to_python_identifier(): config.notmnist,
            mnist_classifier.key.to_python_identifier(): config.classifier,
            mnist_concept_model.key.to_python_identifier(): config.concept_model,
        },
        resources={"data_store": DataStore(root=config.data_dir)},
    )


mnist_training = define_asset_job(
    "mnist_training",
    selection=AssetSelection.assets(mnist_dataset, notmnist_dataset, mnist_classifier, mnist_concept_model),
    config=pipeline_config,
    description="Download and verify both datasets, then train, export and check both models.",
)
