"""Puts a registry version behind the inference endpoint.

``backend: local`` (the default) runs the KServe model server as a background process on
this machine and swaps versions without dropping requests. ``backend: kubernetes`` runs
it as a Deployment and Service in the cluster, pointed at the version on the ``models``
volume. Both offer the same methods: ``deploy``, ``current``, ``stop`` and ``client``."""

from __future__ import annotations

from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

from mnist_delivery.backend import DeployBackend, Endpoint
from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.download import folder_fingerprint
from mnist_ml.log import Log


class ServingSettings(Config):
    backend: str = Field(default="local", pattern="^(local|kubernetes)$", description="local or kubernetes.")
    host: str = Field(default="127.0.0.1", description="Address the local endpoint binds (loopback by default).")
    port: int = Field(default=8080, ge=0, le=65535, description="Endpoint port; 0 picks a free one (local only).")
    state_dir: str = Field(
        default="var/serving", description="Endpoint state, server logs and the request log (on the data volume)."
    )
    startup_timeout_s: float = Field(default=120.0, gt=0, description="How long a new version may take to be ready.")
    max_batch: int = Field(default=1024, ge=1, le=100_000, description="Most images the server takes per request.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=4096, description="Largest request body accepted.")
    request_log: bool = Field(default=True, description="Log every prediction (in <state_dir>/requests).")
    input_sample_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of inputs kept in the log; flagged inputs are always kept."
    )
    log_max_file_mb: float = Field(default=64.0, gt=0, description="Rotate request log files at this size.")
    log_max_files: int = Field(default=20, ge=1, description="Request log files kept; the oldest are deleted.")
    k8s_namespace: str = Field(default="mnist", description="kubernetes: namespace of the serving Deployment.")
    k8s_image: str = Field(default="mnist-mlops:0.1.0", description="kubernetes: the project's image.")
    k8s_replicas: int = Field(default=2, ge=1, description="kubernetes: serving pods (the PDB keeps one up).")
    k8s_kubeconfig: str = Field(
        default="", description="kubernetes: kubeconfig file; empty means the in-cluster service account."
    )


class ModelDeployer(ConfigurableResource, ServingSettings):
    @property
    def request_log_dir(self) -> Path:
        """Where the endpoint logs predictions and feedback (read by monitoring)."""
        return Path(self.state_dir).resolve() / "requests"

    def feedback_fingerprint(self) -> str:
        """A token that changes when labels arrive through the feedback route."""
        return folder_fingerprint(self.request_log_dir, "feedback*")

    def deploy(self, version_dir: Path, version: str, log: Log = print) -> Endpoint:
        """Serve ``version_dir``; the previous version serves until the new one is ready."""
        return self._backend(log).deploy(version_dir, version)

    def current(self, log: Log = print) -> Endpoint | None:
        return self._backend(log).current()

    def stop(self, log: Log = print) -> Endpoint | None:
        return self._backend(log).stop()

    def client(self, endpoint: Endpoint, traffic: str | None = None) -> EndpointClient:
        """A client for the endpoint; ``traffic="test"`` keeps its requests out of the log."""
        return EndpointClient(endpoint.url, traffic=traffic)

    def _server_args(self) -> tuple[str, ...]:
        args = ["--max-batch", str(self.max_batch), "--max-body-bytes", str(self.max_body_bytes)]
        if self.request_log:
            args += ["--request-log", str(self.request_log_dir), "--input-sample-rate", str(self.input_sample_rate)]
            args += ["--log-max-file-mb", str(self.log_max_file_mb), "--log-max-files", str(self.log_max_files)]
        return tuple(args)

    def _backend(self, log: Log) -> DeployBackend:
        if self.backend == "kubernetes":
            return self._kubernetes(log)
        return LocalEndpoint(
            Path(self.state_dir).resolve(),
            self.host,
            self.port,
            startup_timeout=self.startup_timeout_s,
            server_args=self._server_args(),
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
            port=self.port or 8080,
            replicas=self.k8s_replicas,
            server_args=self._server_args(),
        )
        return KubernetesEndpoint(api, spec, rollout_timeout=self.startup_timeout_s * 5, log=log)
