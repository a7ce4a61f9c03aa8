"""Where published model versions live: a folder on local disk by default, the mounted
``models`` volume on Kubernetes, which model servers read directly."""

from __future__ import annotations

from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

from mnist_ml.registry import FileModelRepository


class RegistrySettings(Config):
    root: str = Field(
        default="var/models",
        description="Model repository folder, laid out as <root>/<model_name>/<version>/ for TF Serving, "
        "KServe and Triton. Relative paths resolve against the working directory (a mounted `models` "
        "volume on Kubernetes).",
    )
    model_name: str = Field(
        default="mnist",
        description="Folder under root that holds this project's versions; the name servers load the model by.",
    )


class ModelRegistry(ConfigurableResource, RegistrySettings):
    """Configuration only; the versioning logic lives in ``FileModelRepository`` so it can be
    used and tested without Dagster."""

    def repository(self) -> FileModelRepository:
        """Resolve ``root`` now, so a later change of working directory cannot move the repository."""
        return FileModelRepository(Path(self.root).resolve(), self.model_name)
