"""Asset checks. Blocking quality gates on the models and the deployed candidate: a model that
fails them can't flow downstream. Non-blocking drift checks on production_monitoring, WARN or
ERROR by how far a measure went, so the UI shows the state of production at a glance.

The checks run inside the asset's step (the asset yields their results), so they see
exactly what the step produced; thresholds come from the asset's config."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from mnist_ml.drift import Measure

CLASSIFIER_ACCURACY = AssetCheckSpec(
    "test_accuracy_at_least_minimum",
    asset="mnist_classifier",
    blocking=True,
    description="The exported classifier's MNIST test accuracy reaches min_test_accuracy.",
)
CONCEPT_DETECTION = AssetCheckSpec(
    "detection_rate_at_least_minimum",
    asset="mnist_concept_model",
    blocking=True,
    description="The concept model flags at least min_detection_rate of notMNIST.",
)
CONCEPT_FALSE_POSITIVES = AssetCheckSpec(
    "false_positive_rate_at_most_maximum",
    asset="mnist_concept_model",
    blocking=True,
    description="The concept model flags at most max_false_positive_rate of clean MNIST test digits.",
)


def _gate(spec: AssetCheckSpec, value: float, bound: float, at_least: bool) -> AssetCheckResult:
    passed = value >= bound if at_least else value <= bound
    return AssetCheckResult(
        check_name=spec.name,
        asset_key=spec.asset_key,
        passed=bool(passed),
        severity=AssetCheckSeverity.ERROR,
        description=f"{value:.4f} {'>=' if at_least else '<='} {bound:.4f} required",
        metadata={"value": float(value), "bound": float(bound)},
    )


def classifier_checks(test_accuracy: float, min_test_accuracy: float) -> list[AssetCheckResult]:
    return [_gate(CLASSIFIER_ACCURACY, test_accuracy, min_test_accuracy, at_least=True)]


def concept_checks(
    detection_rate: float, false_positive_rate: float, min_detection_rate: float, max_false_positive_rate: float
) -> list[AssetCheckResult]:
    return [
        _gate(CONCEPT_DETECTION, detection_rate, min_detection_rate, at_least=True),
        _gate(CONCEPT_FALSE_POSITIVES, false_positive_rate, max_false_positive_rate, at_least=False),
    ]


# Gates on the deployed endpoint: check name -> (report value, config bound, bound is a minimum).
DEPLOYMENT_GATES = {
    "endpoint_accuracy": ("accuracy", "min_accuracy", True),
    "notmnist_flagged": ("notmnist_flag_rate", "min_notmnist_flag_rate", True),
    "noisy_digits_flagged": ("noisy_flag_rate", "min_noisy_flag_rate", True),
    "clean_digits_rarely_flagged": ("clean_flag_rate", "max_clean_flag_rate", False),
    "single_image_p99_latency": ("p99_latency_ms", "max_p99_latency_ms", False),
    "malformed_requests_rejected": ("malformed_rejected", None, True),
}
DEPLOYMENT_CHECKS = [
    AssetCheckSpec(
        name,
        asset="deployment_test_results",
        blocking=True,
        description=f"{value} {'>=' if at_least else '<='} {bound or 'every malformed request gets a 4xx'}",
    )
    for name, (value, bound, at_least) in DEPLOYMENT_GATES.items()
]


CHAMPION_CHECK = AssetCheckSpec(
    "no_worse_than_production",
    asset="deployment_test_results",
    blocking=True,
    description="The candidate is no worse than the version serving now, beyond the configured margins "
    "(accuracy, OOD detection, clean false positives, p99 latency), on the same sets through HTTP.",
)


def champion_check(comparisons: list, table: str, production_version: str | None) -> AssetCheckResult:
    """``comparisons`` from ``mnist_delivery.gate.compare``; none when nothing served before."""
    worse = [c.measure for c in comparisons if not c.passed]
    if production_version is None:
        description = "no version served before: only the absolute checks apply"
    else:
        description = f"worse than version {production_version}: {', '.join(worse)}" if worse else "no worse"
    return AssetCheckResult(
        check_name=CHAMPION_CHECK.name,
        asset_key=CHAMPION_CHECK.asset_key,
        passed=not worse,
        severity=AssetCheckSeverity.ERROR,
        description=description,
        metadata={"comparison": MetadataValue.md(table or description)},
    )


def deployment_checks(values: dict[str, float], bounds: dict[str, float]) -> list[AssetCheckResult]:
    """``values`` holds the report's numbers by name; ``bounds`` the config's thresholds."""
    return [
        _gate(spec, values[value], bounds[bound] if bound else 1.0, at_least)
        for spec, (value, bound, at_least) in zip(DEPLOYMENT_CHECKS, DEPLOYMENT_GATES.values(), strict=True)
    ]


# Drift on production_monitoring, one check per mnist_ml.drift measure: yellow (WARN) past the
# warn bound, red (ERROR) past the error bound. Never blocking: nothing runs downstream of it.
MONITORING_CHECKS = {
    "ood_rate": "Share of inputs the concept model flags, against warn_ood_rate / max_ood_rate.",
    "class_psi": "PSI of the predicted classes against the training labels (warn_class_psi / max_class_psi).",
    "estimated_accuracy_drop": "Label-free (ATC) accuracy estimate below its held-out value, in points "
    "(warn_accuracy_drop_points / max_accuracy_drop_points).",
    "confidence_distribution": "KS test of the top-class probabilities against held-out ones "
    "(p-value below ks_warn_p_value / ks_error_p_value).",
    "concept_score_distribution": "KS test of the concept scores against held-out digits' "
    "(p-value below ks_warn_p_value / ks_error_p_value).",
}
MONITORING_CHECK_SPECS = [
    AssetCheckSpec(name, asset="production_monitoring", description=description)
    for name, description in MONITORING_CHECKS.items()
]


def monitoring_checks(found: list[Measure]) -> list[AssetCheckResult]:
    """One result per measure: passed when "ok" or "unknown" (too few images, no calibration)."""
    return [
        AssetCheckResult(
            check_name=measure.check,
            asset_key="production_monitoring",
            passed=measure.level in ("ok", "unknown"),
            severity=AssetCheckSeverity.WARN if measure.level == "warn" else AssetCheckSeverity.ERROR,
            description=f"{measure.level}: {measure.describe()}",
            metadata={"value": measure.value, "warn": measure.warn, "error": measure.error, "level": measure.level},
        )
        for measure in found
    ]
