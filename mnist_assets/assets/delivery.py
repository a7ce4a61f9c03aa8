"""Delivery assets: deploy the published version to the endpoint and test the deployed
endpoint over HTTP, rolling back if it fails."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from mnist_assets import metadata
from mnist_assets.assets.data import mnist_dataset, notmnist_dataset
from mnist_assets.assets.models import OWNERS
from mnist_assets.assets.publish import uploaded_model
from mnist_assets.checks import DEPLOYMENT_CHECKS, DEPLOYMENT_GATES, deployment_checks
from mnist_assets.config import DeploymentTestConfig
from mnist_assets.k8s import DELIVERY_POD
from mnist_delivery.acceptance import run_acceptance
from mnist_ml import plots
from mnist_ml.model_contract import (
    CONCEPT_MODEL,
    TEST_TRAFFIC,
)
from mnist_ml.registry import FileModelRepository, ModelVersion, RegistryError
from resources import DataStore, ModelDeployer, ModelRegistry


@asset(
    group_name="delivery",
    owners=OWNERS,
    deps=[uploaded_model],
    op_tags=DELIVERY_POD,
    description="The candidate version serving at the inference endpoint (KServe model server, "
    "v1 and v2 protocols), swapped in without dropping requests, and promoted to 'production'.",
)
def model_deployment(context: AssetExecutionContext, registry: ModelRegistry, deployer: ModelDeployer):
    repository = registry.repository()
    candidate = repository.resolve("candidate")
    endpoint = deployer.deploy(candidate.path, str(candidate.version), log=context.log.info)
    aliases = repository.promote(candidate.version)
    context.log.info(f"version {candidate.version} serves at {endpoint.url}; aliases now {aliases}")
    return MaterializeResult(
        metadata={
            "url": MetadataValue.url(endpoint.url),
            "port": endpoint.port,
            "pid": endpoint.pid,
            "version": candidate.version,
            "previous_version": aliases.get("previous", "none"),
            "server_log": MetadataValue.path(endpoint.log_file),
        }
    )


def _roll_back(repository: FileModelRepository, deployer: ModelDeployer, failed: ModelVersion, reason: str, log) -> str:
    """Mark the version failed and bring the previous production version back; say what serves."""
    repository.mark_failed(failed.version, reason)
    try:
        previous = repository.rollback()
    except RegistryError as exc:
        deployer.stop(log=log)
        return f"nothing: the endpoint was stopped, as there is no earlier good version ({exc})"
    endpoint = deployer.deploy(previous.path, str(previous.version), log=log)
    return f"version {previous.version} at {endpoint.url}"


@asset(
    group_name="delivery",
    owners=OWNERS,
    deps=[model_deployment, mnist_dataset, notmnist_dataset],
    op_tags=DELIVERY_POD,
    check_specs=DEPLOYMENT_CHECKS,
    description="Tests of the deployed endpoint over HTTP: MNIST accuracy, out-of-distribution "
    "flags on notMNIST, noisy and clean digits, single-image latency, malformed requests. "
    "A failing version is rolled back and marked failed.",
)
def deployment_test_results(
    context: AssetExecutionContext,
    config: DeploymentTestConfig,
    data_store: DataStore,
    registry: ModelRegistry,
    deployer: ModelDeployer,
):
    repository = registry.repository()
    endpoint = deployer.current(log=context.log.info)
    if endpoint is None:
        raise Failure("no endpoint is running: materialize model_deployment first")
    version = repository.get(int(endpoint.version))
    noisy = version.manifest["training"][CONCEPT_MODEL]["config"]
    report = run_acceptance(
        deployer.client(endpoint, traffic=TEST_TRAFFIC),
        data_store.load_arrays("mnist"),
        data_store.load_arrays("notmnist")["x"],
        noise_amplitude=noisy["noise_amplitude"],
        seed=noisy["seed"],
        latency_requests=config.latency_requests,
        log=context.log.info,
    )
    values = {**report.as_dict(), "p99_latency_ms": report.latency_ms["p99"]}
    checks = deployment_checks(values, config.model_dump())
    failed = [c.check_name for c in checks if not c.passed]
    if report.version != endpoint.version:
        failed.append(f"the endpoint answered as version {report.version}, not {endpoint.version}")
    now_serving = f"version {endpoint.version} at {endpoint.url}"
    if failed:
        reason = "failed deployment tests: " + ", ".join(failed)
        now_serving = _roll_back(repository, deployer, version, reason, context.log.info)
        context.log.error(f"version {version.version} {reason}; rolled back; now serving {now_serving}")
    rates = {k: values[k] for k in ("accuracy", "notmnist_flag_rate", "noisy_flag_rate", "clean_flag_rate")}
    bounds = {value: getattr(config, bound) for value, bound, _ in DEPLOYMENT_GATES.values() if value in rates}
    yield MaterializeResult(
        metadata={
            "tested_version": version.version,
            "now_serving": now_serving,
            "results": metadata.table(
                {**rates, **{f"latency_{k}_ms": v for k, v in report.latency_ms.items()}, "seconds": report.seconds},
                "measure",
                "value",
            ),
            "malformed_requests": MetadataValue.json(report.malformed),
            "images_scored": report.images,
            "test_seconds": report.seconds,
            "rates": metadata.png(plots.rate_bars(rates, bounds, f"version {version.version}"), "rates"),
            "latency": metadata.png(plots.latency_histogram(report.latencies_ms, "single-image requests"), "latency"),
        },
        check_results=checks,
    )
    if failed:
        raise Failure(
            description=f"version {version.version} {reason}. It is marked failed in the registry; "
            f"now serving {now_serving}.",
            metadata={"now_serving": now_serving},
        )
