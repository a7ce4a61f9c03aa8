"""Delivery: the published candidate is started beside the version serving now, tested at
its private address (absolute gates, then champion/challenger against production on the
same sets), and only if it passes does public traffic move to it; a smoke test on the public
address follows, and a failing smoke test rolls back.

One op materializes both delivery assets, so the candidate, the deploy lock and the
deployer's lease live through the whole sequence: ``model_deployment`` (what serves, only
materialized when traffic moved) and ``deployment_test_results`` (the tests, the comparison,
and the checks)."""

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from mnist_assets import metadata
from mnist_assets.assets.data import mnist_dataset, notmnist_dataset
from mnist_assets.assets.models import OWNERS
from mnist_assets.assets.publish import uploaded_model
from mnist_assets.checks import CHAMPION_CHECK, DEPLOYMENT_CHECKS, DEPLOYMENT_GATES, champion_check, deployment_checks
from mnist_assets.config import DeploymentTestConfig
from mnist_assets.k8s import DELIVERY_POD
from mnist_delivery.acceptance import AcceptanceReport, run_acceptance, smoke_test
from mnist_delivery.gate import compare, markdown_table
from mnist_ml import plots
from mnist_ml.model_contract import CONCEPT_MODEL, TEST_TRAFFIC
from mnist_ml.registry import FileModelRepository, ModelVersion, RegistryError
from resources import DataStore, ModelDeployer, ModelRegistry

SMOKE_IMAGES = 1000  # MNIST test digits sent to the public address after the switch

MODEL_DEPLOYMENT = AssetSpec(
    "model_deployment",
    deps=[uploaded_model],
    group_name="delivery",
    owners=OWNERS,
    skippable=True,  # not materialized when the candidate fails: traffic did not move
    description="The version serving at the public inference endpoint: a candidate that passed its "
    "tests at a private address, then took the traffic without dropping requests; 'production' alias.",
)
DEPLOYMENT_TEST_RESULTS = AssetSpec(
    "deployment_test_results",
    deps=[MODEL_DEPLOYMENT.key, mnist_dataset, notmnist_dataset],
    group_name="delivery",
    owners=OWNERS,
    description="Tests of the candidate at its private address, over HTTP, before any public request "
    "reaches it: MNIST accuracy, OOD flags on notMNIST, noisy and clean digits, single-image latency, "
    "malformed requests; side by side with the version serving now; and the smoke test after the switch.",
)


