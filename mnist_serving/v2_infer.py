"""The Open Inference Protocol (v2) infer route of our model: JSON and binary tensors, in and out.

This ASGI middleware answers ``POST /v2/models/<name>/infer`` itself, JSON and binary alike
(``routes`` rewrites the served version's ``/versions/<v>/infer`` to it): a JSON request is
parsed once with orjson and answered without any framework in between. (KServe's server, which
this replaced, decoded binary tensors into Python objects, about 0.5 s per 1,024 images,
answered 400 to a JSON request without a Content-Type header, which the reference client sends
none of, and accepted what the protocol calls invalid.)

Request: a JSON header, followed by raw tensor bytes when ``Inference-Header-Content-Length``
gives the header's length (the binary tensor extension), whatever the Content-Type. Exactly one
input, named ``INPUT_NAME``, with a datatype from ``DTYPES``, a shape of non-negative integers,
and either JSON ``data`` (flat or nested, row-major) or ``parameters.binary_data_size`` bytes
of the binary part, holding exactly the shape's product of elements. Anything else is a 400
that says what is wrong; the model's own checks (28x28 images, pixel range, batch size) follow
in ``validation``.

Response: the requested ``outputs`` (all four by default), each as JSON ``data`` or, when asked
(``parameters.binary_data_output`` on the request, ``parameters.binary_data`` on an output,
which wins), as little-endian bytes after the JSON header, in output order, with the output's
``parameters.binary_data_size`` and the header's length in ``Inference-Header-Content-Length``.
The response ``id`` is the request's ``id`` if it has one, else its ``x-request-id`` header,
else a new id; feedback refers to it.

A request body compressed with ``Content-Encoding: gzip`` or ``deflate`` (the reference client
offers both) is inflated up to the body-size limit (413 past it); another encoding is a 415.
Responses are not compressed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mnist_ml.model_contract import INPUT_NAME, OUTPUT_TYPES
from mnist_serving.body_limit import Receive, Scope, Send, read_body, reply
from mnist_serving.predictor import MnistPredictor, Refused
from mnist_serving.validation import InvalidImages

HEADER = "inference-header-content-length"
DTYPES = {  # datatype -> numpy dtype, little-endian as the binary extension sends it
    "UINT8": np.dtype("<u1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
INT_RANGES = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)) for name, dtype in DTYPES.items() if dtype.kind in "iu"
}
OUTPUT_DTYPES = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4"), "BOOL": np.dtype("?")}
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # Content-Encoding -> zlib wbits


class TooLarge(ValueError):
    """The inflated body is over the size limit."""


def inflate(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body as sent before ``Content-Encoding``; InvalidImages if it is corrupt or the
    encoding unknown, TooLarge past ``max_bytes`` (a small body may inflate to gigabytes)."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ENCODINGS:
        raise InvalidImages(f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidImages(f"the body is not valid {encoding} ({exc})") from None
    if len(data) > max_bytes:
        raise TooLarge(f"request body inflates to over the {max_bytes}-byte limit: send fewer images per request")
    return data


@dataclass(frozen=True)
class V2Request:
    tensor: np.ndarray  # the input, in its datatype and shape
    request_id: str | None  # the request's "id"
    binary_outputs: dict[str, bool]  # output name -> sent as bytes, in response order


def decode_request(body: bytes, header_length: str | None) -> V2Request:
    """The request's input tensor and what it asks for, or InvalidImages saying what is wrong."""
    if header_length is None:
        header_bytes, binary = body, b""
    elif header_length.isdigit() and int(header_length) <= len(body):
        header_bytes, binary = body[: int(header_length)], body[int(header_length) :]
    else:
        raise InvalidImages(f"{HEADER} must be a byte count within the body, got {header_length!r}")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidImages(f"the request is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
        raise InvalidImages(f'a v2 request is a JSON object with "inputs": exactly one tensor, "{INPUT_NAME}"')
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidImages(f'"id" must be a string, got {request_id!r}')
    return V2Request(_input(header["inputs"][0], binary), request_id or None, _outputs(header))


def _input(tensor: Any, binary: bytes) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise InvalidImages(f"an input is a JSON object with name, datatype, shape and data, got {tensor!r}")
    if tensor.get("name") != INPUT_NAME:
        raise InvalidImages(f"unknown input {tensor.get('name')!r}: the model's one input is {INPUT_NAME!r}")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in DTYPES:
        raise InvalidImages(f"datatype must be one of {', '.join(DTYPES)}, got {datatype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidImages(f"shape must be a list of non-negative integers, got {shape!r}")
    dtype, elements = DTYPES[datatype], math.prod(shape)
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidImages(f"input parameters must be a JSON object, got {parameters!r}")
    if "binary_data_size" not in parameters:
        if binary:
            raise InvalidImages(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise InvalidImages('the input needs "data", or parameters.binary_data_size and binary data')
        return _json_data(tensor["data"], datatype, dtype, shape, elements)
    size = parameters["binary_data_size"]
    if type(size) is not int or size != len(binary):
        raise InvalidImages(f"binary_data_size is {size!r} but {len(binary)} bytes follow the JSON header")
    if size != elements * dtype.itemsize:
        raise InvalidImages(f"shape {shape} of {datatype} needs {elements * dtype.itemsize} bytes, got {size}")
    return np.frombuffer(binary, dtype=dtype).reshape(shape)


def _json_data(data: Any, datatype: str, dtype: np.dtype, shape: list[int], elements: int) -> np.ndarray:
    """The JSON ``data`` as an array of ``dtype`` in ``shape``: one conversion from the parsed
    lists, then the protocol's checks (numbers, the element count, integers within the datatype's
    range). The pixel checks are ``validation.to_model_input``'s, once, on the array returned."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidImages("data must be a flat or nested list of numbers (nested lists all of one length)") from None
    if array.dtype.kind not in "iuf":
        raise InvalidImages(f"data must be numbers of the datatype {datatype}")
    if array.size != elements:
        raise InvalidImages(f"shape {shape} holds {elements} elements but data has {array.size}")
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        if array.dtype.kind == "f":
            raise InvalidImages(f"{datatype} data must be integers")
        if array.size and (np.minimum.reduce(array, axis=None) < low or np.maximum.reduce(array, axis=None) > high):
            raise InvalidImages(f"{datatype} data must be in {low}..{high}")
    return array.astype(dtype, copy=False).reshape(shape)


def _outputs(header: dict) -> dict[str, bool]:
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidImages(f"request parameters must be a JSON object, got {parameters!r}")
    default = _flag(parameters, "binary_data_output")
    requested = header.get("outputs")
    if requested is None:
        return dict.fromkeys(OUTPUT_TYPES, default)
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise InvalidImages(f'"outputs" must be a list of objects with a "name", got {requested!r}')
    chosen = {}
    for output in requested:
        if output.get("name") not in OUTPUT_TYPES:
            raise InvalidImages(f"unknown output {output.get('name')!r}: the outputs are {', '.join(OUTPUT_TYPES)}")
        own = output.get("parameters") or {}
        if not isinstance(own, dict):
            raise InvalidImages(f"output parameters must be a JSON object, got {own!r}")
        chosen[output["name"]] = _flag(own, "binary_data") if "binary_data" in own else default
    return chosen


def _flag(parameters: dict, name: str) -> bool:
    value = parameters.get(name, False)
    if type(value) is not bool:
        raise InvalidImages(f"parameter {name} must be true or false, got {value!r}")
    return value


def encode_response(
    model: MnistPredictor, request: V2Request, result: dict[str, np.ndarray], request_id: str
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    outputs, binary = [], []
    for name, as_bytes in request.binary_outputs.items():
        array = np.ascontiguousarray(result[name], dtype=OUTPUT_DTYPES[OUTPUT_TYPES[name]])
        output: dict[str, Any] = {"name": name, "datatype": OUTPUT_TYPES[name], "shape": list(array.shape)}
        if as_bytes:
            binary.append(array.tobytes())
            output["parameters"] = {"binary_data_size": len(binary[-1])}
        else:
            output["data"] = array.ravel()
        outputs.append(output)
    header = orjson.dumps(
        {
            "model_name": model.name,
            "model_version": model.version,
            "id": request_id,
            "parameters": {"threshold": model.threshold},
            "outputs": outputs,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return (header + b"".join(binary), len(header)) if binary else (header, None)


class V2Infer:
    def __init__(self, app, model: MnistPredictor, max_body_bytes: int) -> None:  # noqa: ANN001 - an ASGI app
        self.app, self.model, self.max_body_bytes = app, model, max_body_bytes
        self.path = f"/v2/models/{model.name}/infer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw = await read_body(receive)
        if raw is None:
            return None
        if not self.model.ready:
            return await reply(send, 503, f"model {self.model.name} is not ready")
        encoding = headers.get("content-encoding", "").strip().lower()
        try:
            body = inflate(raw, encoding, self.max_body_bytes)
        except TooLarge as exc:
            return await reply(send, 413, str(exc))
        except InvalidImages as exc:
            return await reply(send, 415 if encoding not in ENCODINGS else 400, str(exc))
        try:
            request = decode_request(body, headers.get(HEADER))
            answer, header_length = await self.model.infer(
                "v2",
                headers,
                lambda: request.tensor,
                lambda result, request_id: encode_response(self.model, request, result, request_id),
                request_id=request.request_id,
            )
        except InvalidImages as exc:
            return await reply(send, 400, str(self.model.refuse("v2", str(exc))))
        except Refused as exc:
            return await reply(send, 400, str(exc))
        if header_length is None:
            return await reply(send, 200, answer)
        return await reply(
            send, 200, answer, b"application/octet-stream", ((HEADER.encode(), str(header_length).encode()),)
        )
