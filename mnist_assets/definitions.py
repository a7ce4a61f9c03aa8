"""The code location: ``dagster dev -w workspace.yaml`` or ``-m mnist_assets.definitions``.

Resources are built here, once, from the environment (``resources.environment``): the runs
and the sensors use these same objects."""

import os

from dagster import Definitions

from mnist_assets.jobs import ALL_ASSETS, mnist_pipeline, mnist_pipeline_k8s, mnist_training, monitoring
from mnist_assets.sensors import drift_sensor, failure_alert, new_data_sensor
from mnist_serving.options import ServerOptions
from resources import AlertWebhook, DataStore, ModelDeployer, ModelRegistry, RunConfigFile
from resources.environment import from_environment

# The deployer reads the server's options from $MNIST_SERVER_* when it deploys; a bad one
# stops the load here, as a bad MNIST_* setting does in from_environment.
ServerOptions.from_environment(os.environ)

defs = Definitions(
    assets=ALL_ASSETS,
    jobs=[mnist_pipeline, mnist_pipeline_k8s, mnist_training, monitoring],
    sensors=[drift_sensor, new_data_sensor, failure_alert],
    resources={
        "data_store": from_environment(DataStore),
        "registry": from_environment(ModelRegistry),
        "deployer": from_environment(ModelDeployer),
        "run_config": from_environment(RunConfigFile),
        "alert_webhook": AlertWebhook(),
    },
)
