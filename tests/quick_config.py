"""A quick but complete chain (one epoch per model, gates lowered to match) with every
location under one folder, for tests and benchmarks that run the real pipeline: the run
config (per-run choices), and where things live, as the environment a subprocess gets
(``quick_environment``) or as resources for a run in this process (``quick_resources``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dagster import Definitions, JobDefinition

DRIFT_ON_OOD = {"window_minutes": 30, "min_images": 100, "max_ood_rate": 0.3, "cooldown_minutes": 0}


def quick_run_config(mnist_mirrors: Sequence[str], notmnist_mirrors: Sequence[str]) -> dict:
    return {
        "mnist": {"mirrors": list(mnist_mirrors)},
        "notmnist": {"mirrors": list(notmnist_mirrors)},
        # The small dense network, one epoch: seconds instead of the CNN's half minute.
        "classifier": {"architecture": "dense", "hidden_units": [256, 64], "learning_rate": 2e-3, "epochs": 1}
        | {"min_test_accuracy": 0.9},
        "concept_model": {"epochs": 1, "min_detection_rate": 0.5, "max_false_positive_rate": 0.05},
        "deployment_tests": {
            "min_accuracy": 0.9,
            "min_notmnist_flag_rate": 0.5,
            "min_noisy_flag_rate": 0.5,
            "max_clean_flag_rate": 0.05,
            "latency_requests": 50,
        },
    }


def quick_environment(root: Path) -> dict[str, str]:
    """The MNIST_* settings that put data, registry and serving state under ``root`` and the
    endpoint on a free port."""
    return {
        "MNIST_DATA_ROOT": str(root / "data"),
        "MNIST_REGISTRY_ROOT": str(root / "models"),
        "MNIST_SERVING_STATE_DIR": str(root / "serving"),
        "MNIST_SERVING_PORT": "0",
    }


def quick_resources(root: Path) -> dict:
    """The same settings as resources, for runs in this process."""
    from resources import DataStore, ModelDeployer, ModelRegistry, RunConfigFile

    return {
        "data_store": DataStore(root=str(root / "data")),
        "registry": ModelRegistry(root=str(root / "models")),
        "deployer": ModelDeployer(state_dir=str(root / "serving"), port=0),
        "run_config": RunConfigFile(),  # production_monitoring's, for runs without config of their own
    }


def quick_job(name: str, root: Path) -> JobDefinition:
    """The code location's job ``name`` bound to ``quick_resources(root)``."""
    from mnist_assets import jobs

    job = next(job for job in (jobs.mnist_training, jobs.mnist_pipeline) if job.name == name)
    return Definitions(assets=jobs.ALL_ASSETS, jobs=[job], resources=quick_resources(root)).resolve_job_def(name)
