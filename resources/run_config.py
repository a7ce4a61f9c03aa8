"""The run-config file: the per-run choices (mirrors, hyperparameters, check thresholds,
monitoring bounds) that `make run` passes with ``-c`` and that sensors, which get no run
config of their own, read their bounds from and pass to the runs they request.

Its location is a deployment-wide setting: ``$MNIST_RUN_CONFIG``, by default the project's
own ``run_config.yaml`` (found from this package, not from the working directory); in the
image, ``/app/run_config.yaml``, and on Kubernetes the ``mnist-run-config`` ConfigMap.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from dagster import ConfigurableResource

from resources.environment import setting

PROJECT_RUN_CONFIG = Path(__file__).resolve().parents[1] / "run_config.yaml"


class RunConfigFile(ConfigurableResource):
    path: str = setting(str(PROJECT_RUN_CONFIG), env="MNIST_RUN_CONFIG", description="The run-config YAML file.")

    def load(self) -> dict:
        """The file's content as written (a run config); a clear error if it is missing."""
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"run config {path} not found: set $MNIST_RUN_CONFIG to the run_config.yaml to use")
        return yaml.safe_load(path.read_text()) or {}
