"""The code location: ``dagster dev -w workspace.yaml`` or ``-m mnist_assets.definitions``."""

from dagster import Definitions

from mnist_assets.jobs import PIPELINE, mnist_pipeline, mnist_training
from resources import DataStore, LocalDeployer, ModelRegistry

defs = Definitions(
    assets=PIPELINE,
    jobs=[mnist_pipeline, mnist_training],
    resources={"data_store": DataStore(), "registry": ModelRegistry(), "deployer": LocalDeployer()},
)
