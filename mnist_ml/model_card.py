"""A model card for a published version, in Markdown, generated from its registry manifest alone.

Invariants: a pure function of the manifest (the same manifest gives the same card), so it can be
written into the version folder while the version is built, before it is sealed read-only
(``FileModelRepository.publish(..., documents=...)``). It states only what the manifest holds or
what the project's tests establish, and says where what happens after publishing (the deployment
tests, the failed mark, promotions) is recorded, since a sealed version never changes. A manifest
without a field (a version published before it existed) gets "not recorded", never a guess."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODEL_CARD = "MODEL_CARD.md"
MISSING = "not recorded"


def _get(mapping: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return MISSING
        mapping = mapping[key]
    return mapping


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _checksums(checksums: Any) -> list[str]:
    if not isinstance(checksums, Mapping):
        return [f"- {MISSING}"]
    lines = []
    for dataset, value in checksums.items():
        if isinstance(value, Mapping):
            lines += [f"- `{dataset}` / `{name}`: sha256 `{digest}`" for name, digest in value.items()]
        else:
            lines.append(f"- `{dataset}`: sha256 `{value}`")
    return lines


def _per_class(per_class: Any) -> list[str]:
    if not isinstance(per_class, Mapping):
        return [MISSING]
    return ["| digit | test accuracy |", "| --- | --- |", *(f"| {d} | {_num(a)} |" for d, a in per_class.items())]


def render(manifest: Mapping[str, Any]) -> str:
    """The card's Markdown text."""
    classifier = _get(manifest, "training", "classifier")
    concept = _get(manifest, "training", "concept_model")
    clf_config = _get(classifier, "config")
    concept_config = _get(concept, "config")
    version = _get(manifest, "version")
    atc = _get(classifier, "atc")
    percentile = _get(concept_config, "threshold_percentile")
    flagged = _num(100 - percentile, 1) if isinstance(percentile, int | float) else MISSING
    lines = [
        f"# Model card: {_get(manifest, 'model_name')} version {version}",
        "",
        f"Published {_get(manifest, 'created_at')} by Dagster run `{_get(manifest, 'dagster_run_id')}`; "
        f"models trained in runs {_get(manifest, 'trained_in_run')}. Generated from `manifest.json` when "
        "the version was published; the version folder is read-only from then on.",
        "",
        "## Intended use",
        "",
        "Classify single handwritten digits 0-9 given as 28x28 grayscale images, white strokes on black, "
        "size-normalized and centred as in MNIST (uint8 pixels, or floats in [0, 1]). Every prediction "
        "comes with the concept model's score and out-of-distribution flag: a flagged input is not a digit "
        "of the kind the classifier was trained on, and its class should not be trusted. Not for letters, "
        "photographs, other scripts or multi-digit images, and not for decisions without a human check "
        "where a wrong digit is costly.",
        "",
        "## Training data",
        "",
        "MNIST training set (60,000 digits) plus the production-labelled digits of the run, minus a "
        f"held-out share of {_get(clf_config, 'validation_fraction')} (seed {_get(clf_config, 'seed')}); "
        "notMNIST letters (A-J) only to evaluate the concept model. Checksums of the data as downloaded "
        "(sha256 of each decompressed payload):",
        "",
        *_checksums(_get(manifest, "data_checksums")),
        "",
        "## Models",
        "",
        f"- classifier: `{_get(clf_config, 'architecture')}`, hidden units {_get(clf_config, 'hidden_units')}, "
        f"{_get(clf_config, 'epochs')} epochs, learning rate {_get(clf_config, 'learning_rate')}, "
        f"{_get(classifier, 'parameters')} parameters",
        f"- concept model: autoencoder, encoder units {_get(concept_config, 'encoder_units')}, "
        f"{_get(concept_config, 'epochs')} epochs, {_get(concept, 'parameters')} parameters",
        f"- served as one ONNX graph; parity with the SavedModels on the MNIST test digits: "
        f"{_get(manifest, 'onnx', 'parity')}",
        "",
        "## Metrics (MNIST test set, 10,000 digits)",
        "",
        f"Classifier test accuracy **{_num(_get(classifier, 'test_accuracy'))}**. Per class:",
        "",
        *_per_class(_get(classifier, "per_class_accuracy")),
        "",
        f"Concept model on notMNIST: detection rate {_num(_get(concept, 'notmnist', 'detection_rate'))}, "
        f"ROC AUC {_num(_get(concept, 'notmnist', 'roc_auc'))}; on noisy digits (uniform noise "
        f"±{_get(concept_config, 'noise_amplitude')}): detection rate "
        f"{_num(_get(concept, 'noisy_mnist', 'detection_rate'))}; clean test digits flagged: "
        f"{_num(_get(concept, 'notmnist', 'false_positive_rate'))}.",
        "",
        "## Out-of-distribution threshold",
        "",
        f"An input is flagged when its concept score (reconstruction MSE) exceeds "
        f"**{_num(_get(concept, 'threshold'), 6)}**: the {percentile}th "
        "percentile of the scores of held-out clean MNIST digits (the autoencoder's validation split), so "
        f"about {flagged} % "
        "of clean digits are flagged by construction.",
        "",
        "## Label-free accuracy estimate (ATC)",
        "",
        f"Threshold **{_num(_get(atc, 'threshold'))}** on the top-class probability: on the classifier's "
        f"held-out split ({_get(atc, 'validation_images')} digits) the share of predictions at or above it "
        f"equals the held-out accuracy {_num(_get(atc, 'validation_accuracy'))}. In production, the share of "
        "predictions at or above it estimates accuracy without labels (`production_monitoring`); the drift "
        "sensor acts when it falls more than `monitoring.max_accuracy_drop_points` below the held-out value.",
        "",
        "## Known limits",
        "",
        "- Trained on MNIST only: digits written in another style or size are not flagged as out of "
        "distribution although accuracy falls (digits resampled to 23x23 px and centred cost a one-epoch "
        "model over 10 points while almost none are flagged: `tests/test_label_free_shift.py`). Watch the "
        "ATC estimate, not only the OOD rate.",
        "- The ATC estimate assumes the model is less confident where it is wrong; a shift the model is "
        "confidently wrong about (inverted colours, rotated digits) is underestimated.",
        "- The concept model was checked against notMNIST letters and uniform noise only.",
        "- No fairness or robustness evaluation beyond these sets; no adversarial inputs.",
        "",
        "## Tests passed before publishing",
        "",
        f"- classifier test accuracy {_num(_get(classifier, 'test_accuracy'))} >= "
        f"{_get(clf_config, 'min_test_accuracy')} (blocking check `test_accuracy_at_least_minimum`)",
        f"- concept model notMNIST detection rate {_num(_get(concept, 'notmnist', 'detection_rate'))} >= "
        f"{_get(concept_config, 'min_detection_rate')} (`detection_rate_at_least_minimum`)",
        f"- clean digits flagged {_num(_get(concept, 'notmnist', 'false_positive_rate'))} <= "
        f"{_get(concept_config, 'max_false_positive_rate')} (`false_positive_rate_at_most_maximum`)",
        "- ONNX parity with the SavedModels (class ids identical, outputs within 1e-5), as above",
        "",
        "## Tests after publishing",
        "",
        "The deployment tests (accuracy through HTTP, OOD flag rates, latency, malformed requests, no worse "
        "than production) run on the deployed candidate after this card was sealed. Their results are the "
        f"`deployment_test_results` asset's materialization in Dagster run `{_get(manifest, 'dagster_run_id')}` "
        f"and its checks; a version that failed them is marked in the registry's `failed/{version}.json`, "
        "and `aliases.json` records whether it became production (`mnist-ops list` shows both).",
        "",
    ]
    return "\n".join(lines)
