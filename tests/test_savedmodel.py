"""The SavedModel contract servers rely on: signature name, input name and dtype, outputs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnist_ml.classifier import build_classifier
from mnist_ml.concept import build_autoencoder
from mnist_ml.model_contract import CLASSIFIER_OUTPUTS, CONCEPT_OUTPUTS, INPUT_NAME, SIGNATURE, read_concept_calibration
from mnist_ml.savedmodel import LoadedModel, export_classifier, export_concept_model, write_concept_calibration


def _signature(path):
    return tf.saved_model.load(str(path)).signatures[SIGNATURE]


def test_classifier_signature_and_outputs(tmp_path):
    model = build_classifier("dense", [16], seed=0)
    export_classifier(model, tmp_path / "clf")
    signature = _signature(tmp_path / "clf")
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == [INPUT_NAME]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 28, 28]
    assert set(signature.structured_outputs) == set(CLASSIFIER_OUTPUTS)

    imgs = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    out = LoadedModel(tmp_path / "clf")(imgs)
    assert out["probabilities"].shape == (5, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["class_ids"], out["probabilities"].argmax(axis=1))
    # The export computes exactly what the Keras model computes.
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(model(imgs)).numpy(), rtol=1e-5, atol=1e-6)


def test_cnn_classifier_exports(tmp_path):
    export_classifier(build_classifier("cnn", [8], seed=0), tmp_path / "cnn")
    out = LoadedModel(tmp_path / "cnn")(np.zeros((2, 28, 28), np.float32))
    assert out["class_ids"].shape == (2,)


def test_concept_score_is_reconstruction_mse_and_threshold_ships_inside(tmp_path):
    model = build_autoencoder([32, 8], seed=0)
    export_concept_model(model, tmp_path / "concept")
    write_concept_calibration(tmp_path / "concept", {"threshold": 0.05, "percentile": 99.0})

    imgs = np.random.default_rng(1).random((4, 28, 28), dtype=np.float32)
    score = LoadedModel(tmp_path / "concept")(imgs)["score"]
    expected = np.mean((model(imgs).numpy() - imgs) ** 2, axis=(1, 2))
    np.testing.assert_allclose(score, expected, rtol=1e-5)
    assert read_concept_calibration(tmp_path / "concept")["threshold"] == 0.05
    assert list(_signature(tmp_path / "concept").structured_outputs) == list(CONCEPT_OUTPUTS)
