"""The code location: ``dagster dev -w workspace.yaml`` or ``-m mnist_assets.definitions``."""

from dagster import Definitions

from mnist_assets.assets import mnist_classifier, mnist_concept_model, mnist_dataset, notmnist_dataset
from mnist_assets.jobs import mnist_training
from resources import DataStore

defs = Definitions(
    assets=[mnist_dataset, notmnist_dataset, mnist_classifier, mnist_concept_model],
    jobs=[mnist_training],
    resources={"data_store": DataStore()},
)
