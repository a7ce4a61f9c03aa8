"""Monitoring: what production traffic looks like, from the endpoint's request log.

Invariants:
- ``production_monitoring`` materializes by itself: its automation condition requests it once
  per tick of ``$MNIST_MONITORING_CRON`` (default every 15 minutes; never while a run of it is
  in progress), evaluated by the daemon through ``monitoring_automation`` (mnist_assets/
  definitions.py), which is on by default. The cadence is a deployment-wide setting, not a run
  choice: the daemon evaluates the condition before any run (and its run config) exists, and it
  is fixed when the definitions load, like the sensors' intervals. Its freshness policy warns
  when the latest materialization is older than two cron intervals and fails at four;
- a run that brings no config of its own (an automation run, "Materialize" in the UI) takes
  the ``monitoring`` section of the run-config file, the same one the drift sensor reads; a
  run of a job that maps ``run_config.yaml`` uses what it was given;
- the label-free estimates use the calibration in the registry manifest of the version that
  served most of the window; a version without one (published before it existed, or not in
  this registry) gets no estimate, and its checks say "unknown".
"""

import os
import time
from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster._utils.schedules import get_smallest_cron_interval, is_valid_cron_string

from mnist_assets import metadata
from mnist_assets.assets.delivery import MODEL_DEPLOYMENT
from mnist_assets.assets.models import OWNERS
from mnist_assets.checks import MONITORING_CHECK_SPECS, monitoring_checks
from mnist_assets.config import MonitoringConfig, PipelineConfig
from mnist_delivery.traffic import Traffic, most_out_of_distribution, window_traffic
from mnist_ml import plots
from mnist_ml.datasets import class_counts
from mnist_ml.drift import drift_reasons, measures
from mnist_ml.registry import RegistryError
from mnist_ml.shift import Calibration
from resources import DataStore, ModelDeployer, ModelRegistry, RunConfigFile

CRON_VARIABLE = "MNIST_MONITORING_CRON"
MONITORING_CRON = os.environ.get(CRON_VARIABLE, "*/15 * * * *")
if not is_valid_cron_string(MONITORING_CRON):
    raise ValueError(f"${CRON_VARIABLE}={MONITORING_CRON!r} is not a cron string (e.g. '*/15 * * * *')")
CRON_INTERVAL: timedelta = get_smallest_cron_interval(MONITORING_CRON)


def training_class_counts(data_store: DataStore) -> list[int]:
    """Digits per class in the MNIST training labels, the reference for drift."""
    labels = data_store.load_arrays("mnist", keys=["y_train"])["y_train"]  # not the 47 MB of images
    return list(class_counts(labels, [str(d) for d in range(10)]).values())


def recent_traffic(
    config: MonitoringConfig, data_store: DataStore, deployer: ModelDeployer, registry: ModelRegistry, now: float
) -> Traffic:
    """The monitoring window before ``now``, with the serving version's label-free calibration."""
    repository = registry.repository()

    def calibration_of(version: str) -> Calibration | None:
        try:
            return Calibration.from_manifest(repository.get(int(version)).manifest)
        except (RegistryError, ValueError):
            return None

    return window_traffic(
        deployer.request_log_dir,
        training_class_counts(data_store),
        config.window_minutes * 60,
        now,
        config.buckets,
        calibration_of,
    )


@asset(
    group_name="monitoring",
    owners=OWNERS,
    deps=[MODEL_DEPLOYMENT.key],
    check_specs=MONITORING_CHECK_SPECS,
    automation_condition=(
        AutomationCondition.cron_tick_passed(MONITORING_CRON).since_last_handled() & ~AutomationCondition.in_progress()
    ).with_label(f"every tick of {MONITORING_CRON} (${CRON_VARIABLE})"),
    freshness_policy=FreshnessPolicy.time_window(fail_window=4 * CRON_INTERVAL, warn_window=2 * CRON_INTERVAL),
    description="A window of production traffic from the request log: volume, out-of-distribution "
    "rate and trend, predicted classes vs training (PSI, chi-square), confidence, a label-free "
    "accuracy estimate (ATC) and KS tests of confidence and concept scores against training, "
    "accuracy where labels were fed back, and the most out-of-distribution inputs. Runs by itself "
    "on a cron; drift bounds are its checks.",
)
def production_monitoring(
    context: AssetExecutionContext,
    config: MonitoringConfig,
    data_store: DataStore,
    deployer: ModelDeployer,
    registry: ModelRegistry,
    run_config: RunConfigFile,
):
    if not context.run.run_config:
        config = PipelineConfig.model_validate(run_config.load()).monitoring
        context.log.info(f"no run config: the monitoring section of {run_config.path}")
    training = training_class_counts(data_store)
    traffic = recent_traffic(config, data_store, deployer, registry, time.time())
    summary = traffic.summary
    found = measures(summary, config.bounds())
    reasons = drift_reasons(summary, config.bounds())
    context.log.info(f"{summary.images} images in the window; drift: {reasons or 'none'}")
    worst = most_out_of_distribution(traffic.predictions, config.ood_grid_size)
    entries = {
        "images": summary.images,
        "serving_version": traffic.version or "no traffic",
        "ood_rate": summary.ood_rate,
        "ood_slope_per_hour": summary.ood_slope_per_hour,
        "class_psi": summary.psi,
        "class_chi_square": summary.chi_square,
        "mean_confidence": summary.mean_confidence,
        "estimated_accuracy": _or(summary.estimated_accuracy, "no calibration or no traffic"),
        "estimated_accuracy_drop_points": _or(summary.estimated_accuracy_drop_points, "unknown"),
        "confidence_ks_p_value": _or(summary.confidence_ks and summary.confidence_ks.p_value, "unknown"),
        "concept_score_ks_p_value": _or(summary.concept_score_ks and summary.concept_score_ks.p_value, "unknown"),
        "labelled": summary.labelled,
        "production_accuracy": _or(summary.accuracy, "no labels yet"),
        "drift": "; ".join(reasons) or "none",
        "malformed_log_lines": traffic.malformed_lines,
        "summary": MetadataValue.json(summary.as_dict()),
        "traffic": metadata.png(
            plots.traffic_timeseries(summary.ood_trend, config.max_ood_rate, summary.shift_trend), "traffic"
        ),
        "predicted_classes": metadata.png(plots.class_distribution(training, summary.class_counts), "classes"),
    }
    if len(worst):
        scores = traffic.predictions.concept_score[worst]
        grid = plots.image_grid(traffic.predictions.images(worst), [f"{score:.3f}" for score in scores])
        entries["most_out_of_distribution"] = metadata.png(grid, "most out-of-distribution inputs")
        data_store.write_bytes("plots/production_most_ood.png", grid)
    return MaterializeResult(metadata=entries, check_results=monitoring_checks(found))


def _or(value: float | None, missing: str) -> float | str:
    return missing if value is None else value
