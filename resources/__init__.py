"""Dagster resources: the only code that touches the outside world (files, mirrors, the
model registry, serving, Dagster's own storage). Each has a local default; deployment-wide
settings come from environment variables, declared on the resource's fields
(``resources.environment``)."""

from resources.alerts import AlertWebhook
from resources.data_store import DataStore
from resources.deployer import ModelDeployer
from resources.model_registry import ModelRegistry
from resources.run_config import RunConfigFile

__all__ = ["AlertWebhook", "DataStore", "ModelDeployer", "ModelRegistry", "RunConfigFile"]
