"""The v2 request decoder and response encoder (mnist_serving/v2_infer.py), in process: what
the Open Inference Protocol calls invalid is refused with a message, JSON and binary inputs
decode to the same tensor, binary outputs are laid out as the binary tensor extension says,
and compressed bodies inflate within the size limit.

Not covered here: HTTP (tests/test_oip_conformance.py sends all of this to a real server, with
the reference client) and the model's own image checks (mnist_serving/validation.py, exercised
through tests/test_serving.py).
"""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from mnist_ml.model_contract import INPUT_NAME, OUTPUT_TYPES
from mnist_serving.v2_infer import TooLarge, decode_request, encode_response, inflate
from mnist_serving.validation import InvalidImages


def _json(tensor: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": [{"name": INPUT_NAME, **tensor}], **extra}).encode()


def _binary(array: np.ndarray, datatype: str, **extra: object) -> tuple[bytes, str]:
    header = _json({"datatype": datatype, "shape": list(array.shape), "parameters": {"binary_data_size": array.nbytes}})
    if extra:
        header = json.dumps({**json.loads(header), **extra}).encode()
    return header + array.tobytes(), str(len(header))


def test_json_flat_nested_and_binary_inputs_decode_alike():
    images = np.arange(2 * 784, dtype=np.uint8).reshape(2, 28, 28)
    flat = decode_request(_json({"datatype": "UINT8", "shape": [2, 28, 28], "data": images.ravel().tolist()}), None)
    nested = decode_request(_json({"datatype": "UINT8", "shape": [2, 784], "data": images.tolist()}), None)
    binary = decode_request(*_binary(images, "UINT8"))
    np.testing.assert_array_equal(flat.tensor, images)
    np.testing.assert_array_equal(nested.tensor.reshape(2, 28, 28), images)
    np.testing.assert_array_equal(binary.tensor, images)
    assert flat.tensor.dtype == binary.tensor.dtype == np.uint8
    assert flat.request_id is None and flat.binary_outputs == dict.fromkeys(OUTPUT_TYPES, False)


INVALID = {
    "negative dimension": (_json({"datatype": "UINT8", "shape": [-1, 784], "data": [0] * 784}), "non-negative"),
    "another input name": (
        json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]}).encode(),
        "unknown input 'x'",
    ),
    "shape product != data length": (
        _json({"datatype": "UINT8", "shape": [2, 784], "data": [0] * 784}),
        "holds 1568 elements but data has 784",
    ),
    "float data for UINT8": (_json({"datatype": "UINT8", "shape": [1, 1], "data": [0.5]}), "must be integers"),
    "UINT8 out of range": (_json({"datatype": "UINT8", "shape": [1, 1], "data": [256]}), "0..255"),
    "strings": (_json({"datatype": "FP32", "shape": [1, 1], "data": ["NaN"]}), "must be numbers"),
    "ragged": (_json({"datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}), "nested lists"),
    "bool shape": (_json({"datatype": "FP32", "shape": [True, 1], "data": [1]}), "non-negative integers"),
    "BYTES": (_json({"datatype": "BYTES", "shape": [1], "data": ["a"]}), "datatype must be one of"),
    "no data": (_json({"datatype": "FP32", "shape": [1]}), 'needs "data"'),
    "two inputs": (json.dumps({"inputs": [{"name": INPUT_NAME}] * 2}).encode(), "exactly one tensor"),
    "not JSON": (b"{nope", "not valid JSON"),
    "unknown output": (
        _json({"datatype": "UINT8", "shape": [1], "data": [0]}, outputs=[{"name": "logits"}]),
        "unknown output 'logits'",
    ),
    "binary_data_output not a bool": (
        _json({"datatype": "UINT8", "shape": [1], "data": [0]}, parameters={"binary_data_output": "yes"}),
        "true or false",
    ),
    "numeric id": (_json({"datatype": "UINT8", "shape": [1], "data": [0]}, id=7), '"id" must be a string'),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_json_requests_say_what_is_wrong(case):
    body, message = INVALID[case]
    with pytest.raises(InvalidImages, match=message.replace("(", r"\(").replace(".", r"\.")):
        decode_request(body, None)


def test_invalid_binary_requests_say_what_is_wrong():
    images = np.zeros((2, 784), np.uint8)
    body, length = _binary(images, "UINT8")
    with pytest.raises(InvalidImages, match="binary_data_size is 1568 but 1567 bytes"):
        decode_request(body[:-1], length)
    with pytest.raises(InvalidImages, match="byte count within the body"):
        decode_request(body, str(len(body) + 1))
    with pytest.raises(InvalidImages, match="needs 6272 bytes, got 1568"):
        decode_request(body.replace(b'"UINT8"', b'"FP32"'), str(int(length) - 1))  # one byte shorter
    trailing = _json({"datatype": "UINT8", "shape": [1], "data": [0]})
    with pytest.raises(InvalidImages, match="1 bytes follow the JSON header but no input"):
        decode_request(trailing + b"\0", str(len(trailing)))


def _result(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "class_ids": rng.integers(0, 10, n),
        "probabilities": rng.random((n, 10), dtype=np.float32),
        "concept_score": rng.random(n, dtype=np.float32),
        "is_ood": rng.random(n) > 0.5,
    }


class _Model:  # what encode_response reads from MnistPredictor
    name, version, threshold = "mnist", "3", 0.25


def test_binary_outputs_follow_the_header_in_order_with_their_sizes():
    request = decode_request(
        _json(
            {"datatype": "UINT8", "shape": [3, 784], "data": [0] * 3 * 784},
            parameters={"binary_data_output": True},
            outputs=[{"name": "is_ood"}, {"name": "probabilities", "parameters": {"binary_data": False}}],
            id="req-9",
        ),
        None,
    )
    assert request.binary_outputs == {"is_ood": True, "probabilities": False} and request.request_id == "req-9"
    result = _result(3)
    response, header_length = encode_response(_Model(), request, result, "req-9")
    header = json.loads(response[:header_length])
    assert header["id"] == "req-9" and header["model_version"] == "3"
    assert [o["name"] for o in header["outputs"]] == ["is_ood", "probabilities"]
    ood, probabilities = header["outputs"]
    assert ood == {"name": "is_ood", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}}
    assert np.frombuffer(response[header_length:], bool).tolist() == result["is_ood"].tolist()
    np.testing.assert_allclose(probabilities["data"], result["probabilities"].ravel(), rtol=1e-6)


def test_all_outputs_binary_and_all_json():
    result = _result(2)
    binary = decode_request(*_binary(np.zeros((2, 784), np.uint8), "UINT8", parameters={"binary_data_output": True}))
    response, header_length = encode_response(_Model(), binary, result, "r")
    header, offset = json.loads(response[:header_length]), header_length
    for output in header["outputs"]:
        dtype = {"INT64": "<i8", "FP32": "<f4", "BOOL": "?"}[output["datatype"]]
        size = output["parameters"]["binary_data_size"]
        decoded = np.frombuffer(response[offset : offset + size], dtype).reshape(output["shape"])
        np.testing.assert_array_equal(decoded, result[output["name"]])
        offset += size
    assert offset == len(response)
    as_json = decode_request(_json({"datatype": "UINT8", "shape": [2, 784], "data": [0] * 1568}), None)
    response, header_length = encode_response(_Model(), as_json, result, "r")
    assert header_length is None and all("data" in o for o in json.loads(response)["outputs"])


def test_compressed_bodies_inflate_within_the_limit():
    body = _json({"datatype": "UINT8", "shape": [1, 784], "data": [0] * 784})
    assert inflate(gzip.compress(body), "gzip", len(body)) == body
    assert inflate(zlib.compress(body), "deflate", len(body)) == body
    assert inflate(body, "", 10) == body
    with pytest.raises(TooLarge):
        inflate(gzip.compress(b"0" * 10_000_000), "gzip", 1_000_000)
    with pytest.raises(InvalidImages, match="not valid gzip"):
        inflate(b"plain", "gzip", 100)
    with pytest.raises(InvalidImages, match="'br' is not supported"):
        inflate(body, "br", 100)