@multi_asset(
    name="deliver_candidate",
    specs=[MODEL_DEPLOYMENT, DEPLOYMENT_TEST_RESULTS],
    check_specs=[*DEPLOYMENT_CHECKS, CHAMPION_CHECK],
    op_tags=DELIVERY_POD,
    can_subset=False,
)
def deliver_candidate(
    context: AssetExecutionContext,
    config: DeploymentTestConfig,
    data_store: DataStore,
    registry: ModelRegistry,
    deployer: ModelDeployer,
):
    repository = registry.repository()
    version = repository.resolve("candidate")
    mnist, notmnist = data_store.load_arrays("mnist"), data_store.load_arrays("notmnist")["x"]
    noisy = version.manifest["training"][CONCEPT_MODEL]["config"]
    log = context.log.info
    with deployer.candidate(version.path, str(version.version), log=log) as (candidate, backend):
        production = backend.current()
        clients = {"candidate": deployer.client(candidate.url, traffic=TEST_TRAFFIC)}
        if production:
            clients["production"] = deployer.client(production.url, traffic=TEST_TRAFFIC)
        reports = run_acceptance(
            clients,
            mnist,
            notmnist,
            noise_amplitude=noisy["noise_amplitude"],
            seed=noisy["seed"],
            latency_requests=config.latency_requests,
            log=log,
        )
        report = reports["candidate"]
        checks = _checks(report, reports.get("production"), config, production.version if production else None)
        failed = [check.check_name for check in checks if not check.passed]
        if report.version != str(version.version):
            failed.append(f"the candidate answered as version {report.version}, not {version.version}")
        if not failed:
            expected = clients["candidate"].predict(mnist["x_test"][:SMOKE_IMAGES])["class_ids"]
            endpoint = backend.promote(candidate)
    if failed:
        reason = "failed its tests before taking traffic: " + ", ".join(failed)
        repository.mark_failed(version.version, reason)
        now_serving = f"version {production.version} at {production.url}" if production else "nothing"
        context.log.error(f"version {version.version} {reason}; it never served; serving: {now_serving}")
    else:
        public = deployer.client(endpoint.url, traffic=TEST_TRAFFIC)
        problems = smoke_test(public, mnist["x_test"][:SMOKE_IMAGES], expected, str(version.version))
        if problems:
            failed, reason = problems, "failed the smoke test on the public address: " + "; ".join(problems)
            now_serving = _serve_production_again(repository, deployer, version, reason, log)
            context.log.error(f"version {version.version} {reason}; rolled back; now serving {now_serving}")
        else:
            aliases = repository.promote(version.version)
            now_serving = f"version {version.version} at {endpoint.url}"
            yield MaterializeResult(
                asset_key=MODEL_DEPLOYMENT.key,
                metadata={
                    "url": MetadataValue.url(endpoint.url),
                    "version": version.version,
                    "tested_at": MetadataValue.url(candidate.url),
                    "traffic_moved_at": candidate.promoted_at,
                    "smoke_test": f"{SMOKE_IMAGES} digits at {endpoint.url}: same answers as at {candidate.url}",
                    "previous_version": aliases.get("previous", "none"),
                    "pid": endpoint.pid,
                    "server_log": MetadataValue.path(endpoint.log_file),
                },
            )
    yield _results(version, candidate.url, reports, checks, config, now_serving)
    if failed:
        raise Failure(
            description=f"version {version.version} {reason}. It is marked failed in the registry; "
            f"now serving {now_serving}.",
            metadata={"now_serving": now_serving},
        )


def _checks(
    report: AcceptanceReport, production: AcceptanceReport | None, config: DeploymentTestConfig, serving: str | None
) -> list:
    values = {**report.as_dict(), "p99_latency_ms": report.latency_ms["p99"]}
    comparisons = compare(report, production, config.margins()) if production else []
    table = markdown_table(comparisons, report.version, production.version) if production else ""
    return [*deployment_checks(values, config.model_dump()), champion_check(comparisons, table, serving)]


def _results(
    version: ModelVersion,
    tested_url: str,
    reports: dict[str, AcceptanceReport],
    checks: list,
    config: DeploymentTestConfig,
    now_serving: str,
) -> MaterializeResult:
    report = reports["candidate"]
    rates = {k: getattr(report, k) for k in ("accuracy", "notmnist_flag_rate", "noisy_flag_rate", "clean_flag_rate")}
    bounds = {value: getattr(config, bound) for value, bound, _ in DEPLOYMENT_GATES.values() if value in rates}
    champion = next(check for check in checks if check.check_name == CHAMPION_CHECK.name)
    return MaterializeResult(
        asset_key=DEPLOYMENT_TEST_RESULTS.key,
        metadata={
            "tested_version": version.version,
            "tested_at": MetadataValue.url(tested_url),
            "production_version": reports["production"].version if "production" in reports else "none",
            "versus_production": champion.metadata["comparison"],
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


def _serve_production_again(
    repository: FileModelRepository, deployer: ModelDeployer, failed: ModelVersion, reason: str, log
) -> str:
    """Mark the version failed and serve the production version again (it was never replaced in
    the registry: promotion comes after the smoke test); say what serves."""
    repository.mark_failed(failed.version, reason)
    try:
        production = repository.resolve("production")
    except RegistryError as exc:
        deployer.stop(log=log)
        return f"nothing: the endpoint was stopped, as there is no earlier good version ({exc})"
    endpoint = deployer.deploy(production.path, str(production.version), log=log)
    return f"version {production.version} at {endpoint.url}"
