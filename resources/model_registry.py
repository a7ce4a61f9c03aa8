"""Where published model versions live: a folder on local disk by default, the mounted
``models`` volume on Kubernetes (``$MNIST_REGISTRY_ROOT``), which our model server reads directly."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from mnist_ml.registry import FileModelRepository
from resources.environment import setting


class ModelRegistry(ConfigurableResource):
    """Configuration only; the versioning logic lives in ``FileModelRepository`` so it can be
    used and tested without Dagster."""

    root: str = setting(
        "var/models",
        env="MNIST_REGISTRY_ROOT",
        description="Model repository folder, laid out as <root>/<model_name>/<version>/. Relative paths "
        "resolve against the working directory (a mounted `models` volume on Kubernetes).",
    )
    model_name: str = setting(
        "mnist", env="MNIST_MODEL_NAME", description="Folder under root that holds this project's versions."
    )

    def repository(self) -> FileModelRepository:
        """Resolve ``root`` now, so a later change of working directory cannot move the repository."""
        return FileModelRepository(Path(self.root).resolve(), self.model_name)
