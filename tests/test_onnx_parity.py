"""The publish-time ONNX export (mnist_ml.onnx_export): real SavedModels of both architectures
exported to one ONNX graph, run with ONNX Runtime, compared with TensorFlow's outputs; a graph
that does not reproduce the SavedModels is refused with ParityError. Parity references recorded
beside the SavedModels (as the training steps do) check the export in a process without
TensorFlow, and only for the exact files and images they were recorded on.

Covers: dense and CNN classifiers with the autoencoder, untrained (random weights give spread-out
probabilities, a stricter check than a confident trained model), on random images. Does not
cover: the 10,000 test digits and the manifest entry in a real publish (tests/test_pipeline.py
runs the publish asset), nor serving the graph (tests/test_serving.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mnist_ml.classifier import build_classifier
from mnist_ml.concept import build_autoencoder
from mnist_ml.model_contract import CLASSIFIER, CONCEPT_MODEL
from mnist_ml.onnx_export import ONNX_FILE, TOLERANCE, ParityError, ParityReference, export_checked
from mnist_ml.savedmodel import LoadedModel, export_classifier, export_concept_model, write_concept_calibration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((500, 28, 28), dtype=np.float32)


def _savedmodels(folder, architecture: str) -> dict:
    paths = {CLASSIFIER: folder / CLASSIFIER, CONCEPT_MODEL: folder / CONCEPT_MODEL}
    export_classifier(build_classifier(architecture, [32], seed=3), paths[CLASSIFIER])
    export_concept_model(build_autoencoder([32, 8], seed=3), paths[CONCEPT_MODEL])
    return paths


@pytest.mark.parametrize("architecture", ["dense", "cnn"])
def test_export_matches_the_savedmodels(tmp_path, images, architecture):
    entry = export_checked(_savedmodels(tmp_path, architecture), tmp_path / "onnx", images)
    figures = entry["parity"]
    assert figures["images"] == 500 and figures["class_id_mismatches"] == 0
    assert figures["max_abs_probability_diff"] <= TOLERANCE and figures["max_abs_concept_score_diff"] <= TOLERANCE
    assert entry["file"] == f"onnx/{ONNX_FILE}" and (tmp_path / "onnx" / ONNX_FILE).is_file()


def test_a_graph_that_differs_is_refused(tmp_path, images, monkeypatch):
    """A wrong activation (the classifier's ReLU as Sigmoid) must fail parity, not be published."""
    from mnist_ml import onnx_export

    real_op = onnx_export._Graph.op

    def wrong_relu(self, kind, inputs, output=None, **attributes):
        return real_op(self, "Sigmoid" if kind == "Relu" else kind, inputs, output, **attributes)

    monkeypatch.setattr(onnx_export._Graph, "op", wrong_relu)
    with pytest.raises(ParityError, match="does not match"):
        export_checked(_savedmodels(tmp_path, "dense"), tmp_path / "onnx", images)
    onnx.checker.check_model(str(tmp_path / "onnx" / ONNX_FILE))  # written, valid ONNX, still refused


def _references(savedmodels: dict, images: np.ndarray) -> dict:
    return {model: ParityReference.record(LoadedModel(path), images, path) for model, path in savedmodels.items()}


# What the publish step does with the references the training steps wrote: argv is the folder.
PUBLISH_WITHOUT_TENSORFLOW = """
import json, sys
from pathlib import Path
import numpy as np
from mnist_ml.onnx_export import ParityReference, export_checked
root = Path(sys.argv[1])
models = ["classifier", "concept_model"]
references = {m: ParityReference.from_bytes((root / f"{m}.parity.npz").read_bytes()) for m in models}
entry = export_checked({m: root / m for m in models}, root / "onnx", np.load(root / "images.npy"), references)
print(json.dumps({"parity": entry["parity"], "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def test_recorded_references_check_the_export_in_a_process_without_tensorflow(tmp_path, images):
    savedmodels = _savedmodels(tmp_path, "cnn")
    for model, reference in _references(savedmodels, images).items():
        (tmp_path / f"{model}.parity.npz").write_bytes(reference.to_bytes())
    np.save(tmp_path / "images.npy", images)
    published = subprocess.run(
        [sys.executable, "-c", PUBLISH_WITHOUT_TENSORFLOW, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(published.stdout.splitlines()[-1])
    assert result["tensorflow_imported"] is False
    assert result["parity"] == export_checked(savedmodels, tmp_path / "onnx_here", images)["parity"]
    assert result["parity"]["class_id_mismatches"] == 0


def test_a_reference_is_used_only_for_its_files_and_its_images(tmp_path, images):
    savedmodels = _savedmodels(tmp_path, "dense")
    references = _references(savedmodels, images)
    with pytest.raises(ParityError, match="recorded on other images"):
        export_checked(savedmodels, tmp_path / "onnx", images[:100], references)
    write_concept_calibration(savedmodels[CONCEPT_MODEL], {"threshold": 0.5})  # after the reference
    with pytest.raises(ParityError, match="changed after its parity reference was recorded"):
        export_checked(savedmodels, tmp_path / "onnx", images, references)


def test_a_damaged_reference_file_is_refused_clearly(images):
    data = ParityReference([np.ones(3, np.float32)], {"score": images[:2, 0, 0]}, "files", "images").to_bytes()
    assert ParityReference.from_bytes(data).savedmodel_sha256 == "files"
    for damaged in (data[: len(data) // 2], b"", b"not a reference"):
        with pytest.raises(ParityError, match="not a readable parity reference"):
            ParityReference.from_bytes(damaged)
