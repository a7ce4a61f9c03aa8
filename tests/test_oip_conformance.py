"""Open Inference Protocol conformance of the endpoint, with the reference client: a real server
(LocalEndpoint, a tiny registry version) on 127.0.0.1 and tritonclient.http (pinned in
requirements/constraints.txt) in every mode it offers: JSON and binary inputs, JSON and binary
outputs (per output and by default), gzip and deflate request compression, health, readiness
and metadata, with and without the served version in the path. Also what the client cannot be
made to send: JSON without a Content-Type, negative dimensions, another input's name, a shape
that does not match the data, another version.

Not covered: the gRPC flavour of the protocol (the endpoint serves HTTP only), tritonclient's
asyncio client (same requests as the one used here), and response compression, which the
endpoint does not do (it ignores Accept-Encoding, as HTTP allows).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.model_contract import INPUT_NAME, MODEL_NAME, OUTPUT_TYPES
from mnist_serving.options import ServerOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(tiny_versions, tmp_path_factory):
    _, versions = tiny_versions
    local = LocalEndpoint(tmp_path_factory.mktemp("oip"), port=0, options=ServerOptions(request_log=False))
    yield local.deploy(versions[0].path, str(versions[0].version))
    local.stop()


@pytest.fixture(scope="module")
def client(endpoint):
    client = triton.InferenceServerClient(url=endpoint.url.removeprefix("http://"))
    yield client
    client.close()


IMAGES = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)


def _infer(client, endpoint, *, binary_in: bool, binary_out: bool | None, version: str = "", **kwargs):
    tensor = triton.InferInput(INPUT_NAME, list(IMAGES.shape), "UINT8")
    tensor.set_data_from_numpy(IMAGES, binary_data=binary_in)
    outputs = (
        None if binary_out is None else [triton.InferRequestedOutput(n, binary_data=binary_out) for n in OUTPUT_TYPES]
    )
    return client.infer(MODEL_NAME, [tensor], model_version=version, outputs=outputs, **kwargs)


def test_health_readiness_and_metadata(client, endpoint):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME) and client.is_model_ready(MODEL_NAME, endpoint.version)
    assert not client.is_model_ready(MODEL_NAME, "999")
    for version in ("", endpoint.version):
        meta = client.get_model_metadata(MODEL_NAME, version)
        assert meta["versions"] == [endpoint.version]
        assert meta["inputs"][0]["name"] == INPUT_NAME
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == OUTPUT_TYPES
    with pytest.raises(InferenceServerException, match="version 999 of mnist is not served"):
        client.get_model_metadata(MODEL_NAME, "999")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


MODES = {
    "json in, json out": {"binary_in": False, "binary_out": False},
    "json in, binary out": {"binary_in": False, "binary_out": True},
    "binary in, json out": {"binary_in": True, "binary_out": False},
    "binary in, binary out": {"binary_in": True, "binary_out": True},
    "json in, default out (binary)": {"binary_in": False, "binary_out": None},
    "binary in, served version": {"binary_in": True, "binary_out": True, "version": "served"},
    "gzip request": {"binary_in": True, "binary_out": True, "request_compression_algorithm": "gzip"},
    "deflate request": {"binary_in": False, "binary_out": False, "request_compression_algorithm": "deflate"},
}


def test_every_mode_of_the_reference_client_gets_the_same_answer(client, endpoint):
    results = {}
    for mode, kwargs in MODES.items():
        if kwargs.get("version") == "served":
            kwargs = {**kwargs, "version": endpoint.version}
        result = _infer(client, endpoint, request_id=f"oip-{len(results)}", **kwargs)
        response = result.get_response()
        assert response["model_version"] == endpoint.version and response["id"] == f"oip-{len(results)}", mode
        binary_out = kwargs["binary_out"] is not False
        for output in response["outputs"]:
            assert ("parameters" in output and "binary_data_size" in output["parameters"]) == binary_out, mode
            assert ("data" in output) != binary_out, mode
        results[mode] = {name: result.as_numpy(name) for name in OUTPUT_TYPES}
    reference = results["json in, json out"]
    assert reference["class_ids"].shape == (4,) and reference["probabilities"].shape == (4, 10)
    assert reference["is_ood"].dtype == bool
    for mode, outputs in results.items():
        np.testing.assert_array_equal(outputs["class_ids"], reference["class_ids"], err_msg=mode)
        np.testing.assert_array_equal(outputs["is_ood"], reference["is_ood"], err_msg=mode)
        np.testing.assert_allclose(outputs["probabilities"], reference["probabilities"], rtol=1e-6, err_msg=mode)


def test_a_version_not_served_is_a_404(client, endpoint):
    with pytest.raises(InferenceServerException, match="version 999 of mnist is not served") as error:
        _infer(client, endpoint, binary_in=True, binary_out=True, version="999")
    assert error.value.status() == "404"


def _post(endpoint, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{endpoint.url}/v2/models/{MODEL_NAME}/infer", data=body, headers=headers or {}, timeout=10)


def _tensor(**fields: object) -> bytes:
    tensor = {"name": INPUT_NAME, "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784, **fields}
    return json.dumps({"inputs": [tensor]}).encode()


def test_json_without_a_content_type_is_answered(endpoint):
    request = requests.Request("POST", f"{endpoint.url}/v2/models/{MODEL_NAME}/infer", data=_tensor()).prepare()
    request.headers.pop("Content-Type", None)
    assert "Content-Type" not in request.headers
    response = requests.Session().send(request, timeout=10)
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == list(OUTPUT_TYPES)


INVALID = {
    "negative dimension": (_tensor(shape=[-1, 784]), "shape must be a list of non-negative integers"),
    "another input's name": (_tensor(name="input_1"), "unknown input 'input_1'"),
    "shape product != data length": (_tensor(shape=[2, 784]), "holds 1568 elements but data has 784"),
    "unknown output": (
        json.dumps({**json.loads(_tensor()), "outputs": [{"name": "logits"}]}).encode(),
        "unknown output 'logits'",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_what_the_protocol_calls_invalid_is_a_400(endpoint, case):
    body, message = INVALID[case]
    response = _post(endpoint, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_unknown_content_encoding_is_a_415(endpoint):
    response = _post(endpoint, _tensor(), {"Content-Encoding": "br"})
    assert response.status_code == 415 and "not supported" in response.json()["error"]
