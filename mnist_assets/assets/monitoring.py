"""Monitoring: what production traffic looks like, from the endpoint's request log."""

import time

import numpy as np
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from mnist_assets import metadata
from mnist_assets.assets.delivery import MODEL_DEPLOYMENT
from mnist_assets.assets.models import OWNERS
from mnist_assets.config import MonitoringConfig
from mnist_delivery.traffic import window_traffic
from mnist_ml import plots
from mnist_ml.datasets import class_counts
from mnist_ml.drift import drift_reasons
from resources import DataStore, ModelDeployer


def training_class_counts(data_store: DataStore) -> list[int]:
    """Digits per class in the MNIST training labels, the reference for drift."""
    labels = data_store.load_arrays("mnist", keys=["y_train"])["y_train"]  # not the 47 MB of images
    return list(class_counts(labels, [str(d) for d in range(10)]).values())


@asset(
    group_name="monitoring",
    owners=OWNERS,
    deps=[MODEL_DEPLOYMENT.key],
    description="A window of production traffic from the request log: volume, out-of-distribution "
    "rate and trend, predicted classes vs training (PSI, chi-square), confidence, accuracy where "
    "labels were fed back, and the most out-of-distribution inputs.",
)
def production_monitoring(
    context: AssetExecutionContext, config: MonitoringConfig, data_store: DataStore, deployer: ModelDeployer
):
    training = training_class_counts(data_store)
    traffic = window_traffic(
        deployer.request_log_dir, training, config.window_minutes * 60, time.time(), config.buckets
    )
    summary = traffic.summary
    reasons = drift_reasons(summary, config.max_ood_rate, config.max_class_psi, config.min_images)
    context.log.info(f"{summary.images} images in the window; drift: {reasons or 'none'}")
    kept = sorted((p for p in traffic.predictions if p.image is not None), key=lambda p: -p.concept_score)
    worst = kept[: config.ood_grid_size]
    entries = {
        "images": summary.images,
        "ood_rate": summary.ood_rate,
        "ood_slope_per_hour": summary.ood_slope_per_hour,
        "class_psi": summary.psi,
        "class_chi_square": summary.chi_square,
        "mean_confidence": summary.mean_confidence,
        "labelled": summary.labelled,
        "production_accuracy": summary.accuracy if summary.accuracy is not None else "no labels yet",
        "drift": "; ".join(reasons) or "none",
        "malformed_log_lines": traffic.malformed_lines,
        "summary": MetadataValue.json(summary.as_dict()),
        "traffic": metadata.png(plots.traffic_timeseries(summary.ood_trend, config.max_ood_rate), "traffic"),
        "predicted_classes": metadata.png(plots.class_distribution(training, summary.class_counts), "classes"),
    }
    if worst:
        grid = plots.image_grid(np.stack([p.image for p in worst]), [f"{p.concept_score:.3f}" for p in worst])
        entries["most_out_of_distribution"] = metadata.png(grid, "most out-of-distribution inputs")
        data_store.write_bytes("plots/production_most_ood.png", grid)
    return MaterializeResult(metadata=entries)
