"""Both models of a registry version as one ONNX graph, checked against the SavedModels.

The endpoint serves this graph with ONNX Runtime (no TensorFlow in the serving process); the
SavedModels stay the published artifacts and the reference. ``export_checked`` runs at publish
time, before the version exists: it writes ``ONNX_FILE`` into a folder that is published as the
version's ``ONNX_ARTIFACT`` sub-folder, and returns the manifest's ``onnx`` entry.

Invariants:
- the graph is built from the SavedModels' own variables, in their order: (kernel, bias) pairs,
  4-D kernels being the classifier's conv blocks (ReLU, 2x2 max-pool), 2-D ones dense layers
  (ReLU, the last one logits for the classifier and sigmoid for the autoencoder), i.e. the
  layers ``build_classifier`` and ``build_autoencoder`` make. Anything else is caught by parity;
- one input ``imgs`` float32 [N, 28, 28] in [0, 1], outputs ``class_ids`` int64 [N],
  ``probabilities`` float32 [N, 10] and ``concept_score`` float32 [N], one call for both models;
- parity on the given images (at publish, the 10,000 MNIST test digits): class ids identical,
  probabilities and concept scores within ``TOLERANCE`` (absolute). ``export_checked`` raises
  ``ParityError`` otherwise, and the caller must not publish the version;
- what parity compares with is each SavedModel's ``ParityReference``: its variables and its
  outputs on those images, with digests of both. The training steps record it, where TensorFlow
  and the exported model are loaded anyway; publishing then needs no TensorFlow (importing it
  took 3.4 s of a 4.7 s export and parity). A reference is used only for the exact SavedModel
  files (every file's bytes) and the exact images it was recorded on, else ``ParityError``.

TensorFlow is imported only where the SavedModels are read, so the serving side can import
``ONNX_ARTIFACT``/``ONNX_FILE`` without it, and publishing with recorded references never does."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from mnist_ml.model_contract import CLASSIFIER, CONCEPT_MODEL, INPUT_NAME

if TYPE_CHECKING:
    from mnist_ml.savedmodel import LoadedModel

ONNX_ARTIFACT = "onnx"  # the version's sub-folder
ONNX_FILE = "mnist.onnx"
OPSET = 17
IR_VERSION = 9
TOLERANCE = 1e-5
PARITY_BATCH = 1000  # images per ONNX Runtime call in the parity check (a CNN's activations add up)
GRAPH_OUTPUTS = ("class_ids", "probabilities", "concept_score")


class ParityError(ValueError):
    """The ONNX graph does not reproduce the SavedModels, or cannot be checked against them: the
    version must not be published."""


def images_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest()


def folder_sha256(folder: Path) -> str:
    """Of every file under ``folder``: its path relative to the folder and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class ParityReference:
    """One SavedModel's variables (in layer order) and its outputs on the parity images, with
    the digests that tie them to those exact files and images."""

    weights: list[np.ndarray]
    outputs: dict[str, np.ndarray]
    savedmodel_sha256: str
    images_sha256: str

    @classmethod
    def record(cls, model: LoadedModel, images: np.ndarray, savedmodel: Path) -> ParityReference:
        """``model`` loaded from ``savedmodel``, its folder complete (the concept model's
        calibration included), called on ``images``."""
        return cls(model.weights, model(images), folder_sha256(savedmodel), images_sha256(images))

    def check(self, savedmodel: Path, images: np.ndarray) -> None:
        """ParityError unless this reference was recorded for these files and these images."""
        if self.savedmodel_sha256 != folder_sha256(savedmodel):
            raise ParityError(f"{savedmodel} changed after its parity reference was recorded: train it again")
        if self.images_sha256 != images_sha256(images):
            raise ParityError(
                f"the parity reference of {savedmodel} was recorded on other images than the parity "
                "images given now (did the MNIST test set change since training?): train it again"
            )

    def to_bytes(self) -> bytes:
        arrays = {f"weight_{i}": w for i, w in enumerate(self.weights)}
        arrays |= {f"output_{name}": value for name, value in self.outputs.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, savedmodel_sha256=self.savedmodel_sha256, images_sha256=self.images_sha256)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ParityReference:
        """ParityError if ``data`` is not a reference ``to_bytes`` wrote (truncated, or anything else)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                weights = [archive[f"weight_{i}"] for i in range(sum(k.startswith("weight_") for k in archive.files))]
                outputs = {k.removeprefix("output_"): archive[k] for k in archive.files if k.startswith("output_")}
                return cls(weights, outputs, str(archive["savedmodel_sha256"]), str(archive["images_sha256"]))
        except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile) as exc:
            raise ParityError(f"not a readable parity reference ({exc}): train the model again") from None


class _Graph:
    """Accumulates nodes and initializers; each ``op`` returns its (single) output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], output: str | None = None, **attributes: Any) -> str:
        output = output or f"{kind.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, inputs, [output], **attributes))
        return output


