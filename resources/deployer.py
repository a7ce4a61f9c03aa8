"""Puts a registry version behind the inference endpoint.

``backend: local`` (the default) runs the model server as background processes on this
machine and swaps versions without dropping requests. ``backend: kubernetes`` runs it as
blue/green Deployments behind one public Service, pointed at the version on the ``models``
volume. Both offer the same methods (``mnist_delivery.backend.DeployBackend``): a
``candidate`` started beside production and tested at its private address, ``promote``,
``deploy``, ``current``, ``serving``, ``stop``; and ``client`` to talk to an endpoint."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from dagster import ConfigurableResource

from mnist_delivery.backend import Candidate, DeployBackend, Endpoint, ServerProcess
from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.download import folder_fingerprint
from mnist_ml.log import Log
from mnist_serving.options import DEFAULT_PORT, ServerOptions
from resources.environment import setting


class ModelDeployer(ConfigurableResource):
    """Where and how the endpoint runs. The server's own options (batch and body limits,
    the request log) are ``ServerOptions``, from ``$MNIST_SERVER_<OPTION>``."""

    backend: str = setting(
        "local", env="MNIST_SERVING_BACKEND", description="local or kubernetes.", pattern="^(local|kubernetes)$"
    )
    host: str = setting(
        "127.0.0.1", env="MNIST_SERVING_HOST", description="Address the local endpoint binds (loopback by default)."
    )
    port: int = setting(
        DEFAULT_PORT, env="MNIST_SERVING_PORT", description="Endpoint port; 0 picks a free one (local).", ge=0, le=65535
    )
    state_dir: str = setting(
        "var/serving",
        env="MNIST_SERVING_STATE_DIR",
        description="Endpoint state, server logs and the request log (on the data volume on Kubernetes).",
    )
    startup_timeout_s: int = setting(
        120, env="MNIST_SERVING_STARTUP_TIMEOUT_S", description="How long a new version may take to be ready.", gt=0
    )
    k8s_namespace: str = setting(
        "mnist", env="MNIST_K8S_NAMESPACE", description="kubernetes: namespace of the serving Deployment."
    )
    k8s_image: str = setting("mnist-mlops:0.1.0", env="MNIST_IMAGE", description="kubernetes: the project's image.")
    k8s_replicas: int = setting(
        2, env="MNIST_SERVING_REPLICAS", description="kubernetes: serving pods (the PDB keeps one up).", ge=1
    )
    k8s_kubeconfig: str = setting(
        "", env="MNIST_KUBECONFIG", description="kubernetes: kubeconfig file; empty: the in-cluster service account."
    )

    @property
    def server_options(self) -> ServerOptions:
        """From ``$MNIST_SERVER_<OPTION>`` (checked when the definitions load, see definitions.py)."""
        return ServerOptions.from_environment(os.environ)

    @property
    def request_log_dir(self) -> Path:
        """Where the endpoint logs predictions and feedback (read by monitoring)."""
        return Path(self.state_dir).resolve() / "requests"

    def feedback_fingerprint(self) -> str:
        """A token that changes when labels arrive through the feedback route."""
        return folder_fingerprint(self.request_log_dir, "feedback*")

    @contextmanager
    def candidate(self, version_dir: Path, version: str, log: Log = print) -> Iterator[tuple[Candidate, DeployBackend]]:
        """Start ``version_dir`` beside production, at a private address; yields it and the
        backend to ``promote`` it with. Not promoted by the end of the block, it is stopped."""
        backend = self._backend(log)
        with backend.candidate(version_dir, version) as started:
            yield started, backend

    def deploy(self, version_dir: Path, version: str, log: Log = print) -> Endpoint:
        """Serve an already tested ``version_dir`` (rollback, promote by hand): candidate, then
        promote; the previous version serves until the new one is ready."""
        return self._backend(log).deploy(version_dir, version)

    def current(self, log: Log = print) -> Endpoint | None:
        return self._backend(log).current()

    def serving(self, log: Log = print) -> list[ServerProcess]:
        """Every server process or pod of the endpoint, with its version and role."""
        return self._backend(log).serving()

    def stop(self, log: Log = print) -> Endpoint | None:
        return self._backend(log).stop()

    def client(self, url: str, traffic: str | None = None) -> EndpointClient:
        """A client for the endpoint (or a candidate) at ``url``; ``traffic="test"`` keeps its
        requests out of the request log."""
        return EndpointClient(url, traffic=traffic, max_batch=self.server_options.max_batch)

    def _backend(self, log: Log) -> DeployBackend:
        if self.backend == "kubernetes":
            return self._kubernetes(log)
        return LocalEndpoint(
            Path(self.state_dir).resolve(),
            self.host,
            self.port,
            options=self.server_options,
            request_log=self.request_log_dir,
            startup_timeout=self.startup_timeout_s,
            log=log,
        )

    def _kubernetes(self, log: Log) -> DeployBackend:
        from kubernetes import client as kube_client  # only the kubernetes backend needs these
        from kubernetes import config as kube_config

        from mnist_delivery.k8s_endpoint import KubernetesEndpoint, ServingSpec

        if self.k8s_kubeconfig:
            api = kube_config.new_client_from_config(config_file=self.k8s_kubeconfig)
        else:
            kube_config.load_incluster_config()
            api = kube_client.ApiClient()
        spec = ServingSpec(
            namespace=self.k8s_namespace,
            image=self.k8s_image,
            port=self.port or DEFAULT_PORT,
            replicas=self.k8s_replicas,
            options=self.server_options,
            request_log=PurePosixPath(self.request_log_dir),
        )
        return KubernetesEndpoint(api, spec, rollout_timeout=self.startup_timeout_s * 5, log=log)
