"""The code location: ``dagster dev -w workspace.yaml`` or ``-m mnist_assets.definitions``.

Resources are built here, once, from the environment (``resources.environment``): the runs
and the sensors use these same objects."""

import os

from dagster import AutomationConditionSensorDefinition, DefaultSensorStatus, Definitions

from mnist_assets.assets import production_monitoring
from mnist_assets.jobs import ALL_ASSETS, mnist_pipeline, mnist_pipeline_k8s, mnist_training, monitoring
from mnist_assets.sensors import DRIFT_INTERVAL_S, drift_alert, drift_sensor, failure_alert, new_data_sensor
from mnist_serving.options import ServerOptions
from resources import AlertWebhook, DataStore, ModelDeployer, ModelRegistry, RunConfigFile
from resources.environment import from_environment

# The deployer reads the server's options from $MNIST_SERVER_* when it deploys; a bad one
# stops the load here, as a bad MNIST_* setting does in from_environment.
ServerOptions.from_environment(os.environ)

# Automation conditions are evaluated by an automation condition sensor in the daemon. Dagster
# would add `default_automation_condition_sensor`, but stopped until someone turns it on in the
# UI; this one targets production_monitoring (so no default one is made) and starts running.
monitoring_automation = AutomationConditionSensorDefinition(
    "monitoring_automation",
    target=[production_monitoring],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=DRIFT_INTERVAL_S,
    description="Evaluates production_monitoring's automation condition (a cron: $MNIST_MONITORING_CRON) "
    "and requests its runs.",
)

defs = Definitions(
    assets=ALL_ASSETS,
    jobs=[mnist_pipeline, mnist_pipeline_k8s, mnist_training, monitoring],
    sensors=[drift_sensor, new_data_sensor, failure_alert, drift_alert, monitoring_automation],
    resources={
        "data_store": from_environment(DataStore),
        "registry": from_environment(ModelRegistry),
        "deployer": from_environment(ModelDeployer),
        "run_config": from_environment(RunConfigFile),
        "alert_webhook": from_environment(AlertWebhook),
    },
)