def _layers(graph: _Graph, prefix: str, weights: list[np.ndarray], last: str) -> str:
    """The layers of one model on ``imgs``; ``last`` is the final dense layer's activation."""
    pairs = list(zip(weights[::2], weights[1::2], strict=True))
    x = INPUT_NAME
    convs = [(k, b) for k, b in pairs if k.ndim == 4]
    if convs:  # NHWC with one channel is NCHW with one channel: reshape, no transpose
        x = graph.op("Reshape", [x, graph.const(f"{prefix}_nchw", np.array([-1, 1, 28, 28], np.int64))])
        for i, (kernel, bias) in enumerate(convs):
            w = graph.const(f"{prefix}_conv{i}_w", kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
            x = graph.op("Relu", [graph.op("Conv", [x, w, graph.const(f"{prefix}_conv{i}_b", bias)])])
            x = graph.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        x = graph.op("Transpose", [x], perm=[0, 2, 3, 1])  # Keras flattens channels-last
    x = graph.op("Reshape", [x, graph.const(f"{prefix}_flat", np.array([0, -1], np.int64))])
    dense = [(k, b) for k, b in pairs if k.ndim == 2]
    for i, (kernel, bias) in enumerate(dense):
        x = graph.op("Gemm", [x, graph.const(f"{prefix}_w{i}", kernel), graph.const(f"{prefix}_b{i}", bias)])
        if i < len(dense) - 1:
            x = graph.op("Relu", [x])
    return graph.op(last, [x]) if last else x


def build_graph(classifier: list[np.ndarray], autoencoder: list[np.ndarray]) -> onnx.ModelProto:
    """One graph for both models, from their weights (see the module's invariants)."""
    graph = _Graph()
    logits = _layers(graph, "classifier", classifier, "")
    graph.op("Softmax", [logits], "probabilities", axis=-1)
    graph.op("ArgMax", ["probabilities"], "class_ids", axis=1, keepdims=0)
    reconstruction = _layers(graph, "concept", autoencoder, "Sigmoid")
    flat = graph.op("Reshape", [INPUT_NAME, graph.const("concept_input_flat", np.array([0, -1], np.int64))])
    error = graph.op("Sub", [reconstruction, flat])
    graph.op("ReduceMean", [graph.op("Mul", [error, error])], "concept_score", axes=[1], keepdims=0)
    batch = "N"
    outputs = [
        helper.make_tensor_value_info("class_ids", TensorProto.INT64, [batch]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 10]),
        helper.make_tensor_value_info("concept_score", TensorProto.FLOAT, [batch]),
    ]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 28, 28])]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "mnist", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="mnist_ml.onnx_export",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def parity(references: Mapping[str, ParityReference], onnx_path: Path, images: np.ndarray) -> dict[str, Any]:
    """How far the ONNX graph's outputs on float32 [N, 28, 28] images are from the SavedModels'."""
    reference = {**references[CLASSIFIER].outputs, **references[CONCEPT_MODEL].outputs}
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    chunks = np.array_split(images, max(1, -(-len(images) // PARITY_BATCH)))
    runs = [session.run(list(GRAPH_OUTPUTS), {INPUT_NAME: chunk}) for chunk in chunks]
    served = {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(GRAPH_OUTPUTS)}
    return {
        "images": len(images),
        "class_id_mismatches": int((served["class_ids"] != reference["class_ids"]).sum()),
        "max_abs_probability_diff": float(np.abs(served["probabilities"] - reference["probabilities"]).max()),
        "max_abs_concept_score_diff": float(np.abs(served["concept_score"] - reference["score"]).max()),
        "tolerance": TOLERANCE,
    }


def export_checked(
    savedmodels: Mapping[str, Path],
    folder: Path,
    images: np.ndarray,
    references: Mapping[str, ParityReference] | None = None,
) -> dict[str, Any]:
    """Write ``folder/ONNX_FILE`` for the two SavedModels and check parity on ``images``
    (float32 [N, 28, 28] in [0, 1]); the manifest entry, or ParityError. ``references``: each
    SavedModel's reference, recorded on ``images``; without them, they are recorded here, which
    imports TensorFlow."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    if references is None:
        from mnist_ml.savedmodel import LoadedModel  # TensorFlow: only to record references

        references = {
            model: ParityReference.record(LoadedModel(path), images, path) for model, path in savedmodels.items()
        }
    for model, path in savedmodels.items():
        references[model].check(path, images)
    onnx.save(build_graph(references[CLASSIFIER].weights, references[CONCEPT_MODEL].weights), str(folder / ONNX_FILE))
    figures = parity(references, folder / ONNX_FILE, images)
    failed = (
        figures["class_id_mismatches"] > 0
        or not figures["max_abs_probability_diff"] <= TOLERANCE
        or not figures["max_abs_concept_score_diff"] <= TOLERANCE
    )
    if failed:
        raise ParityError(f"the ONNX export does not match the SavedModels: {figures}")
    return {
        "file": f"{ONNX_ARTIFACT}/{ONNX_FILE}",
        "opset": OPSET,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "outputs": list(GRAPH_OUTPUTS),
        "parity": figures,
        "export_and_parity_s": round(time.perf_counter() - start, 2),
    }
