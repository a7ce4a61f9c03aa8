"""The inference endpoint: our model server (uvicorn, plain ASGI, ONNX Runtime) for one registry
version of both models.

Runs without Dagster, TensorFlow or KServe (tests/test_layering.py, tests/test_dockerfile.py), so
the serving image holds the server alone."""
