"""The model card: rendered from a manifest (every section, real numbers, "not recorded" for
what an older manifest lacks) and written into the version by FileModelRepository.publish
before the version is sealed (read-only, the version number in it, never replacing the
manifest or an artifact).

Not covered: the card of a version the real pipeline published (tests/test_label_free_shift.py
reads it from the registry after mnist_pipeline)."""

from __future__ import annotations

import os

import pytest

from mnist_ml.model_card import MISSING, MODEL_CARD, render
from mnist_ml.registry import FileModelRepository, RegistryError

MANIFEST = {
    "version": 7,
    "model_name": "mnist",
    "dagster_run_id": "run-7",
    "data_checksums": {"mnist_dataset": {"train-images-idx3-ubyte.gz": "ab" * 32}, "notmnist_dataset": "cd" * 32},
    "training": {
        "classifier": {
            "test_accuracy": 0.9812,
            "per_class_accuracy": {str(d): 0.97 + d / 1000 for d in range(10)},
            "atc": {"threshold": 0.7396, "validation_accuracy": 0.9802, "validation_images": 6000},
            "config": {"min_test_accuracy": 0.97, "validation_fraction": 0.1, "seed": 0},
        },
        "concept_model": {
            "threshold": 0.019986,
            "notmnist": {"detection_rate": 0.9991, "false_positive_rate": 0.0065, "roc_auc": 0.9999},
            "config": {"threshold_percentile": 99.0, "min_detection_rate": 0.95, "max_false_positive_rate": 0.02},
        },
    },
}


def test_card_covers_every_section_from_the_manifest():
    card = render(MANIFEST)
    for heading in (
        "# Model card: mnist version 7",
        "## Intended use",
        "## Training data",
        "## Metrics",
        "## Out-of-distribution threshold",
        "## Label-free accuracy estimate (ATC)",
        "## Known limits",
        "## Tests passed before publishing",
        "## Tests after publishing",
    ):
        assert heading in card
    assert f"`train-images-idx3-ubyte.gz`: sha256 `{'ab' * 32}`" in card
    assert "| 9 | 0.9790 |" in card and "**0.9812**" in card
    assert "**0.019986**: the 99.0th percentile" in card and "about 1.0 % of clean digits" in card
    assert "Threshold **0.7396**" in card and "held-out split (6000 digits)" in card
    assert "0.9812 >= 0.97" in card and "0.0065 <= 0.02" in card
    assert "Dagster run `run-7`" in card and "`failed/7.json`" in card
    older = render({"version": 1, "training": {"classifier": {"test_accuracy": 0.98}}})
    assert f"Threshold **{MISSING}**" in older and "**0.9800**" in older


def test_publish_seals_the_card_with_the_version(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"pb")
    repository = FileModelRepository(tmp_path / "registry")
    version = repository.publish({"classifier": model}, {"note": "x"}, documents=lambda m: {MODEL_CARD: render(m)})
    card = version.path / MODEL_CARD
    assert card.read_text().startswith("# Model card: mnist version 1\n")
    assert not os.access(card, os.W_OK) or os.geteuid() == 0  # root ignores the mode bits
    assert card.stat().st_mode & 0o222 == 0, "sealed read-only with the version"
    with pytest.raises(RegistryError, match="would replace the manifest"):
        repository.publish({"classifier": model}, {}, documents=lambda m: {"manifest.json": "{}"})
    assert repository.versions() == [1]
