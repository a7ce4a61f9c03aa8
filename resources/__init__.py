"""Dagster resources: the only code that touches the outside world (files, mirrors, the
model registry, serving). Each has a local default; its settings class is what the one
run-config file configures."""

from resources.alerts import AlertWebhook
from resources.data_store import DataStore, DataStoreSettings
from resources.deployer import ModelDeployer, ServingSettings
from resources.model_registry import ModelRegistry, RegistrySettings

__all__ = [
    "AlertWebhook",
    "DataStore",
    "DataStoreSettings",
    "ModelDeployer",
    "ModelRegistry",
    "RegistrySettings",
    "ServingSettings",
]
