# One image for every role: the Dagster user-code gRPC server (the default command), the run
# and step pods that dagster-k8s launches (they pass their own command), and the model server
# (`python -m mnist_serving --model-dir /models/mnist/<version> --host 0.0.0.0 --port 8080`).
#
#   docker build -t mnist-mlops:0.1.0 .
#
# Pins: the base image tag (patch level), and every Python package through
# requirements/constraints.txt. Add a digest (python:3.11.14-slim-bookworm@sha256:...) when
# the registry you build against is known.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a venv with the project and its exact dependency set --------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Built in /src, not /app: a setuptools build leaves build/ and *.egg-info next to the sources,
# and the runtime stage should not ship them.
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md run_config.yaml workspace.yaml ./
COPY mnist_ml ./mnist_ml
COPY mnist_serving ./mnist_serving
COPY mnist_delivery ./mnist_delivery
COPY mnist_assets ./mnist_assets
COPY resources ./resources
# The build's own tools first, at their pins (setuptools is also pinned as the build backend
# in pyproject.toml); then a non-editable install of the project and the tensorflow-cpu
# flavour, every version pinned: the same constraints `make install` and the tests use.
RUN pip install --no-cache-dir -c requirements/constraints.txt pip setuptools wheel \
    && pip install --no-cache-dir -c requirements/constraints.txt ".[cpu]"

# ---- serving: the model server alone, without TensorFlow, Dagster or KServe -----------------
# `docker build --target serving -t mnist-serving:0.1.0 .`: what `python -m mnist_serving` needs
# (it runs the version's ONNX graph in ONNX Runtime), 12 distributions, about 154 MiB installed,
# against 130 distributions and about 1,918 MiB for the image below (pip closures, measured
# from the installed distributions' RECORD files). Same pins, same user.
FROM ${PYTHON_IMAGE} AS serving

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

COPY requirements/constraints.txt /tmp/constraints.txt
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -c /tmp/constraints.txt \
        numpy onnxruntime orjson prometheus-client uvicorn uvloop httptools \
    && rm /tmp/constraints.txt \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

WORKDIR /app
COPY mnist_ml ./mnist_ml
COPY mnist_serving ./mnist_serving
RUN python -m compileall -q /app

USER 10001
EXPOSE 8080
CMD ["python", "-m", "mnist_serving", "--model-dir", "/models/mnist/current", "--host", "0.0.0.0", "--port", "8080"]

# ---- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# MPLCONFIGDIR: matplotlib's cache goes to /tmp (an emptyDir in the pods; the root filesystem
# is read-only there and the user has no home), instead of a fresh temp dir and a warning
# in every process.
# MNIST_RUN_CONFIG: the per-run choices the sensors read and pass on (resources/run_config.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    MPLCONFIGDIR=/tmp/matplotlib \
    MNIST_RUN_CONFIG=/app/run_config.yaml

# User app (uid/gid 10001): no login shell, no home directory. DAGSTER_HOME belongs to it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir -p /opt/dagster/home \
    && chown app:app /opt/dagster/home

COPY --from=builder /opt/venv /opt/venv

# The project itself (sources, run_config.yaml, workspace.yaml), owned by root: read-only for app.
WORKDIR /app
COPY pyproject.toml README.md run_config.yaml workspace.yaml ./
COPY mnist_ml ./mnist_ml
COPY mnist_serving ./mnist_serving
COPY mnist_delivery ./mnist_delivery
COPY mnist_assets ./mnist_assets
COPY resources ./resources
# Bytecode now: with a read-only root filesystem Python cannot write __pycache__ at run time.
RUN python -m compileall -q /app

USER 10001
# 8080: the model server; 4000: the Dagster user-code gRPC server.
EXPOSE 8080 4000
# No HEALTHCHECK: the image plays three roles with different health checks; the Kubernetes
# probes (gRPC health check, /v2/health/ready) are declared where each role is deployed.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "mnist_assets.definitions"]
