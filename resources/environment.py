"""Deployment-wide settings: each declared once, on its resource's field, with its default
and the environment variable that overrides it.

``setting(default, env=..., description=...)`` declares a field; ``from_environment(cls)``
builds the resource when the definitions load: a field whose variable is set takes its
value, the others keep their default. Every process that loads the definitions (the code
server, each run and step worker, so each pod with its own environment) reads them itself.
Values are read at load rather than bound as Dagster ``EnvVar`` so that the fields'
constraints (a port in range, a known backend) are checked at once, with an error naming the
variable; none of these settings is a secret. The same code serves a laptop (defaults) and
a cluster (the ``mnist-settings`` ConfigMap). Per-run choices belong in run_config.yaml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from dagster import ConfigurableResource
from pydantic import Field, ValidationError

R = TypeVar("R", bound=ConfigurableResource)
ENV_KEY = "env"


def setting(default: str | int, *, env: str, description: str, **constraints: Any) -> Any:
    """A resource field set from ``$env`` when that is set, else ``default``."""
    return Field(
        default=default, description=f"{description} (${env})", json_schema_extra={ENV_KEY: env}, **constraints
    )


def environment_variables(cls: type[ConfigurableResource]) -> dict[str, str]:
    """Field name -> the variable that sets it."""
    return {
        name: info.json_schema_extra[ENV_KEY]
        for name, info in cls.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and ENV_KEY in info.json_schema_extra
    }


def from_environment(cls: type[R], environ: Mapping[str, str] = os.environ) -> R:
    """``cls`` with every field whose variable is set in ``environ`` taken from it; a bad
    value raises ``ValueError`` naming the variable."""
    variables = environment_variables(cls)
    values = {name: environ[variable] for name, variable in variables.items() if variable in environ}
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"${variables[error['loc'][0]]}={values[error['loc'][0]]!r}: {error['msg']}"
            if error["loc"] and error["loc"][0] in values
            else f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"{cls.__name__} settings from the environment are invalid: {problems}") from None
