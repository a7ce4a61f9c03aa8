"""Export and load the two models as TensorFlow SavedModels with explicit signatures.

Servers (TF Serving, KServe, our own endpoint) call a SavedModel by signature name and
tensor names, so we fix both (see ``model_contract``) instead of relying on Keras layer
auto-names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mnist_ml.model_contract import CONCEPT_SIDECAR, INPUT_NAME, SIGNATURE

_IMGS_SPEC = tf.TensorSpec([None, 28, 28], tf.float32, name=INPUT_NAME)


def _write(model: keras.Model, fn: Any, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=fn, input_signature=[_IMGS_SPEC])
    archive.write_out(str(path), verbose=False)


def export_classifier(model: keras.Model, path: Path) -> None:
    """Write a classifier whose Keras output is logits over the 10 digits."""

    def serve(imgs: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.nn.softmax(model(imgs, training=False), axis=-1)
        return {"class_ids": tf.argmax(probabilities, axis=-1), "probabilities": probabilities}

    _write(model, serve, path)


def export_concept_model(autoencoder: keras.Model, path: Path) -> None:
    """Write the autoencoder as a scorer; calibrate it on the export, then add the sidecar."""

    def serve(imgs: tf.Tensor) -> dict[str, tf.Tensor]:
        reconstruction = tf.reshape(autoencoder(imgs, training=False), tf.shape(imgs))
        return {"score": tf.reduce_mean(tf.square(reconstruction - imgs), axis=[1, 2])}

    _write(autoencoder, serve, path)


def write_concept_calibration(path: Path, calibration: dict[str, Any]) -> None:
    """Ship the threshold (and how it was chosen) inside the SavedModel folder."""
    sidecar = Path(path) / CONCEPT_SIDECAR
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(calibration, indent=2, sort_keys=True))


class LoadedModel:
    """A SavedModel's serving signature, called with numpy images, returning numpy outputs;
    ``weights`` are its variables as numpy arrays, in layer order."""

    BATCH = 1000  # images per call: a CNN's activations for 10,000 digits at once take gigabytes

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        loaded = tf.saved_model.load(str(path))
        self.weights = [variable.numpy() for variable in loaded.variables]
        self._fn = loaded.signatures[SIGNATURE]

    def __call__(self, imgs: np.ndarray) -> dict[str, np.ndarray]:
        parts = [
            {name: tensor.numpy() for name, tensor in self._fn(**{INPUT_NAME: tf.constant(chunk, tf.float32)}).items()}
            for chunk in np.array_split(imgs, max(1, -(-len(imgs) // self.BATCH)))
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
