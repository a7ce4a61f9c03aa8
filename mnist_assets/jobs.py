"""Jobs, each configured from the one ``PipelineConfig`` (see ``run_config.yaml``)."""

from dagster import (
    AssetsDefinition,
    ConfigMapping,
    RunConfig,
    config_mapping,
    define_asset_job,
    multiprocess_executor,
)

from mnist_assets.assets import (
    deliver_candidate,
    mnist_classifier,
    mnist_concept_model,
    mnist_dataset,
    notmnist_dataset,
    production_labels,
    production_monitoring,
    uploaded_model,
)
from mnist_assets.config import PipelineConfig
from mnist_assets.k8s import gpu_step_config, pod_per_step_executor

# Which section of PipelineConfig configures which asset.
ASSET_SECTIONS = {
    mnist_dataset: "mnist",
    notmnist_dataset: "notmnist",
    mnist_classifier: "classifier",
    mnist_concept_model: "concept_model",
    deliver_candidate: "deployment_tests",
    production_monitoring: "monitoring",
}


def pipeline_config(assets: list[AssetsDefinition], pod_per_step: bool = False) -> ConfigMapping:
    """Spread the one config over a job's assets. It runs when a run is created, so a bad
    value fails before any step starts."""

    @config_mapping
    def spread(config: PipelineConfig) -> RunConfig:
        gpus = gpu_step_config(config.kubernetes.training_gpus)
        return RunConfig(
            execution={"config": {"per_step_k8s_config": gpus}} if pod_per_step else None,
            ops={
                asset.op.name: getattr(config, section) for asset, section in ASSET_SECTIONS.items() if asset in assets
            },
        )

    return spread


# Every job that deploys carries this run tag. Each instance config we ship (deploy/local/
# dagster.yaml, deploy/dagster.yaml, deploy/helm/values.yaml) lets one run with it be in
# progress at a time; the run queue holds the others.
DELIVERY_TAG = {"mnist/endpoint": "mnist"}


# Local runs: a process per step, forked from a server that has imported the code location
# once (Dagster and our modules, not TensorFlow), instead of a fresh interpreter importing it
# again for every step. Parallel steps still run in parallel. The server also imports the local
# instance's SQLite storage (SQLAlchemy, Alembic), which each step opens: about 0.45 s that every
# step launch paid before.
PRELOADED_MODULES = ["mnist_assets.definitions", "dagster._core.storage.sqlite_storage"]
PRELOADED_STEPS = multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": PRELOADED_MODULES}}}, name="preloaded_steps"
)


def _job(
    name: str,
    assets: list[AssetsDefinition],
    description: str,
    pod_per_step: bool = False,
    tags: dict[str, str] | None = None,
):
    return define_asset_job(
        name,
        selection=assets,
        config=pipeline_config(assets, pod_per_step),
        description=description,
        executor_def=pod_per_step_executor if pod_per_step else PRELOADED_STEPS,
        tags=tags,
    )


TRAINING = [mnist_dataset, notmnist_dataset, production_labels, mnist_classifier, mnist_concept_model]
PIPELINE = [*TRAINING, uploaded_model, deliver_candidate]
ALL_ASSETS = [*PIPELINE, production_monitoring]

mnist_training = _job(
    "mnist_training", TRAINING, "Download and verify both datasets, then train, export and check both models."
)
mnist_pipeline = _job(
    "mnist_pipeline",
    PIPELINE,
    "The whole chain: data, models, a registry version, the deployed endpoint and its tests.",
    tags=DELIVERY_TAG,
)
mnist_pipeline_k8s = _job(
    "mnist_pipeline_k8s",
    PIPELINE,
    "mnist_pipeline with each step in its own Kubernetes pod (dagster-k8s's k8s_job_executor): the two downloads "
    "and the two trainings run in parallel pods. Data passes through the shared data and models volumes.",
    pod_per_step=True,
    tags=DELIVERY_TAG,
)
monitoring = _job(
    "production_monitoring_job", [production_monitoring], "Summarize recent production traffic from the request log."
)
