"""Puts a registry version behind the inference endpoint.

``LocalDeployer`` (the default) runs the KServe model server as a background process on
this machine and swaps versions without dropping requests. A Kubernetes backend
implements the same methods: ``deploy``, ``current``, ``stop`` and ``client``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

from mnist_ml.download import folder_fingerprint
from mnist_serving.client import EndpointClient
from mnist_serving.local_endpoint import Endpoint, LocalEndpoint


class ServingSettings(Config):
    host: str = Field(default="127.0.0.1", description="Address the endpoint binds (loopback by default).")
    port: int = Field(default=8080, ge=0, le=65535, description="Endpoint port; 0 picks a free one.")
    state_dir: str = Field(default="var/serving", description="Where the endpoint's state and server logs live.")
    startup_timeout_s: float = Field(default=120.0, gt=0, description="How long a new version may take to be ready.")
    max_batch: int = Field(default=1024, ge=1, le=100_000, description="Most images the server takes per request.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=4096, description="Largest request body accepted.")
    request_log: bool = Field(default=True, description="Log every prediction (in <state_dir>/requests).")
    input_sample_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of inputs kept in the log; flagged inputs are always kept."
    )
    log_max_file_mb: float = Field(default=64.0, gt=0, description="Rotate request log files at this size.")
    log_max_files: int = Field(default=20, ge=1, description="Request log files kept; the oldest are deleted.")


class LocalDeployer(ConfigurableResource, ServingSettings):
    @property
    def request_log_dir(self) -> Path:
        """Where the endpoint logs predictions and feedback (read by monitoring)."""
        return Path(self.state_dir).resolve() / "requests"

    def feedback_fingerprint(self) -> str:
        """A token that changes when labels arrive through the feedback route."""
        return folder_fingerprint(self.request_log_dir, "feedback*")

    def _endpoint(self, log: Callable[[str], None]) -> LocalEndpoint:
        args = ["--max-batch", str(self.max_batch), "--max-body-bytes", str(self.max_body_bytes)]
        if self.request_log:
            args += ["--request-log", str(self.request_log_dir), "--input-sample-rate", str(self.input_sample_rate)]
            args += ["--log-max-file-mb", str(self.log_max_file_mb), "--log-max-files", str(self.log_max_files)]
        return LocalEndpoint(
            Path(self.state_dir).resolve(),
            self.host,
            self.port,
            startup_timeout=self.startup_timeout_s,
            server_args=tuple(args),
            log=log,
        )

    def deploy(self, version_dir: Path, version: str, log: Callable[[str], None] = print) -> Endpoint:
        """Serve ``version_dir``; the previous server stops only once the new one is ready."""
        return self._endpoint(log).deploy(version_dir, version)

    def current(self, log: Callable[[str], None] = print) -> Endpoint | None:
        return self._endpoint(log).current()

    def stop(self, log: Callable[[str], None] = print) -> Endpoint | None:
        return self._endpoint(log).stop()

    def client(self, endpoint: Endpoint, traffic: str | None = None) -> EndpointClient:
        """A client for the endpoint; ``traffic="test"`` keeps its requests out of the log."""
        return EndpointClient(endpoint.url, traffic=traffic)
