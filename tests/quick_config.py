"""The run config of a quick but complete chain (one epoch per model, gates lowered to
match) with every location under one folder: for tests and benchmarks that run the
real pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DRIFT_ON_OOD = {"window_minutes": 30, "min_images": 100, "max_ood_rate": 0.3, "cooldown_minutes": 0}


def quick_run_config(root: Path, mnist_mirrors: Sequence[str], notmnist_mirrors: Sequence[str]) -> dict:
    return {
        "data_store": {"root": str(root / "data")},
        "registry": {"root": str(root / "models")},
        "serving": {"port": 0, "state_dir": str(root / "serving")},
        "mnist": {"mirrors": list(mnist_mirrors)},
        "notmnist": {"mirrors": list(notmnist_mirrors)},
        "classifier": {"epochs": 1, "min_test_accuracy": 0.9},
        "concept_model": {"epochs": 1, "min_detection_rate": 0.5, "max_false_positive_rate": 0.05},
        "deployment_tests": {
            "min_accuracy": 0.9,
            "min_notmnist_flag_rate": 0.5,
            "min_noisy_flag_rate": 0.5,
            "max_clean_flag_rate": 0.05,
            "latency_requests": 50,
        },
    }
