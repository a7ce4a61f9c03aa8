"""Dagster resources: the only code that touches the outside world (files, mirrors, later
the model registry, serving and Kubernetes). Each has a local default."""

from resources.data_store import DataStore

__all__ = ["DataStore"]
